// The lease path under load: P producers commit refs in batches (queue.commits), as many
// consumers hold credit on their own partition and ack every lease message in one request
// (queue.acks). The queue (with its coordinator) runs in its own process, as on a node, over
// its JetStream write-ahead log. Printed per concurrency level: samples committed, leased and
// acked end to end per second; then, at about half the best rate, the latency of a commit
// request, of an ack request, and of a sample from its commit to its ack's reply. Baselines
// from the same server in the same run: JetStream publish-with-ack, pipelined, of WAL-sized
// records (the log's own ceiling), and core NATS request/reply (serial and concurrent).
//
//   node --import tsx bench/lease-load.bench.ts [--levels 1,4,16,64] [--n 20000] [--batch 64] [--json] [--cpu-prof DIR]
// --cpu-prof writes a V8 CPU profile of each level's queue process into DIR (open it in Chrome's DevTools).
import { parseArgs } from 'node:util';
import { connect } from '@nats-io/transport-node';
import { jetstream, jetstreamManager } from '@nats-io/jetstream';
import { Bus } from '../src/bus/bus.ts';
import { QueueClient, listen } from '../src/bus/clients.ts';
import type { Lease } from '../src/ledger/ledger.ts';
import type { QueueStatus } from '../src/wire/protocol.ts';
import { AuthPolicy } from '../src/wire/auth.ts';
import type { SampleRef } from '../src/wire/sampleref.ts';
import { startNats } from '../test/support/nats-server.ts';
import { killChild, spawnTs, waitForLine } from '../test/support/procs.ts';
import { sampleRef } from '../test/support/store-fixtures.ts';
import { Reporter, type Measured } from './support/report.ts';

const { values } = parseArgs({ options: {
  levels: { type: 'string', default: '1,4,16,64' }, n: { type: 'string', default: '20000' }, batch: { type: 'string', default: '64' }, json: { type: 'boolean', default: false },
  'cpu-prof': { type: 'string' },
} });
const LEVELS = values.levels.split(',').map(Number);
const N = Number(values.n), BATCH = Number(values.batch);
const SECRET = 'bench-secret-0123456789abcdef';
const report = Reporter.forBench(import.meta.url);
process.env.DRAFTWIRE_LOG_LEVEL ??= 'warn';

const pct = (xs: number[], p: number) => { const s = [...xs].sort((a, b) => a - b); return s[Math.min(s.length - 1, Math.floor(p * s.length))] ?? NaN; };
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

interface Level { c: number; perSec: number; commitMs: number[]; ackMs: number[]; sampleMs: number[]; walEvents: number; walRecords: number }

