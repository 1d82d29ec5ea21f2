// A queue actor (plus coordinator) in its own process, so tests can SIGKILL it:
//   node --import tsx test/support/queue-child.ts <natsUrl> <job> <dp> [leaseMs]
// Prints "ready" on stdout once its subscriptions are live.
import { startCoordinator } from '../../actors/coordinator.ts';
import { startQueue } from '../../actors/queue.ts';
import { ActorSystem } from '../../src/runtime/actor-system.ts';
import { AuthPolicy } from '../../src/wire/auth.ts';
import { Bus } from '../../src/bus/bus.ts';

const [url, job, dp, leaseMs] = process.argv.slice(2);
const bus = await Bus.connect({ servers: url!, job: job!, auth: AuthPolicy.fromEnv(), name: 'queue-child' });
const system = new ActorSystem('queue-child');
await startCoordinator(system, { bus, dp: Number(dp) }).ready;
startQueue(system, { bus, ledger: { leaseMs: Number(leaseMs ?? 30_000) }, tickMs: 100 });
await bus.flush();
process.stdout.write('ready\n');
process.on('SIGTERM', () => { void system.shutdown().then(() => bus.close()).then(() => process.exit(0)); });
