// Where a job's rank checkpoints live: the run directory (`dir`, the single-machine default:
// checkpoint.ts's files) or the job's NATS JetStream (`nats`, for machines that share no
// directory: replicated like the write-ahead log, so a committed checkpoint survives the loss
// of any one machine, and a rank that starts on any machine finds it).
//
// NATS layout: the weights and AdamW moments are objects of the object store bucket
// `dw_<job>_ckpt` (MAC'd, see src/bus/objects.ts); the manifest is the KV value `ckpt.latest`
// of the job's bucket, the commit point, written by compare-and-set after both objects are
// stored: a writer from an older epoch (a zombie world rank 0) is refused with StaleEpochError
// as the directory store refuses it. Window parts are KV values `ckpt.part.<step>.<epoch>.<i>`.
// After a commit the objects of every older checkpoint but the one just replaced are deleted
// (a reader may still be reading the previous one), in the background: those this process
// replaced one commit earlier, anything else at the next sweep of the bucket
// (NatsCheckpointStore.collect).
import type { Bus } from '../bus/bus.ts';
import type { BusKv } from '../bus/kv.ts';
import type { BusObjects } from '../bus/objects.ts';
import { ConflictError, DecodeError, DraftwireError, StaleEpochError } from '../errors.ts';
import { createLogger } from '../log.ts';
import { decodeSafetensors, encodeSafetensorsBuffer } from '../store/safetensors.ts';
import { STORAGE } from '../wire/protocol.ts';
import {
  checkpointFrom, checkpointTensors, latestManifest, loadRankCheckpoint, parseManifest, takeWindowParts, writeRankCheckpoint, writeWindowPart,
  type CheckpointLease, type LoadedRankCheckpoint, type ModelState, type RankCheckpointManifest, type WindowPart,
} from './checkpoint.ts';
import type { JobSpec } from './spec.ts';

export interface CheckpointStore {
  /** For logs and errors: the run directory or the NATS bucket. */
  readonly where: string;
  latestManifest(): Promise<RankCheckpointManifest | null>;
  /** Stores and commits a checkpoint; StaleEpochError when the committed one is from a newer epoch. */
  writeRankCheckpoint(state: ModelState, d2t: Int32Array, step: number, window: CheckpointLease[], epoch: number, samples: number): Promise<RankCheckpointManifest>;
  writeWindowPart(step: number, epoch: number, index: number, part: WindowPart): Promise<void>;
  /** Every part of a world of `size` ranks (written before a barrier), removed once read. */
  takeWindowParts(step: number, epoch: number, size: number): Promise<CheckpointLease[]>;
  loadRankCheckpoint(init: Record<string, Float32Array | Int32Array>): Promise<LoadedRankCheckpoint | null>;
}

/** The store the job's spec names (`checkpointStore`, default the run directory). */
export function checkpointStoreOf(spec: JobSpec, bus: Bus): CheckpointStore {
  return spec.checkpointStore === 'nats' ? new NatsCheckpointStore(spec, bus) : new DirCheckpointStore(spec);
}

export class DirCheckpointStore implements CheckpointStore {
  constructor(private readonly spec: JobSpec) {}
  get where(): string { return `${this.spec.runDir}/ckpt`; }
  latestManifest() { return latestManifest(this.spec); }
  writeRankCheckpoint(state: ModelState, d2t: Int32Array, step: number, window: CheckpointLease[], epoch: number, samples: number) {
    return writeRankCheckpoint(this.spec, state, d2t, step, window, epoch, samples);
  }
  writeWindowPart(step: number, epoch: number, index: number, part: WindowPart) { return writeWindowPart(this.spec, step, epoch, index, part); }
  takeWindowParts(step: number, epoch: number, size: number) { return takeWindowParts(this.spec, step, epoch, size); }
  loadRankCheckpoint(init: Record<string, Float32Array | Int32Array>) { return loadRankCheckpoint(this.spec, init); }
}