/** One job: a queue process with dp = c partitions, c producers and c consumers; `rate` (samples/s, total) limits the producers. */
async function runLevel(url: string, creds: { user: string; pass: string }, c: number, n: number, rate: number | null): Promise<Level> {
  const auth = AuthPolicy.fromSecret(SECRET);
  const job = `ll${c}${rate ? 'r' : ''}${Date.now() % 100000}`;
  const queueProc = spawnTs('test/support/queue-child.ts', [url, job, String(c)], { ...process.env, DRAFTWIRE_SECRET: SECRET, DRAFTWIRE_LOG_LEVEL: 'warn' },
    values['cpu-prof'] ? ['--cpu-prof', '--cpu-prof-dir', values['cpu-prof']] : []);
  const buses: Bus[] = [];
  const bus = async (name: string) => { const b = await Bus.connect({ servers: url, job, auth, name }); buses.push(b); return b; };
  try {
    await waitForLine(queueProc, 'ready');
    const probe = new QueueClient(await bus('probe'));
    while ((await probe.status()).epoch < 1) await sleep(20); // the queue follows the coordinator's epoch record
    const committedAt = new Map<string, number>();
    const commitMs: number[] = [], ackMs: number[] = [], sampleMs: number[] = [];
    let acked = 0, stopped = false, failure: unknown = null;
    let finish!: () => void;
    const done = new Promise<void>((r) => { finish = r; });
    // Consumers: credit on partition [i, c]; each lease message acked in one request; the credit renewed after each ack.
    for (let i = 0; i < c; i++) {
      const b = await bus(`consumer-${i}`);
      const q = new QueueClient(b);
      const consumer = `r${i}`;
      const pending: Lease[] = [];
      let acking = false;
      const flush = async () => {
        if (stopped || acking || pending.length === 0) return;
        acking = true;
        const leases = pending.splice(0);
        const t = performance.now();
        const res = await q.ackMany(leases);
        const now = performance.now();
        ackMs.push(now - t);
        for (const [j, r] of res.entries()) {
          if (r instanceof Error) throw r;
          const at = committedAt.get(leases[j]!.sampleId);
          if (at !== undefined) sampleMs.push(now - at);
        }
        acked += leases.length;
        if (acked >= n) finish();
        acking = false;
        if (stopped) return;
        await q.credit({ consumer, partition: [i, c], epoch: 1, max: 1024 });
        await flush();
      };
      const kick = () => { flush().catch((e: unknown) => { if (!stopped) { failure ??= e; finish(); } }); };
      listen(b, 'part', (m) => { if (m.consumer === consumer) { pending.push(...m.leases); kick(); } }, { params: [c, i] });
      await b.flush();
      await q.credit({ consumer, partition: [i, c], epoch: 1, max: 1024 });
    }
    // Producers: refs signed beforehand (a producer's own work, on its own machine in a real job).
    const producers = await Promise.all(Array.from({ length: c }, async (_, p) => {
      const b = await bus(`producer-${p}`);
      const refs: SampleRef[] = [];
      for (let k = p; k < n; k += c) refs.push(b.auth.signRef(sampleRef({ job, sampleId: `s-${k}`, generation: 1 })));
      return { q: new QueueClient(b), refs };
    }));
    const batch = rate ? Math.max(1, Math.min(BATCH, Math.round(rate / c / 200))) : BATCH; // at a set rate: ~200 batches/s per producer
    const t0 = performance.now();
    await Promise.all(producers.map(async ({ q, refs }) => {
      for (let k = 0; k < refs.length; k += batch) {
        const chunk = refs.slice(k, k + batch);
        if (rate) { const due = t0 + ((k + chunk.length) * c / rate) * 1000; const wait = due - performance.now(); if (wait > 0) await sleep(wait); }
        const t = performance.now();
        for (const r of chunk) committedAt.set(r.sampleId, t);
        const res = await q.commitMany(chunk);
        commitMs.push(performance.now() - t);
        for (const r of res) if (r instanceof Error) throw r;
      }
    }));
    await Promise.race([done, sleep(120_000).then(() => { throw new Error(`level ${c}: ${acked} of ${n} acked within 120 s`); })]);
    const secs = (performance.now() - t0) / 1000;
    stopped = true;
    if (failure) throw failure;
    const st = await new QueueClient(buses[0]!).status() as QueueStatus;
    if (st.consumed !== n) throw new Error(`level ${c}: the ledger consumed ${st.consumed} of ${n}`);
    return { c, perSec: n / secs, commitMs, ackMs, sampleMs, walEvents: st.wal?.events ?? 0, walRecords: st.wal?.records ?? 0 };
  } finally {
    await Promise.all(buses.map((b) => b.close()));
    await killChild(queueProc, 'SIGTERM');
  }
}

/** JetStream publish-with-ack of `n` records of `bytes`, `inFlight` at a time: the ceiling of a log append. */
async function jetstreamRate(o: { servers: string; user: string; pass: string }, n: number, bytes: number, inFlight: number): Promise<number> {
  const nc = await connect(o);
  try {
    await jetstreamManager(nc).then((m) => m.streams.add({ name: `bench_js_${inFlight}`, subjects: [`bench.js.${inFlight}`] }));
    const js = jetstream(nc);
    const data = new Uint8Array(bytes).fill(7);
    const t0 = performance.now();
    let next = 0;
    await Promise.all(Array.from({ length: inFlight }, async () => { while (next++ < n) await js.publish(`bench.js.${inFlight}`, data); }));
    return n / ((performance.now() - t0) / 1000);
  } finally { await nc.close(); }
}

/** Core NATS request/reply through the Bus (MAC'd, as the queue's requests are), `inFlight` at a time. */
async function requestRate(url: string, n: number, inFlight: number): Promise<number> {
  const auth = AuthPolicy.fromSecret(SECRET);
  const server = await Bus.connect({ servers: url, job: 'echo', auth, name: 'echo-server' });
  const client = await Bus.connect({ servers: url, job: 'echo', auth, name: 'echo-client' });
  try {
    server.subscribe('dw.echo.echo', (m) => m, { dedupe: false });
    await server.flush();
    await client.request('dw.echo.echo', { x: 0 });
    const t0 = performance.now();
    let next = 0;
    await Promise.all(Array.from({ length: inFlight }, async () => { while (next++ < n) await client.request('dw.echo.echo', { leaseId: 'L123456', epoch: 1 }); }));
    return n / ((performance.now() - t0) / 1000);
  } finally { await client.close(); await server.close(); }
}

