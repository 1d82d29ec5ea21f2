// The rollout actor: runs the frozen target over the job's rows (actors/rollout-sources.ts:
// seeded synthetic prompts or a user's prompt file the target continues, or a chat dataset's
// conversations; or reads them from offline feature files, without a target), writes each
// sample's features into the store, and commits its SampleRef to the queue with retries.
// Sample ids come from the dataset row, so a restarted rollout skips rows the ledger already
// has, and re-putting a row it wrote but never committed supersedes the orphan generation
// (the store deletes it).
//
// Throughput: rows go in chunks of `chunk` (aligned: chunk c is rows [c·chunk, (c+1)·chunk)).
// The target computes a chunk in one call (synthetic prompts decode together, with aux/last
// from the decoding pass itself: TargetModel.rolloutBatch); the chunk's samples are written
// concurrently (the writes wait on fsync), then committed row by row, in order, each commit
// after its own put. While a chunk commits, the next one is already computed (on the target's
// worker thread) and written. A synthetic chunk is always computed whole, so a row's features
// do not depend on which rows a restarted rollout still had to produce (a chat row's never do:
// each is its own forward pass, and only the rows left are computed).
import type { ActorContext, ActorSpec } from '../src/runtime/actor-system.ts';
import type { Bus } from '../src/bus/bus.ts';
import { QueueClient } from '../src/bus/clients.ts';
import { BackpressureError, InvalidArgumentError, StoreWriteError } from '../src/errors.ts';
import { failpoint } from '../src/failpoints.ts';
import { jobRows, type JobSpec } from '../src/job/spec.ts';
import { openTarget } from '../src/job/target.ts';
import type { TargetModel } from '../src/native/addon.ts';
import type { FeatureStore } from '../src/store/feature-store.ts';
import { chatSource, featuresSource, syntheticSource, type RowSource, type Sample } from './rollout-sources.ts';

export { rowSeed, sampleId } from './rollout-sources.ts';

export interface RolloutOptions {
  spec: JobSpec;
  bus: Bus;
  store: FeatureStore;
  /** Rows to produce (default: every sample the job's steps consume). */
  rows?: number;
  /** Rows the target decodes together (default ROLLOUT_CHUNK). */
  chunk?: number;
}

/** Default rows per target call. */
export const ROLLOUT_CHUNK = 8;

type RolloutMsg = { op: 'next' } | { op: 'status' };
type PutResult = PromiseSettledResult<Awaited<ReturnType<FeatureStore['put']>>>;
/** A chunk in flight: its features, then the writes of its rows not yet committed (by row). */
interface Batch { chunk: number; samples: Promise<Sample[]>; puts: Promise<Map<number, PutResult>> }
interface RolloutState {
  target: TargetModel | null; source: RowSource | null; done: Set<string>; row: number; produced: number; paused: boolean;
  /** The next chunk, computed and written ahead of its turn. */
  ahead: Batch | null;
  /** Features of a chunk some of whose writes met backpressure or a full disk. */
  retry: { chunk: number; samples: Sample[] } | null;
  /** Consecutive passes whose writes met a full disk (0: none; sets the back-off), and writes refused for it in all. */
  diskFull: number; diskFullWrites: number;
}

/** A write refused because the store's filesystem is full (ENOSPC): retryable once space is freed. */
export function isDiskFull(e: unknown): boolean {
  if (!(e instanceof StoreWriteError)) return false;
  return e.detail?.errno === 'ENOSPC' || (e.cause as NodeJS.ErrnoException | undefined)?.code === 'ENOSPC';
}

/** Back-off before writing again after the n-th consecutive full-disk pass (n >= 1), ms. */
export function diskFullBackoffMs(n: number): number {
  return Math.min(2000, 100 * 2 ** Math.min(n - 1, 5));
}

