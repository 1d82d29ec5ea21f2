// One trainer rank (DESIGN.md §2): subscribes to its partition's subject for the current
// epoch, sends credit, gathers a batch of leases, reads the features from the store, runs
// the native step off the event loop. While the step computes, heartbeats and lease
// renewals keep running on the event loop.
//
// Exactly-once training across crashes: every `checkpointEvery` steps the rank writes a
// checkpoint (weights, AdamW state, step, and the leases/sample ids trained since the
// previous one; src/checkpoint.ts) and acks those leases only once it is durable, renewing
// them until then. A crash loses only un-checkpointed steps: their leases were never acked,
// so they expire and are re-leased and retrained from the checkpoint state. A sample that
// is in the checkpoint but whose ack did not get through (crash right after the checkpoint,
// or a lease that expired while the process was frozen) is acked without training when it
// is leased again. On an epoch change (StaleEpochError on credit) the rank checkpoints and
// acks what it trained, releases the leases it had not used, and re-joins under the new
// epoch's partition count.
import type { Bus, BusSubscription } from '../src/bus.ts';
import { DraftwireError, InvalidArgumentError, LeaseExpiredError, StaleEpochError } from '../src/errors.ts';
import { writeRankCheckpoint, type CheckpointLease, type LoadedRankCheckpoint } from '../src/checkpoint.ts';
import { failpoint } from '../src/failpoints.ts';
import type { Lease } from '../src/ledger.ts';
import { createLogger } from '../src/log.ts';
import { checkpointEvery, type JobSpec } from '../src/job.ts';
import { acceptLength, DraftModel, TargetModel } from '../src/native.ts';
import type { FeatureStore } from '../src/store/feature-store.ts';
import type { Tensor } from '../src/tensor.ts';
import type { LeaseMessage } from './queue.ts';

export const FEATURES = ['ids', 'aux', 'last', 'mask'] as const;

export interface EpochInfo { epoch: number; num: number; members?: unknown[] }

export interface StepMetrics {
  rank: number; step: number; loss: number; gradNorm: number; ploss: number[]; acc: number[];
  samples: number; tokens: number; stepMs: number; waitMs: number; acceptLength: number | null; at: number;
}

export interface RankOptions {
  spec: JobSpec;
  bus: Bus;
  store: FeatureStore;
  rank: number;
  weights: Record<string, Float32Array | Int32Array>;
  /** Called after every step (tests; the CLI reads the metrics subject instead). */
  onStep?: (m: StepMetrics) => void;
  /** Resume from this checkpoint (weights must already be the checkpoint's). */
  resume?: LoadedRankCheckpoint | null;
  /** Called after every committed checkpoint, before its leases are acked. */
  onCheckpoint?: (step: number) => void;
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** Deterministic evaluation prompts, disjoint from the rollout's rows (another seed stream). */
export function evalPrompts(spec: JobSpec): Int32Array[] {
  let s = (spec.seed ^ 0x5eed) >>> 0;
  const next = () => { s = (Math.imul(s, 1664525) + 1013904223) >>> 0; return s; };
  return Array.from({ length: spec.evalPrompts }, () => Int32Array.from({ length: spec.promptLen }, () => next() % spec.draft.vocab));
}

/** Stacks per-sample tensors into one batch. */
export function stackBatch(samples: Record<string, Tensor>[], seq: number, hidden: number) {
  const B = samples.length;
  const ids = new Int32Array(B * seq), aux = new Float32Array(B * seq * 3 * hidden), last = new Float32Array(B * seq * hidden), mask = new Uint8Array(B * seq);
  samples.forEach((t, b) => {
    const check = (name: string, n: number) => {
      if (!t[name] || t[name].data.length !== n) throw new InvalidArgumentError(`sample ${b}: feature "${name}" has ${t[name]?.data.length ?? 0} elements, the job needs ${n}`);
      return t[name].data;
    };
    ids.set(check('ids', seq) as Int32Array, b * seq);
    aux.set(check('aux', seq * 3 * hidden) as Float32Array, b * seq * 3 * hidden);
    last.set(check('last', seq * hidden) as Float32Array, b * seq * hidden);
    mask.set(check('mask', seq) as Uint8Array, b * seq);
  });
  return { ids, aux, last, mask, batch: B, seq };
}

export class RankWorker {
  private readonly log;
  private readonly consumer: string;
  /** Leases received and not yet trained, by leaseId (one per sample id). */
  private held = new Map<string, Lease>();
  /** Leases trained since the last checkpoint: renewed until the checkpoint is durable, then acked. */
  private window: Lease[] = [];
  /** Samples trained into a committed checkpoint whose ack did not get through: ack on re-lease, never retrain. */
  private trainedSkip = new Set<string>();
  private wake: (() => void) | null = null;
  private sub: BusSubscription | null = null;
  private epochSub: BusSubscription | null = null;
  private epoch: EpochInfo = { epoch: 0, num: 1 };
  private stepNo = 0;
  private state: 'starting' | 'waiting' | 'stepping' | 'checkpointing' | 'resharding' | 'done' = 'starting';
  private stopped = false;
  private timers: NodeJS.Timeout[] = [];
  private model: DraftModel | null = null;
  /** Counters for tests and status. */
  readonly stats = { checkpoints: 0, skippedAcks: 0, rejoins: 0, staleAcks: 0, resumedFrom: 0 };