const nats = await startNats({ auth: AuthPolicy.fromSecret(SECRET).natsCredentials()! });
const creds = AuthPolicy.fromSecret(SECRET).natsCredentials()!;
try {
  const jsSerial = await jetstreamRate({ servers: nats.url, ...creds }, 3000, 700, 1);
  const jsPipelined = await jetstreamRate({ servers: nats.url, ...creds }, 30_000, 700, 256);
  const rrSerial = await requestRate(nats.url, 5000, 1);
  const rr64 = await requestRate(nats.url, 30_000, 64);
  report.context({ n: N, batch: BATCH, auth: true });
  const bJs = report.add({ name: 'JetStream publish with ack, 700 B, 256 in flight (baseline)', value: jsPipelined, unit: 'msgs/s' });
  report.add({ name: 'JetStream publish with ack, 700 B, serial (baseline)', value: jsSerial, unit: 'msgs/s' });
  const bRr: Measured = report.add({ name: 'core NATS request/reply via Bus, 64 in flight (baseline)', value: rr64, unit: 'trips/s' });
  report.add({ name: 'core NATS request/reply via Bus, serial (baseline)', value: rrSerial, unit: 'trips/s' });
  report.log(`baselines, same server: JetStream publish+ack ${jsSerial.toFixed(0)}/s serial, ${jsPipelined.toFixed(0)}/s with 256 in flight; request/reply ${rrSerial.toFixed(0)}/s serial, ${rr64.toFixed(0)}/s with 64 in flight`);
  report.log(`lease path: commit (batches of ${BATCH}) -> credit -> lease -> ack (one request per lease message), n=${N} per level, auth on`);
  report.log('producers=consumers'.padEnd(22) + 'samples/s'.padStart(11) + 'events/record'.padStart(15) + 'commit p99'.padStart(12) + 'ack p99'.padStart(10));
  let best = 0;
  for (const c of LEVELS) {
    const r = await runLevel(nats.url, creds, c, N, null);
    best = Math.max(best, r.perSec);
    report.add({ name: `lease path, ${c} producers and ${c} consumers: samples/s`, value: r.perSec, unit: 'samples/s', baseline: bJs, concurrency: c, eventsPerRecord: r.walEvents / Math.max(1, r.walRecords) });
    report.log(String(c).padEnd(22) + r.perSec.toFixed(0).padStart(11) + (r.walEvents / Math.max(1, r.walRecords)).toFixed(1).padStart(15) + pct(r.commitMs, 0.99).toFixed(2).padStart(12) + pct(r.ackMs, 0.99).toFixed(2).padStart(10));
  }
  const half = Math.round(best / 2), c = 16;
  const r = await runLevel(nats.url, creds, c, Math.min(N, Math.max(2000, half * 4)), half);
  for (const [what, xs] of [['commit request', r.commitMs], ['ack request', r.ackMs], ['sample commit to ack reply', r.sampleMs]] as const) {
    report.add({ name: `at half load, ${what}: p50`, value: pct(xs, 0.5), unit: 'ms', baseline: null, rate: half, concurrency: c });
    report.add({ name: `at half load, ${what}: p99`, value: pct(xs, 0.99), unit: 'ms', baseline: null, rate: half, concurrency: c });
  }
  report.add({ name: 'at half load: samples/s reached', value: r.perSec, unit: 'samples/s', baseline: bRr, rate: half });
  report.log(`at ~half the best rate (${half}/s offered, ${c}+${c}): reached ${r.perSec.toFixed(0)}/s; p50/p99 ms: commit ${pct(r.commitMs, 0.5).toFixed(2)}/${pct(r.commitMs, 0.99).toFixed(2)}, ack ${pct(r.ackMs, 0.5).toFixed(2)}/${pct(r.ackMs, 0.99).toFixed(2)}, sample commit->acked ${pct(r.sampleMs, 0.5).toFixed(2)}/${pct(r.sampleMs, 0.99).toFixed(2)}`);
} finally {
  await nats.stop();
}
report.end();