export function rolloutActorSpec(o: RolloutOptions): ActorSpec<RolloutState, RolloutMsg> {
  const { spec, bus, store } = o;
  const queue = new QueueClient(bus);
  const rows = o.rows ?? jobRows(spec);
  const chunk = o.chunk ?? ROLLOUT_CHUNK;
  if (!Number.isInteger(chunk) || chunk < 1 || chunk > 1024) throw new InvalidArgumentError(`rollout chunk must be an integer in [1, 1024] (got ${String(chunk)})`);
  const rowsOf = (c: number): number[] => {
    const rs: number[] = [];
    for (let r = c * chunk; r < Math.min((c + 1) * chunk, rows); r++) rs.push(r);
    return rs;
  };
  // Chunk c: every row computed (done or not, decoded together), then the rows not yet
  // committed written concurrently. Errors surface where the batch is awaited.
  const launch = (st: RolloutState, c: number, features?: Sample[]): Batch => {
    const rs = rowsOf(c);
    const src = st.source!;
    const todo = rs.filter((r) => !st.done.has(src.idOf(r)));
    // A source whose rows depend on their chunk computes it whole; otherwise only what is left.
    const want = src.wholeChunks ? rs : todo;
    const samples = features ? Promise.resolve(features) : src.compute(want).then((s) => {
      const byRow: Sample[] = new Array<Sample>(rs.length);
      want.forEach((r, i) => { byRow[r - c * chunk] = s[i]!; });
      return byRow;
    });
    const puts = samples.then(async (s) => {
      const res = await Promise.allSettled(todo.map((r) => store.put(src.idOf(r), s[r - c * chunk]!)));
      return new Map(todo.map((r, i) => [r, res[i]!]));
    });
    puts.catch(() => {}); // a batch launched ahead may be dropped by a restart
    return { chunk: c, samples, puts };
  };
  const hasWork = (st: RolloutState, c: number) => rowsOf(c).some((r) => !st.done.has(st.source!.idOf(r)));
  return {
    init: (ctx: ActorContext<RolloutMsg>) => {
      setImmediate(() => { try { ctx.system.dispatch(ctx.self, { op: 'next' }); } catch { /* stopped */ } });
      return { target: null, source: null, done: new Set(), row: 0, produced: 0, paused: false, ahead: null, retry: null, diskFull: 0, diskFullWrites: 0 };
    },
    afterStop: async (st) => {
      st.target?.close();
      // A restarted incarnation re-puts these rows: the old writes must be over by then, or one
      // could supersede (delete) a generation the new incarnation committed.
      await st.ahead?.puts.catch(() => undefined);
    },
    async handle(st, msg, ctx) {
      if (msg.op === 'status') { ctx.reply({ row: st.row, rows, produced: st.produced, paused: st.paused, diskFull: st.diskFull > 0, diskFullWrites: st.diskFullWrites }); return st; }
      const again = (ms: number) => {
        const t = setTimeout(() => { try { ctx.system.dispatch(ctx.self, { op: 'next' }); } catch { /* stopped */ } }, ms);
        t.unref();
      };
      if (!st.source) {
        if (spec.features) st.source = await featuresSource(spec); // offline features: the target is not needed here
        else {
          const target = st.target = await openTarget(spec.target, spec.threads);
          st.source = spec.chat ? await chatSource(target, spec) : syntheticSource(target, spec);
        }
        const known = await queue.committed();
        st.done = new Set(known.sampleIds);
        ctx.log.info('rollout started', { rows, alreadyCommitted: st.done.size, incarnation: ctx.incarnation });
      }
      const src = st.source!;
      while (st.row < rows && st.done.has(src.idOf(st.row))) st.row++;
      if (st.row >= rows) { ctx.log.info('rollout finished', { produced: st.produced }); return st; }
      const bp = await store.backpressure();
      if (bp.pressured) { // pause at the high watermark, resume at the low one
        if (!st.paused) ctx.log.info('store above high watermark; rollout paused', { usage: bp.usageBytes });
        st.paused = true;
        again(200);
        return st;
      }
      if (st.paused) ctx.log.info('rollout resumed', { usage: bp.usageBytes });
      st.paused = false;
      const c = Math.floor(st.row / chunk);
      let cur: Batch;
      if (st.ahead?.chunk === c) { cur = st.ahead; st.ahead = null; }
      else cur = launch(st, c, st.retry?.chunk === c ? st.retry.samples : undefined);
      st.retry = null;
      // The next chunk with work left is computed and written meanwhile (its commits wait their turn).
      if (!st.ahead) {
        let n = c + 1;
        while (n * chunk < rows && !hasWork(st, n)) n++;
        if (n * chunk < rows) st.ahead = launch(st, n);
      }
      const results = await cur.puts;
      let pressured = false, full = 0;
      for (const r of rowsOf(c)) { // commits in row order, each after its own put
        const id = src.idOf(r), res = results.get(r);
        if (st.done.has(id) || !res) continue;
        if (res.status === 'rejected') {
          if (res.reason instanceof BackpressureError) { pressured = true; continue; } // written again next time
          // Disk full: the store published nothing; the janitor frees consumed samples meanwhile.
          if (isDiskFull(res.reason)) { full++; continue; }
          throw res.reason; // the supervisor restarts us; the row is produced again
        }
        const ref = res.value;
        failpoint('rollout.after-put'); // a crash here must leave one committed sample, no orphan
        await queue.commit(ref);
        st.done.add(id);
        st.produced++;
      }
      if (full > 0) {
        st.diskFullWrites += full;
        if (st.diskFull === 0) ctx.log.warn('store disk full (ENOSPC); rollout writes again after a back-off', { chunk: c, refused: full });
        st.diskFull++;
      } else if (st.diskFull > 0) {
        ctx.log.info('store has space again; rollout resumed', { refusedWrites: st.diskFullWrites });
        st.diskFull = 0;
      }
      if (pressured || full > 0) {
        st.retry = { chunk: c, samples: await cur.samples }; // keep the features for the rows left
        again(full > 0 ? diskFullBackoffMs(st.diskFull) : 200);
        return st;
      }
      again(0);
      return st;
    },
  };
}
