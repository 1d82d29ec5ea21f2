// A queue actor (plus coordinator) in its own process, so tests can SIGKILL it:
//   node --import tsx test/support/queue-child.ts <natsUrl> <job> <dp> [leaseMs] [external:<samples|->:<producers>]
// Prints "ready" on stdout once its subscriptions are live.
import { startCoordinator } from '../../actors/coordinator.ts';
import { startQueue } from '../../actors/queue.ts';
import { ActorSystem } from '../../src/runtime/actor-system.ts';
import { AuthPolicy } from '../../src/wire/auth.ts';
import { Bus } from '../../src/bus/bus.ts';

const [url, job, dp, leaseMs, inputArg] = process.argv.slice(2);
// An external job's input, for the tests of its close across a restart of the queue.
const ext = inputArg ? /^external:(\d+|-):(\d+)$/.exec(inputArg) : null;
if (inputArg && !ext) throw new Error(`bad input argument ${inputArg}`);
const input = ext ? { kind: 'external' as const, samples: ext[1] === '-' ? null : Number(ext[1]), producers: Number(ext[2]) } : undefined;
const bus = await Bus.connect({ servers: url!, job: job!, auth: AuthPolicy.fromEnv(), name: 'queue-child' });
const system = new ActorSystem('queue-child');
await startCoordinator(system, { bus, dp: Number(dp) }).ready;
startQueue(system, { bus, ledger: { leaseMs: Number(leaseMs ?? 30_000) }, tickMs: 100, ...(input ? { input } : {}) });
await bus.flush();
process.stdout.write('ready\n');
process.on('SIGTERM', () => { void system.shutdown().then(() => bus.close()).then(() => process.exit(0)); });