  constructor(private readonly o: RankOptions) {
    // Stable per rank (not per process): a replacement process receives what the queue granted
    // to its predecessor's outstanding credit instead of letting it expire again.
    this.consumer = `rank-${o.rank}`;
    this.log = createLogger(`rank.${o.rank}`);
  }

  get step(): number { return this.stepNo; }
  get currentEpoch(): EpochInfo { return this.epoch; }

  /** Trains up to spec.steps steps; resolves with the model's final weights. */
  async run(startStep = 0): Promise<{ weights: Record<string, Float32Array>; model: DraftModel }> {
    const { spec, bus, rank } = this.o;
    if (spec.dp * spec.tp * spec.sp !== 1) {
      throw new InvalidArgumentError(`this build trains with one rank (dp=tp=sp=1); dp=${spec.dp} tp=${spec.tp} sp=${spec.sp} is not driven by the rank actors yet`);
    }
    this.stepNo = startStep;
    this.model = DraftModel.create(spec.draft, this.o.weights, { threads: spec.threads });
    const resume = this.o.resume ?? null;
    if (resume) {
      this.model.loadOptimizerState(resume.optimizer);
      this.stepNo = resume.manifest.step;
      this.stats.resumedFrom = resume.manifest.step;
      for (const id of resume.manifest.trained) this.trainedSkip.add(id);
    }
    const target = TargetModel.create(spec.target, { threads: spec.threads });
    const prompts = evalPrompts(spec);
    const every = checkpointEvery(spec);
    this.startTimers();
    try {
      await this.joinEpoch();
      // Acks of the resumed checkpoint's window that may not have got through.
      if (resume) await this.ackAll(resume.manifest.window);
      while (this.stepNo < spec.steps && !this.stopped) {
        const t0 = Date.now();
        let leases: Lease[];
        try {
          leases = await this.collect(spec.batch);
        } catch (e) {
          if (!(e instanceof StaleEpochError)) throw e;
          await this.reshard();
          continue;
        }
        const samples = await this.fetch(leases);
        if (samples.length < leases.length) continue; // a failed read was dead-lettered; refill
        const t1 = Date.now();
        this.state = 'stepping';
        const res = await this.model.step(stackBatch(samples, spec.seqLen, spec.draft.hidden), {
          lr: spec.lr, clip: spec.clip, weightDecay: spec.weightDecay, returnGrads: false,
        });
        const t2 = Date.now();
        for (const l of leases) { this.held.delete(l.leaseId); this.window.push(l); }
        this.stepNo++;
        const evalDue = this.stepNo === spec.steps || (spec.evalEvery > 0 && this.stepNo % spec.evalEvery === 0);
        const accept = evalDue ? (await acceptLength(this.model, target, prompts, { maxNew: spec.seqLen - spec.promptLen })).acceptLength : null;
        const m: StepMetrics = {
          rank, step: this.stepNo, loss: res.loss, gradNorm: res.gradNorm, ploss: [...res.ploss], acc: [...res.acc],
          samples: leases.length, tokens: leases.length * spec.seqLen, stepMs: t2 - t1, waitMs: t1 - t0, acceptLength: accept, at: Date.now(),
        };
        // Reported before the checkpoint: a step lost to a crash is reported again when it is
        // retrained (the run keeps the last report of each step), and none goes unreported.
        bus.publish(`dw.${spec.job}.metrics`, m);
        this.o.onStep?.(m);
        if (this.stepNo % every === 0 || this.stepNo === spec.steps) await this.checkpointAndAck();
      }
      if (!this.stopped) await this.drainSkipped();
      this.state = 'done';
      return { weights: this.model.weights(), model: this.model };
    } finally {
      target.close();
      this.stop();
    }
  }

