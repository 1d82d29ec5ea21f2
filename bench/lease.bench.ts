// Commit -> credit -> lease -> ack round trips through the real NATS path (queue actor with
// its JetStream write-ahead log), against a plain request/reply round trip on the same
// server in the same run.
//   node --import tsx bench/lease.bench.ts [--n 500] [--json]
// --json: one JSON line per figure (bench/support/report.ts): trips/s, p50 and p99 of each path,
// the lease path against the echo of the same auth mode.
import { parseArgs } from 'node:util';
import { startQueue, type LeaseMessage } from '../actors/queue.ts';
import { ensureEpoch } from '../src/job/epoch.ts';
import { ActorSystem } from '../src/runtime/actor-system.ts';
import { AuthPolicy } from '../src/wire/auth.ts';
import { Bus } from '../src/bus/bus.ts';
import { QueueClient, listen } from '../src/bus/clients.ts';
import { startNats } from '../test/support/nats-server.ts';
import { sampleRef } from '../test/support/store-fixtures.ts';
import { Reporter, type Measured } from './support/report.ts';

const { values } = parseArgs({ options: { n: { type: 'string', default: '500' }, json: { type: 'boolean', default: false } } });
const N = Number(values.n);
const report = Reporter.forBench(import.meta.url);
process.env.DRAFTWIRE_LOG_LEVEL ??= 'warn';

function pct(xs: number[], p: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor(p * s.length))]!;
}

async function measure(label: string, auth: AuthPolicy): Promise<Record<string, number | string>[]> {
  const nats = await startNats({ auth: auth.enabled ? auth.natsCredentials()! : false });
  const job = `bench${auth.enabled ? 'a' : 'o'}`;
  const server = await Bus.connect({ servers: nats.url, job, auth, name: 'queue' });
  const client = await Bus.connect({ servers: nats.url, job, auth, name: 'client' });
  const system = new ActorSystem('bench');
  try {
    await ensureEpoch(server, 1);
    const q = startQueue(system, { bus: server, tickMs: 1000 });
    // baseline: an echo request/reply on the same server (a bench-only subject, outside the protocol)
    server.subscribe(`dw.${job}.echo`, (m) => m, { dedupe: false });
    await client.request(`dw.${job}.echo`, { x: 1 });
    const echo: number[] = [];
    for (let i = 0; i < N; i++) { const t = performance.now(); await client.request(`dw.${job}.echo`, { i }); echo.push(performance.now() - t); }

    let waiter: ((l: LeaseMessage) => void) | null = null;
    const queue = new QueueClient(client);
    listen(client, 'part', (m) => waiter?.(m), { params: [1, 0] });
    await client.flush();
    const trip: number[] = [];
    const t0 = performance.now();
    for (let i = 0; i < N; i++) {
      const t = performance.now();
      const ref = client.auth.signRef(sampleRef({ job, sampleId: `s-${i}`, generation: 1 })); // as a producer signs it
      const leased = new Promise<LeaseMessage>((r) => { waiter = r; });
      await queue.commit(ref);
      await queue.credit({ consumer: 'b', partition: [0, 1], epoch: 1, max: 1 });
      const m = await leased;
      const l = m.leases[0]!;
      await queue.ack(l);
      trip.push(performance.now() - t);
    }
    const secs = (performance.now() - t0) / 1000;
    await q.stop();
    return [
      { path: `request/reply echo (baseline), auth ${label}`, perSec: N / (echo.reduce((a, b) => a + b) / 1000), p50ms: pct(echo, 0.5), p99ms: pct(echo, 0.99) },
      { path: `commit+credit+lease+ack, auth ${label}`, perSec: N / secs, p50ms: pct(trip, 0.5), p99ms: pct(trip, 0.99) },
    ];
  } finally {
    await system.shutdown();
    await client.close();
    await server.close();
    await nats.stop();
  }
}

const rows = [...await measure('off', AuthPolicy.disabled()), ...await measure('on', AuthPolicy.fromSecret('bench-secret-0123456789abcdef'))];
report.context({ n: N });
for (const auth of ['off', 'on']) {
  const [echo, lease] = rows.filter((r) => String(r.path).endsWith(`auth ${auth}`));
  const base: Record<string, Measured> = {};
  for (const r of [echo!, lease!]) {
    for (const [k, unit, what] of [['perSec', 'trips/s', 'trips/s'], ['p50ms', 'ms', 'p50'], ['p99ms', 'ms', 'p99']] as const) {
      const f = report.add({ name: `${String(r.path)}: ${what}`, value: r[k] as number, unit, baseline: r === lease ? base[k]! : null, auth: auth === 'on' });
      if (r === echo) base[k] = f;
    }
  }
}
report.log(`lease round trips through real NATS + JetStream WAL (n=${N}, sequential)`);
report.log('path'.padEnd(48) + 'trips/s'.padStart(10) + 'p50 ms'.padStart(10) + 'p99 ms'.padStart(10));
for (const r of rows) report.log(String(r.path).padEnd(48) + (r.perSec as number).toFixed(0).padStart(10) + (r.p50ms as number).toFixed(2).padStart(10) + (r.p99ms as number).toFixed(2).padStart(10));
report.end();
