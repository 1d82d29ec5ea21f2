// One rank of a Gloo world in its own process, driven by the collectives contract tests and
// bench/allreduce.bench.ts. Usage: node --import tsx test/support/comm-child.ts '<json spec>'
//
// Prints one JSON line per event: {"ev": "connected", rank, size}, {"ev": "result", ...},
// {"ev": "pending"} (fault scenario: a collective is in flight), {"ev": "error", name, code,
// message, ms}, and {"ev": "closed"} once the communicator and the bus are closed; the process
// then exits by itself (nothing may keep it alive). Fatal errors: {"ev": "fatal", ...}, exit 1.
import { Bus } from '../../src/bus/bus.ts';
import { Communicator, ShardLayout } from '../../src/native/collectives.ts';
import { DraftwireError } from '../../src/errors.ts';

export interface CommChildSpec {
  scenario: 'ops' | 'groups' | 'fault' | 'big' | 'bench';
  servers: string;
  job: string;
  bucket: string;
  prefix: string;
  rank: number;
  size: number;
  timeoutMs?: number;
  /** ops: elements per rank of the small checks. */
  n?: number;
  /** fault: this rank never joins the pending collective (it is killed or stopped). */
  victim?: number;
  /** big: elements of the all-reduce. */
  elements?: number;
  /** bench: sizes in bytes and timed repetitions per size. */
  sizes?: number[];
  reps?: number;
}

const out = (x: Record<string, unknown>) => process.stdout.write(JSON.stringify(x) + '\n');
const arr = (a: ArrayLike<number>) => Array.from(a);

function errInfo(e: unknown): Record<string, unknown> {
  return e instanceof DraftwireError
    ? { name: e.name, code: e.code, message: e.message, stack: e.stack }
    : { name: (e as Error)?.name, message: String((e as Error)?.message ?? e), stack: (e as Error)?.stack };
}

async function ops(c: Communicator, n: number): Promise<void> {
  const r = c.rank, S = c.size;
  const res: Record<string, unknown> = {};
  // all-reduce sum / max, float32 and float64
  const f32 = Float32Array.from({ length: n }, (_, i) => r * 1000 + i);
  res.sumF32 = arr(await c.allReduce(f32, 'sum'));
  const m32 = Float32Array.from({ length: n }, (_, i) => ((i + r) % S) * 1.5 - i);
  res.maxF32 = arr(await c.allReduce(m32, 'max'));
  const f64 = Float64Array.from({ length: n }, (_, i) => i + r * 2 ** -30); // not representable in f32
  res.sumF64 = arr(await c.allReduce(f64, 'sum'));
  const m64 = Float64Array.from({ length: n }, (_, i) => (i % S === r ? 1e300 : -1e300) * (i + 1));
  res.maxF64 = arr(await c.allReduce(m64, 'max'));
  // all-gather, reduce-scatter, broadcast from the last rank
  res.allGather = arr(await c.allGather(Float32Array.from({ length: n }, (_, i) => r * 10 + i)));
  res.reduceScatter = arr(await c.reduceScatter(Float32Array.from({ length: S * n }, (_, k) => r + k)));
  const b = r === S - 1 ? Float32Array.from({ length: n }, (_, i) => 7 + i * 0.5) : new Float32Array(n).fill(-1);
  res.broadcast = arr(await c.broadcast(b, S - 1));
  // barrier: rank 0 arrives 300 ms late; everyone else must wait for it
  if (r === 0) await new Promise((ok) => setTimeout(ok, 300));
  const t0 = performance.now();
  await c.barrier();
  res.barrierMs = performance.now() - t0;
  // a large all-reduce (many ring segments), checked here
  const big = 1_000_003;
  const x = new Float32Array(big);
  for (let i = 0; i < big; i++) x[i] = (i % 1024) + r;
  await c.allReduce(x, 'sum');
  let bad = 0;
  for (let i = 0; i < big; i++) if (x[i] !== S * (i % 1024) + (S * (S - 1)) / 2) bad++;
  res.bigMismatches = bad;
  out({ ev: 'result', rank: r, size: S, res });
}