  stop(): void {
    this.stopped = true;
    for (const t of this.timers) clearInterval(t);
    this.timers = [];
    this.sub?.unsubscribe();
    this.sub = null;
    this.epochSub?.unsubscribe();
    this.epochSub = null;
    this.wake?.();
  }

  /** Commits a checkpoint holding the window's steps, then acks the window's leases. */
  private async checkpointAndAck(): Promise<void> {
    const { spec } = this.o;
    if (this.window.length === 0 && this.trainedSkip.size === 0) return;
    this.state = 'checkpointing';
    const win: CheckpointLease[] = this.window.map((l) => ({ leaseId: l.leaseId, sampleId: l.sampleId, epoch: l.epoch }));
    // Samples already in a checkpoint whose acks failed stay recorded as trained.
    const skipped = [...this.trainedSkip].map((sampleId) => ({ leaseId: '', sampleId, epoch: 0 }));
    await writeRankCheckpoint(spec, this.model!, this.o.weights.d2t as Int32Array, this.stepNo, [...win, ...skipped]);
    this.stats.checkpoints++;
    this.o.onCheckpoint?.(this.stepNo);
    failpoint('rank.before-ack');
    const window = this.window;
    await this.ackAll(win);
    if (this.window === window) this.window = [];
  }

  /** Acks leases of trained samples; a lease that is gone puts its sample on the skip list. */
  private async ackAll(leases: CheckpointLease[]): Promise<void> {
    const { bus } = this.o;
    await Promise.all(leases.filter((l) => l.leaseId !== '').map(async (l) => {
      try {
        await bus.request(bus.subjects.queue.ack, { leaseId: l.leaseId, epoch: l.epoch }, { idempotencyKey: `ack:${l.leaseId}`, retries: 10, timeoutMs: 3000 });
        this.trainedSkip.delete(l.sampleId);
      } catch (e) {
        if (!(e instanceof LeaseExpiredError || e instanceof StaleEpochError)) throw e;
        // A stale ack is refused by the queue (fencing); the sample is trained already, so its
        // next lease is acked without training it again.
        this.stats.staleAcks++;
        this.trainedSkip.add(l.sampleId);
        this.log.warn('ack refused (lease gone); the sample will be acked on its next lease', { leaseId: l.leaseId, sampleId: l.sampleId, error: (e as Error).message });
      }
    }));
  }