const LATEST = STORAGE.ckptLatestKey;
const partKey = STORAGE.ckptPartKey;
const baseName = (step: number, epoch: number) => `step-${String(step).padStart(8, '0')}-e${epoch}`;
/** Whether object `name` belongs to a checkpoint before `m` by (step, epoch); false for a name not of baseName's form. */
function olderThan(name: string, m: { step: number; epoch: number }): boolean {
  const x = /^step-(\d+)-e(\d+)(?:\.optim)?\.safetensors$/.exec(name);
  if (!x) return false;
  const step = Number(x[1]), epoch = Number(x[2]);
  return step < m.step || (step === m.step && epoch < m.epoch);
}

/** Commits between two listings of the bucket for objects to delete (NatsCheckpointStore.collect). */
const SWEEP_EVERY = 20;
/** How long a checkpoint read retries retryable failures (a JetStream failover takes seconds to a minute). */
const LOAD_PATIENCE_MS = 120_000;
const log = createLogger('checkpoint');

export class NatsCheckpointStore implements CheckpointStore {
  private kv_: Promise<BusKv> | null = null;
  private objs_: Promise<BusObjects> | null = null;
  /** Commits by this process, and the objects of the checkpoint its last commit replaced. */
  private commits = 0;
  private replacedHere: string[] = [];
  private collecting: Promise<void> = Promise.resolve();

  constructor(private readonly spec: JobSpec, private readonly bus: Bus) {}

  get where(): string { return `nats:${STORAGE.ckptBucket(this.spec.job)}`; }
  private kv(): Promise<BusKv> { return (this.kv_ ??= this.bus.kv(this.bus.subjects.kvBucket)); }
  private objects(): Promise<BusObjects> { return (this.objs_ ??= this.bus.objects(STORAGE.ckptBucket(this.spec.job))); }

  private async current(): Promise<{ m: RankCheckpointManifest; revision: number } | null> {
    // From the stream's leader: a replica behind the others would hand a rank starting here
    // an older manifest than the world committed (it would resume behind the ledger).
    const v = await (await this.kv()).get<unknown>(LATEST, { leader: true });
    return v ? { m: parseManifest(v.value, `${this.where} ${LATEST}@${v.revision}`), revision: v.revision } : null;
  }

  async latestManifest(): Promise<RankCheckpointManifest | null> { return (await this.current())?.m ?? null; }

  async writeRankCheckpoint(state: ModelState, d2t: Int32Array, step: number, window: CheckpointLease[], epoch: number, samples: number): Promise<RankCheckpointManifest> {
    const refuseIfNewer = (cur: RankCheckpointManifest | null) => {
      if (cur && cur.epoch > epoch) throw new StaleEpochError(`checkpoint of step ${step} at epoch ${epoch} refused: the committed one is from epoch ${cur.epoch} (step ${cur.step})`, { detail: { epoch, current: cur.epoch } });
    };
    let cur = await this.current();
    refuseIfNewer(cur?.m ?? null);
    const base = baseName(step, epoch);
    const c = checkpointTensors(this.spec, state, d2t, step, samples);
    const objs = await this.objects();
    await objs.put(`${base}.safetensors`, encodeSafetensorsBuffer(c.weights.tensors, c.weights.metadata));
    await objs.put(`${base}.optim.safetensors`, encodeSafetensorsBuffer(c.optim.tensors, c.optim.metadata));
    const m: RankCheckpointManifest = {
      format: 'draftwire-rank-checkpoint/1', job: this.spec.job, step, epoch, samples, weights: `${base}.safetensors`, optim: `${base}.optim.safetensors`,
      window, trained: [...new Set(window.map((l) => l.sampleId))], at: Date.now(),
    };
    const kv = await this.kv();
    // The commit: compare-and-set against the manifest it replaces (a concurrent writer makes it re-check the epoch).
    for (;;) {
      try {
        if (cur) await kv.update(LATEST, m, cur.revision); else await kv.create(LATEST, m);
        break;
      } catch (e) {
        if (!(e instanceof ConflictError)) throw e;
        cur = await this.current();
        refuseIfNewer(cur?.m ?? null);
      }
    }
    this.collect(objs, m, cur?.m ?? null);
    return m;
  }