async function groups(c: Communicator): Promise<void> {
  const layouts: [number, number, number][] = [[2, 2, 1], [2, 1, 2], [1, 2, 2]];
  const res: Record<string, unknown>[] = [];
  for (const [tp, sp, dp] of layouts) {
    const L = ShardLayout.of(c.rank, tp, sp, dp);
    const tag = `${tp}x${sp}x${dp}`;
    const g = { tp: await c.subgroup(L.tpGroup(), `tp-${tag}`), sp: await c.subgroup(L.spGroup(), `sp-${tag}`), dp: await c.subgroup(L.dpGroup(), `dp-${tag}`) };
    // All three groups reduce at once, each with its own data: they must not interfere.
    const bufs = { tp: new Float32Array([c.rank + 1, 1]), sp: new Float32Array([10 * (c.rank + 1), 1]), dp: new Float32Array([100 * (c.rank + 1), 1]) };
    await Promise.all((['tp', 'sp', 'dp'] as const).map((k) => g[k].allReduce(bufs[k], 'sum')));
    const gathered = await g.tp.allGather(new Float32Array([c.rank]));
    res.push({
      tag,
      ranks: { tp: [g.tp.rank, g.tp.size], sp: [g.sp.rank, g.sp.size], dp: [g.dp.rank, g.dp.size] },
      sums: { tp: arr(bufs.tp), sp: arr(bufs.sp), dp: arr(bufs.dp) },
      tpGathered: arr(gathered),
    });
    await Promise.all([g.tp.close(), g.sp.close(), g.dp.close()]);
  }
  // The world still works after its sub-groups are gone.
  const w = await c.allReduce(new Float32Array([1]), 'sum');
  out({ ev: 'result', rank: c.rank, res, world: arr(w) });
}

async function fault(c: Communicator, victim: number): Promise<void> {
  await c.allReduce(new Float32Array(1024).fill(1), 'sum'); // warm: everyone is connected and working
  out({ ev: 'warm' });
  if (c.rank === victim) {
    await new Promise(() => setInterval(() => undefined, 1 << 30)); // wait to be killed or stopped
  }
  const t0 = performance.now();
  const p = c.allReduce(new Float32Array(1 << 16).fill(1), 'sum');
  out({ ev: 'pending' });
  try {
    await p;
    out({ ev: 'result', ms: performance.now() - t0 });
  } catch (e) {
    out({ ev: 'error', ms: performance.now() - t0, ...errInfo(e) });
  }
  // A broken communicator fails at once from now on.
  try {
    await c.barrier();
    out({ ev: 'after', ok: true });
  } catch (e) {
    out({ ev: 'after', ok: false, ...errInfo(e) });
  }
}

async function big(c: Communicator, elements: number): Promise<void> {
  const x = new Float32Array(elements);
  for (let i = 0; i < elements; i++) x[i] = (i & 255) + c.rank;
  let ticks = 0, maxGap = 0, last = performance.now();
  const timer = setInterval(() => {
    const now = performance.now();
    maxGap = Math.max(maxGap, now - last);
    last = now;
    ticks++;
  }, 5);
  // A fixed number of rounds (the same on every rank, so none waits for a round the others
  // skip), enough that the timer has something to measure on a fast machine too.
  const orig = x.slice();
  await c.barrier();
  last = performance.now();
  const t0 = performance.now();
  for (let round = 0; round < 4; round++) {
    if (round > 0) x.set(orig);
    await c.allReduce(x, 'sum');
  }
  const ms = performance.now() - t0;
  maxGap = Math.max(maxGap, performance.now() - last);
  clearInterval(timer);
  const S = c.size;
  let bad = 0;
  for (let i = 0; i < elements; i++) if (x[i] !== S * (i & 255) + (S * (S - 1)) / 2) bad++;
  out({ ev: 'result', ms, ticks, maxGap, mismatches: bad });
}

async function bench(c: Communicator, sizes: number[], reps: number): Promise<void> {
  const rows: { bytes: number; ms: number[] }[] = [];
  for (const bytes of sizes) {
    const x = new Float32Array(bytes / 4).fill(1);
    await c.allReduce(x, 'sum'); // warm-up (and page faults)
    const ms: number[] = [];
    for (let i = 0; i < reps; i++) {
      await c.barrier();
      const t0 = performance.now();
      await c.allReduce(x, 'sum');
      ms.push(performance.now() - t0);
    }
    rows.push({ bytes, ms });
  }
  out({ ev: 'result', rank: c.rank, rows });
}

async function main(): Promise<void> {
  const spec = JSON.parse(process.argv[2] ?? '{}') as CommChildSpec;
  const bus = await Bus.connect({ servers: spec.servers, job: spec.job, name: `comm-child-${spec.rank}` });
  let comm: Communicator | null = null;
  try {
    const kv = await bus.kv(spec.bucket, { storage: 'memory' });
    comm = await Communicator.connect({ rank: spec.rank, size: spec.size, kv, prefix: spec.prefix, timeoutMs: spec.timeoutMs, connectTimeoutMs: 30_000 });
    out({ ev: 'connected', rank: comm.rank, size: comm.size });
    switch (spec.scenario) {
      case 'ops': await ops(comm, spec.n ?? 37); break;
      case 'groups': await groups(comm); break;
      case 'fault': await fault(comm, spec.victim ?? -1); break;
      case 'big': await big(comm, spec.elements ?? 16 << 20); break;
      case 'bench': await bench(comm, spec.sizes ?? [1 << 20], spec.reps ?? 5); break;
    }
  } finally {
    await comm?.close();
    await bus.close();
  }
  out({ ev: 'closed' });
}

main().catch((e) => {
  out({ ev: 'fatal', ...errInfo(e) });
  process.exit(1);
});