  /** Leases of samples already trained into a checkpoint: ack them, do not train again. */
  private async ackSkipped(): Promise<void> {
    const { bus } = this.o;
    for (const l of [...this.held.values()]) {
      if (!this.trainedSkip.has(l.sampleId)) continue;
      this.held.delete(l.leaseId);
      try {
        await bus.request(bus.subjects.queue.ack, { leaseId: l.leaseId, epoch: l.epoch }, { idempotencyKey: `ack:${l.leaseId}`, retries: 10, timeoutMs: 3000 });
        this.trainedSkip.delete(l.sampleId);
        this.stats.skippedAcks++;
        this.log.info('acked a re-leased sample that the checkpoint already holds', { sampleId: l.sampleId, leaseId: l.leaseId });
      } catch (e) {
        if (!(e instanceof LeaseExpiredError || e instanceof StaleEpochError)) throw e;
      }
    }
  }

  /** After the last step: ack the re-leases of samples trained but not yet acked (bounded wait). */
  private async drainSkipped(): Promise<void> {
    const end = Date.now() + 3 * this.o.spec.leaseMs;
    while (this.trainedSkip.size > 0 && Date.now() < end && !this.stopped) {
      try { await this.collect(this.held.size + this.trainedSkip.size, end); } catch (e) {
        if (e instanceof StaleEpochError) { await this.reshard(); continue; }
        if ((e as DraftwireError).code === 'DEADLINE') break;
        throw e;
      }
    }
    if (this.trainedSkip.size > 0) this.log.warn('finished with trained samples whose acks never got through', { samples: [...this.trainedSkip] });
    // Leases received but not trained (the job's step count was reached): give them back.
    await this.releaseHeld();
  }

  private async releaseHeld(): Promise<void> {
    const { bus } = this.o;
    const held = [...this.held.values()];
    this.held.clear();
    await Promise.all(held.map((l) => bus.request(bus.subjects.queue.release, { leaseId: l.leaseId, epoch: l.epoch }, { idempotencyKey: `release:${l.leaseId}`, retries: 5, timeoutMs: 3000 })
      .catch((e: unknown) => this.log.warn('release failed', { leaseId: l.leaseId, error: (e as Error).message }))));
  }

  /** The epoch changed: finish (checkpoint + ack) what was trained, give back unused leases, re-join. */
  private async reshard(): Promise<void> {
    this.state = 'resharding';
    await this.checkpointAndAck();
    await this.releaseHeld();
    this.sub?.unsubscribe();
    this.sub = null;
    this.stats.rejoins++;
    await this.joinEpoch(true);
  }

  private startTimers(): void {
    const { spec, bus, rank } = this.o;
    const beat = () => bus.publish(bus.subjects.hb(`rank-${rank}`), { rank, pid: process.pid, step: this.stepNo, state: this.state, held: this.held.size + this.window.length, epoch: this.epoch.epoch, at: Date.now() });
    beat(); // at once: a rank frozen before its first interval must still be known, hence detectable
    const hb = setInterval(beat, 1000);
    // Renew held and trained-but-unacked leases well before they expire.
    const renew = setInterval(() => {
      for (const l of [...this.held.values(), ...this.window]) {
        bus.request(bus.subjects.queue.renew, { leaseId: l.leaseId, epoch: l.epoch }, { timeoutMs: 2000, retries: 1 }).catch((e: unknown) => {
          if (e instanceof LeaseExpiredError && this.held.get(l.leaseId) === l) this.held.delete(l.leaseId); // re-leased or gone
          this.log.warn('lease renewal failed', { leaseId: l.leaseId, error: (e as Error).message });
        });
      }
    }, Math.max(200, Math.floor(spec.leaseMs / 3)));
    this.timers.push(hb, renew);
    // An announced epoch change wakes a waiting rank at once (its next credit is refused as
    // stale and it re-joins), instead of at its next credit retry.
    this.epochSub = bus.subscribe<EpochInfo>(bus.subjects.ctlEpoch, (e) => {
      if (e && typeof e.epoch === 'number' && e.epoch > this.epoch.epoch) setTimeout(() => this.wake?.(), 50);
    }, { dedupe: false });
  }