  /**
   * Deletes, in the background, the objects of checkpoints older than the one `m` replaced:
   * those this process replaced at its previous commit, and every 20th commit (and the first)
   * whatever else older the bucket holds (a crashed writer's, another process's). Off the
   * commit's path because JetStream can be slow to answer while a cluster misses a member (a
   * listing creates a consumer, which it may place on the missing member and leave unanswered
   * for the request's whole timeout): a commit that waited would stall the world's next
   * barrier. Only names older than the replaced checkpoint by (step, epoch) are deleted, so a
   * slow sweep cannot touch a checkpoint committed after it began. Best effort: what is left
   * is collected by a later sweep; a failure is logged, never the commit's.
   */
  private collect(objs: BusObjects, m: RankCheckpointManifest, replaced: RankCheckpointManifest | null): void {
    const floor = replaced ?? m;
    const known = this.replacedHere;
    this.replacedHere = replaced ? [replaced.weights, replaced.optim] : [];
    const sweep = this.commits++ % SWEEP_EVERY === 0;
    this.collecting = this.collecting.then(async () => {
      try {
        const names = sweep ? await objs.names() : known;
        for (const name of names) if (olderThan(name, floor)) await objs.delete(name);
      } catch (e) {
        this.commits = 0; // sweep at the next commit
        log.warn('old checkpoint objects not deleted yet (a later commit retries)', { bucket: this.where, error: (e as Error).message });
      }
    });
  }

  /** Resolves once every collection started so far has ended (tests). */
  collected(): Promise<void> { return this.collecting; }

  async writeWindowPart(step: number, epoch: number, index: number, part: WindowPart): Promise<void> {
    await (await this.kv()).put(partKey(step, epoch, index), part);
  }

  async takeWindowParts(step: number, epoch: number, size: number): Promise<CheckpointLease[]> {
    const kv = await this.kv();
    const out: CheckpointLease[] = [];
    for (let i = 0; i < size; i++) {
      const v = await kv.get<WindowPart>(partKey(step, epoch, i), { leader: true });
      const p = v?.value;
      if (!p || !Array.isArray(p.window) || !Array.isArray(p.skipped)) throw new DecodeError(`checkpoint part ${partKey(step, epoch, i)} of ${this.where} missing or malformed`);
      out.push(...p.window, ...p.skipped.map((sampleId) => ({ leaseId: '', sampleId, epoch: 0 })));
    }
    for (let i = 0; i < size; i++) await kv.delete(partKey(step, epoch, i));
    return out;
  }

  async loadRankCheckpoint(init: Record<string, Float32Array | Int32Array>): Promise<LoadedRankCheckpoint | null> {
    // Right after a server's death an object read can time out for a while (its ordered
    // consumer needs the JetStream meta leader, being re-elected): a rank starting or
    // reverting then waits, up to LOAD_PATIENCE_MS, rather than die (it beats meanwhile).
    const deadline = Date.now() + LOAD_PATIENCE_MS;
    for (;;) {
      try { return await this.loadOnce(init); } catch (e) {
        if (!(e instanceof DraftwireError) || !e.retryable || Date.now() >= deadline) throw e;
        log.warn('checkpoint read failed; retrying', { bucket: this.where, error: e.message });
        await new Promise((r) => setTimeout(r, 1000));
      }
    }
  }

  private async loadOnce(init: Record<string, Float32Array | Int32Array>): Promise<LoadedRankCheckpoint | null> {
    // A commit may replace the manifest (and, one commit later, delete these objects) while we read: read again.
    for (let attempt = 0; ; attempt++) {
      const cur = await this.current();
      if (!cur) return null;
      const { m } = cur;
      if (m.job !== this.spec.job) throw new DecodeError(`${this.where}: the checkpoint belongs to job ${m.job}, not ${this.spec.job}`);
      const objs = await this.objects();
      const [w, o] = await Promise.all([objs.get(m.weights), objs.get(m.optim)]);
      if (w && o) {
        const where = (n: string) => `${this.where}/${n}`;
        return checkpointFrom(m, decodeSafetensors(w, { where: where(m.weights) }), decodeSafetensors(o, { where: where(m.optim) }), init);
      }
      if (attempt >= 5) throw new DecodeError(`${this.where}: the checkpoint of step ${m.step} names objects that are gone (${w ? m.optim : m.weights})`);
    }
  }
}