  private async joinEpoch(newer = false): Promise<void> {
    const { bus, spec } = this.o;
    const kv = await bus.kv(bus.subjects.kvBucket);
    const was = this.epoch.epoch;
    for (let i = 0; ; i++) {
      const e = await kv.get<EpochInfo>('epoch');
      if (e && (!newer || e.value.epoch > was)) { this.epoch = e.value; break; }
      if (i > 600) throw new DraftwireError('NO_EPOCH', `no ${newer ? `epoch after ${was}` : 'epoch'} in KV bucket ${bus.subjects.kvBucket} after 60 s: is the coordinator running?`, true);
      await sleep(100);
    }
    const index = this.o.rank % this.epoch.num;
    this.sub = bus.subscribe<LeaseMessage>(bus.subjects.part(this.epoch.num, index), (m) => {
      if (m?.consumer !== this.consumer || !Array.isArray(m.leases)) return;
      for (const l of m.leases) {
        // A newer lease of a sample supersedes an older one (the older one expired: renewals
        // lapsed while this process was frozen); never train one sample twice in a step.
        for (const [id, h] of this.held) if (h.sampleId === l.sampleId) this.held.delete(id);
        this.held.set(l.leaseId, l);
      }
      this.wake?.();
    }, { dedupe: false });
    await bus.flush();
    this.log.info('joined', { epoch: this.epoch.epoch, num: this.epoch.num, partition: index, job: spec.job });
  }

  /** Waits until `n` leases are held, re-sending credit while waiting. */
  private async collect(n: number, deadline = Infinity): Promise<Lease[]> {
    const { bus } = this.o;
    this.state = 'waiting';
    for (;;) {
      if (this.trainedSkip.size > 0) await this.ackSkipped();
      if (this.held.size >= n || (this.trainedSkip.size === 0 && deadline !== Infinity)) break;
      if (this.stopped) throw new DraftwireError('STOPPED', 'rank stopped', false);
      if (Date.now() > deadline) throw new DraftwireError('DEADLINE', 'no more leases before the deadline', true);
      const index = this.o.rank % this.epoch.num;
      try {
        await bus.request(bus.subjects.queue.credit, { consumer: this.consumer, partition: [index, this.epoch.num], epoch: this.epoch.epoch, max: n - this.held.size, leaseMs: this.o.spec.leaseMs }, { timeoutMs: 3000, retries: 2 });
      } catch (e) {
        if (e instanceof StaleEpochError) throw e; // reshard: the caller re-joins (elastic DP)
        this.log.warn('credit failed; retrying', { error: (e as Error).message });
      }
      // Leases may have arrived while the credit request was in flight: wait only if short.
      if (this.held.size < n && !this.stopped) {
        await new Promise<void>((r) => { const t = setTimeout(r, 1000); this.wake = () => { clearTimeout(t); r(); }; });
        this.wake = null;
      }
    }
    return [...this.held.values()].slice(0, n);
  }

  /** Reads the leased samples; one that cannot be read is failed (dead-lettered) and dropped. */
  private async fetch(leases: Lease[]): Promise<Record<string, Tensor>[]> {
    const { bus, store } = this.o;
    const out: Record<string, Tensor>[] = [];
    for (const l of leases) {
      try {
        out.push(await store.get(l.ref, { names: FEATURES }));
      } catch (e) {
        this.log.error('sample unreadable; failing its lease', { sampleId: l.sampleId, error: (e as Error).message });
        this.held.delete(l.leaseId);
        await bus.request(bus.subjects.queue.fail, { leaseId: l.leaseId, epoch: l.epoch, retryable: false, reason: (e as Error).message }, { idempotencyKey: `fail:${l.leaseId}`, retries: 5 });
      }
    }
    return out;
  }
}
