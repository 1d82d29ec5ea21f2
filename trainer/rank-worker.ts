// One trainer rank (DESIGN.md §2). Per epoch it finds its place in the epoch's member list
// (its world rank; each data-parallel index is a cell of tp·sp consecutive world ranks that
// trains partition `dw.<job>.part.<num>.<dpIdx>`), forms the epoch's world
// (actors/dp-group.ts) and trains in lockstep with it. The cell's first rank (the leader)
// subscribes to the partition and holds the leases; it reads the features at once and, at
// each step, shares the step's sample refs with the cell's other ranks, which read the
// features themselves (an SP rank keeps its chunk). Every step starts with an agreement
// round (two tiny all-reduces) that decides, for the whole world at the same moment, whether
// to step, checkpoint, reshard or finish. While a step computes, heartbeats and lease
// renewals keep running on the event loop. The leases it holds live in a LeaseBook
// (actors/rank-leases.ts); the epoch, credit and the world stay here.
//
// Batches. Each cell steps on up to `batch` samples of its own partition. Hash partitions
// fill unevenly, so cells short of samples pad with fully-masked samples and the step
// averages over the real ones only (StepOptions.samples): the step equals the single-rank
// step on the union of the real samples. The world steps when every leader is full (or its
// partition exhausted), when it holds every sample the job has left, or (dp > 1) when
// `batchWaitMs` passed with at least one sample in hand. The job ends when the queue has no
// sample left that is not finished (consumed or dead-lettered): its sample budget is
// steps × batch × dp of the job spec.
//
// Exactly-once training across crashes: every `checkpointEvery` steps the world writes a
// checkpoint (each rank its trained leases, world rank 0 the weights and AdamW state and the
// manifest that commits them; src/checkpoint.ts) and each leader acks its leases only once the
// checkpoint is durable, renewing them until then. A sample that is in a checkpoint but whose
// ack did not get through is acked without training when it is leased again (skip list).
//
// Epoch changes. A newer epoch (credit refused as stale, or the announcement) is agreed in the
// next round; the world checkpoints and acks what it trained, releases what it did not use,
// and every member re-forms under the new epoch; a rank that is no longer a member retires
// (exits 0). A failed collective (a peer died or froze) reverts the rank to the latest
// committed checkpoint: leases it trained since are released (retrained by whoever gets them)
// unless that checkpoint holds them (then acked); it asks the coordinator for a new epoch
// (`coord.regroup`) and re-forms with whoever is a member of it.
import type { Bus, BusSubscription } from '../src/bus/bus.ts';
import { latestManifest, loadRankCheckpoint, loadWeightsFile, takeWindowParts, writeRankCheckpoint, writeWindowPart, type CheckpointLease, type LoadedRankCheckpoint } from '../src/job/checkpoint.ts';
import { CollectiveError, DraftwireError, InvalidArgumentError, StaleEpochError } from '../src/errors.ts';
import { failpoint } from '../src/failpoints.ts';
import { stackBatch } from '../src/job/batch.ts';
import { evalPrompts } from '../src/job/prompts.ts';
import { checkpointEvery, jobRows, rankDeadAfterMs, type JobSpec } from '../src/job/spec.ts';
import { createLogger } from '../src/log.ts';
import { sliceBatch } from '../src/job/draft-io.ts';
import { acceptLength, DraftModel, TargetModel, TRAINABLE_NAMES, type DraftBatch } from '../src/native/addon.ts';
import { validateSampleRef, type SampleRef } from '../src/wire/sampleref.ts';
import type { FeatureStore } from '../src/store/feature-store.ts';
import type { Tensor } from '../src/tensor.ts';
import { epochMembers, type EpochInfo } from '../src/job/epoch.ts';
import { DpGroup, initialState, type Round, type TrainState } from './world.ts';
import { FEATURES, LeaseBook, type Held } from './lease-book.ts';
import type { LeaseMessage } from '../actors/queue.ts';

export { FEATURES } from './lease-book.ts';

/**
 * The KV record `epoch`: members[i] is the rank id of world rank i; each data-parallel index
 * is `group` (= tp·sp) consecutive world ranks and trains partition index of num.
 */

export interface StepMetrics {
  rank: number; step: number; loss: number; gradNorm: number; ploss: number[]; acc: number[];
  samples: number; tokens: number; stepMs: number; waitMs: number; acceptLength: number | null; at: number;
  /** The data-parallel width and epoch the step ran at. */
  dp: number; epoch: number;
}

export interface RankOptions {
  spec: JobSpec;
  bus: Bus;
  store: FeatureStore;
  rank: number;
  /** Initial weights (frozen + trainable), or the checkpoint's when resuming. */
  weights: Record<string, Float32Array | Int32Array>;
  /** Join no epoch older than this (a process spawned for a scale-up or as a replacement). */
  minEpoch?: number;
  /** The node agent hosting this rank (reported in heartbeats). */
  node?: string;
  /** Called after every step this rank publishes (tests; the CLI reads the metrics subject). */
  onStep?: (m: StepMetrics) => void;
  /** Resume from this checkpoint (weights must already be the checkpoint's). */
  resume?: LoadedRankCheckpoint | null;
  /** Called after every committed checkpoint, before its leases are acked. */
  onCheckpoint?: (step: number) => void;
}

/**
 * How run() ended: trained to the end of the data, or retired by a scale-down. `final`: this
 * rank was world rank 0 of the world that finished the job (it writes the final checkpoint).
 */
export interface RankResult { state: TrainState; step: number; samples: number; retired: boolean; final: boolean }

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));


type EpochEnd = 'done' | 'reshard';

export class RankWorker {
  private readonly log;
  private readonly consumer: string;
  /** What this rank holds: leases to train, trained ones awaiting their checkpoint, the skip list. */
  private readonly book: LeaseBook;
  private wake: (() => void) | null = null;
  private sub: BusSubscription | null = null;
  private epochSub: BusSubscription | null = null;
  private epoch: EpochInfo = { epoch: 0, partitions: 1, members: [] };
  private index = -1;
  private newerEpochSeen = false;
  /** The newest epoch announced on ctl.epoch (an announcement may arrive before the KV read). */
  private announced = 0;
  /** Cancels the rendezvous of the world being formed when a newer epoch is announced. */
  private forming: AbortController | null = null;
  /** The queue's last word on samples not finished yet (budget − consumed − dead). */
  private outstanding: number;
  /** The queue's last word: every sample of the budget is committed and none is pending in this partition. */
  private exhausted = false;
  private stepNo = 0;
  private state: 'starting' | 'waiting' | 'stepping' | 'checkpointing' | 'resharding' | 'forming' | 'recovering' | 'done' | 'retired' = 'starting';
  private stopped = false;
  private timers: NodeJS.Timeout[] = [];
  private train: TrainState;
  private lastMetrics: StepMetrics | null = null;
  /** Real samples trained into the current weights (agreed by the world, reverted with them). */
  private samplesTrained = 0;
  /** A step was taken since the last accept-length measurement (the same on every rank). */
  private evalPending = false;
  private readonly frozen: Record<string, Float32Array | Int32Array>;
  /** Counters for tests and status. */
  readonly stats = { checkpoints: 0, skippedAcks: 0, rejoins: 0, staleAcks: 0, resumedFrom: 0, regroups: 0, paddedSteps: 0 };

  constructor(private readonly o: RankOptions) {
    // Stable per rank (not per process): a replacement process receives what the queue granted
    // to its predecessor's outstanding credit instead of letting it expire again.
    this.consumer = `rank-${o.rank}`;
    this.log = createLogger(`rank.${o.rank}`);
    this.book = new LeaseBook({ bus: o.bus, store: o.store, log: this.log, stats: this.stats });
    this.outstanding = jobRows(o.spec);
    this.frozen = Object.fromEntries(Object.entries(o.weights).filter(([k]) => !TRAINABLE_NAMES.includes(k)));
    this.train = initialState(o.spec, o.weights);
    const resume = o.resume ?? null;
    if (resume) {
      this.train = { ...this.train, optimizer: resume.optimizer, step: resume.manifest.step, samples: resume.manifest.samples };
      this.stats.resumedFrom = resume.manifest.step;
      for (const id of resume.manifest.trained) this.book.trainedSkip.add(id);
    }
    this.stepNo = this.train.step;
    this.samplesTrained = this.train.samples;
  }

  get step(): number { return this.stepNo; }
  /** Ranks per data-parallel index (a cell of tp·sp ranks). */
  private get cellSize(): number { return this.o.spec.tp * this.o.spec.sp; }
  /** The data-parallel index (= partition) of this rank in the current epoch. */
  private get dpIdx(): number { return Math.floor(this.index / this.cellSize); }
  /** The first rank of its cell: it alone leases, for the whole cell. */
  private get leader(): boolean { return this.index >= 0 && this.index % this.cellSize === 0; }
  get currentEpoch(): EpochInfo { return this.epoch; }

  /** Trains until the job's data is consumed (or this rank is retired by a scale-down). */
  async run(): Promise<RankResult> {
    const { spec } = this.o;
    const target = TargetModel.create(spec.target, { threads: spec.threads });
    this.startTimers();
    let retired = false, final = false;
    try {
      let minEpoch = this.o.minEpoch ?? 0;
      for (;;) {
        if (this.stopped) throw new DraftwireError('STOPPED', 'rank stopped', false);
        const member = await this.joinEpoch(minEpoch);
        minEpoch = this.epoch.epoch + 1;
        // Not a member of an epoch at or after the one it was started for: scaled down (what it
        // trained is acked), or dropped by a later scale before it ever joined.
        if (!member) { retired = true; break; }
        // A job whose data is all consumed has nothing to form a world for (a rank that joins
        // late, or a world re-formed after the last acks): its state is the committed checkpoint.
        if (this.book.window.length === 0 && await this.queueFinished()) { final = this.index === 0; break; }
        let group: DpGroup | null = null;
        try {
          this.state = 'forming';
          group = await this.formGroup();
          const end = await this.trainEpoch(group, target);
          if (end === 'done') { final = group.index === 0; break; }
        } catch (e) {
          if (!(e instanceof CollectiveError)) throw e;
          await group?.close();
          group = null;
          await this.recover(e);
        } finally {
          await group?.close();
          this.sub?.unsubscribe();
          this.sub = null;
        }
      }
      if (!retired && this.leader) await this.drainSkipped();
      await this.book.releaseHeld();
      this.state = retired ? 'retired' : 'done';
      this.beat();
      return { state: this.train, step: this.stepNo, samples: this.samplesTrained, retired, final };
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

  private async formGroup(): Promise<DpGroup> {
    const { spec, bus } = this.o;
    const dead = rankDeadAfterMs(spec);
    this.forming = new AbortController();
    if (this.newerEpochSeen) this.forming.abort(`epoch ${this.epoch.epoch} was superseded before its world formed`);
    let group: DpGroup;
    try {
      group = await DpGroup.form({
        bus, spec, epoch: this.epoch.epoch, index: this.index, size: this.epoch.members!.length, frozen: this.frozen,
        timeoutMs: Math.max(10_000, 2 * dead), connectTimeoutMs: Math.max(30_000, 3 * dead), signal: this.forming.signal,
      }, this.train);
    } finally { this.forming = null; }
    this.stepNo = group.step;
    this.samplesTrained = group.samples;
    // Every sample the committed checkpoint holds is trained: never train it again. Its leases
    // are acked (idempotent; also those of a rank that died after the commit): what is acked
    // leaves the skip list, what was re-granted meanwhile stays on it.
    const m = this.leader ? await latestManifest(spec) : null;
    if (m) {
      for (const id of m.trained) this.book.trainedSkip.add(id);
      await this.book.ackAll(m.window);
    }
    this.log.info('world formed', { epoch: this.epoch.epoch, dp: this.epoch.partitions, index: this.index, dpIdx: group.dpIdx, leader: group.leader, step: this.stepNo });
    return group;
  }

  /** Trains in lockstep with the epoch's world until the data is consumed or the epoch changes. */
  private async trainEpoch(group: DpGroup, target: TargetModel): Promise<EpochEnd> {
    const { spec, rank } = this.o;
    const every = checkpointEvery(spec);
    const batchWaitMs = spec.batchWaitMs ?? 2000;
    const roundMs = group.size > 1 ? 250 : 1000;
    for (;;) {
      const t0 = Date.now();
      let a: Round;
      let mine: Held[];
      for (;;) {
        // Only a cell's leader leases; its other ranks (TP/SP) get the step's refs from it.
        const stale = this.leader ? await this.collect(spec.batch, Date.now() + roundMs) : false;
        // What this rank steps on if the world steps: fixed before the round, so the agreed
        // count is the count stepped on even if a lease is superseded meanwhile.
        mine = this.book.ready().slice(0, spec.batch);
        const held = mine.length;
        a = await group.agree({
          held, window: this.book.window.length, stale: stale || this.newerEpochSeen,
          waitedOut: Date.now() - t0 >= batchWaitMs, outstanding: this.outstanding, short: this.leader && held < spec.batch && !this.exhausted,
        });
        if (a.stale) {
          this.state = 'resharding';
          await this.checkpointAndAck(group);
          // Leases of the old epoch cannot be renewed: give back what was not trained.
          await this.book.releaseHeld();
          this.stats.rejoins++;
          return 'reshard';
        }
        const left = a.outstanding - a.window; // samples not trained by this world yet
        if (a.total === 0 && left <= 0) {
          if (a.window > 0) { await this.checkpointAndAck(group); continue; } // flush: the acks finish the job
          // The accept length of the final weights, reported with the last step.
          if (this.evalPending) {
            const accept = await this.evaluate(group, target);
            if (accept !== null && this.lastMetrics) this.publishStep({ ...this.lastMetrics, acceptLength: accept, at: Date.now() });
          }
          return 'done';
        }
        // Every rank full (or its partition exhausted), everything left in hand, or waited long enough.
        if (a.total > 0 && (!a.short || a.total >= left || (group.size > 1 && a.waitedOut))) break;
      }
      const width = Math.min(spec.batch, a.maxHeld);
      const t1 = Date.now();
      this.state = 'stepping';
      this.book.inStep = mine.map((h) => h.lease);
      const batch = await this.cellBatch(group, mine, width);
      if (batch.batch > batch.real) this.stats.paddedSteps++;
      const res = await group.model.step(batch.slice, {
        lr: spec.lr, clip: spec.clip, weightDecay: spec.weightDecay, returnGrads: false, samples: group.size > 1 || batch.batch > batch.real ? a.total : null,
      });
      const t2 = Date.now();
      this.book.trained(mine);
      this.stepNo++;
      this.samplesTrained += a.total;
      this.evalPending = true;
      const evalDue = spec.evalEvery > 0 && this.stepNo % spec.evalEvery === 0;
      const accept = evalDue ? await this.evaluate(group, target) : null; // a collective when TP-sharded
      if (group.index === 0) {
        const m: StepMetrics = {
          rank, step: this.stepNo, loss: res.loss, gradNorm: res.gradNorm, ploss: [...res.ploss], acc: [...res.acc],
          samples: a.total, tokens: a.total * spec.seqLen, stepMs: t2 - t1, waitMs: t1 - t0,
          acceptLength: accept, at: Date.now(), dp: this.epoch.partitions, epoch: this.epoch.epoch,
        };
        // Reported before the checkpoint: a step lost to a crash is reported again when it is
        // retrained (the run keeps the last report of each step), and none goes unreported.
        this.publishStep(m);
      }
      if (this.stepNo % every === 0) await this.checkpointAndAck(group);
    }
  }

  /** Asks the queue how much of the budget is finished; true when nothing is left. */
  private async queueFinished(): Promise<boolean> {
    const { bus, spec } = this.o;
    const q = await bus.request<{ consumed: number; dead: number }>(`dw.${spec.job}.queue.status`, {}, { timeoutMs: 5000, retries: 5 });
    this.outstanding = jobRows(spec) - q.consumed - q.dead;
    return this.outstanding <= 0;
  }

  private publishStep(m: StepMetrics): void {
    this.lastMetrics = m;
    this.o.bus.publish(`dw.${this.o.spec.job}.metrics`, m);
    this.o.onStep?.(m);
  }

  /**
   * Accept length of the current weights, measured by world rank 0 (null on the others). Every
   * rank calls it: gathering a TP-sharded model's weights is a collective.
   */
  private async evaluate(group: DpGroup, target: TargetModel): Promise<number | null> {
    const { spec } = this.o;
    this.evalPending = false;
    const opts = { maxNew: spec.seqLen - spec.promptLen };
    if (group.size === 1) return (await acceptLength(group.model, target, evalPrompts(spec), opts)).acceptLength;
    const weights = (await group.state(this.stepNo, this.samplesTrained)).weights;
    if (group.index !== 0) return null;
    const copy = DraftModel.create(spec.draft, { ...this.frozen, ...weights }, { threads: spec.threads });
    try { return (await acceptLength(copy, target, evalPrompts(spec), opts)).acceptLength; } finally { copy.close(); }
  }

  /**
   * This rank's part of its cell's step: the leader's samples (shared as refs with the cell's
   * TP/SP ranks, which read the features themselves), padded to `width` with fully-masked
   * samples, and the SP slice of it.
   */
  private async cellBatch(group: DpGroup, mine: Held[], width: number): Promise<{ slice: DraftBatch; batch: number; real: number }> {
    const { spec, store } = this.o;
    let tensors = mine.map((h) => h.tensors!);
    if (group.cellSize > 1) {
      const shared = await group.shareInCell(this.leader ? { refs: mine.map((h) => h.lease.ref) } : null);
      const refs = (shared.refs ?? []) as SampleRef[];
      if (!this.leader) tensors = await Promise.all(refs.map((r) => store.get(validateSampleRef(r), { names: FEATURES })));
    }
    const full = stackBatch(tensors, spec.seqLen, spec.draft.hidden, width - tensors.length);
    const slice = spec.sp > 1 ? sliceBatch(full, { sp: spec.sp, dp: 1, spIdx: group.spIdx, dpIdx: 0 }, spec.draft.ttt, spec.draft.hidden) : full;
    return { slice, batch: width, real: tensors.length };
  }

  /**
   * Commits a checkpoint of the world's state holding every rank's trained leases, then acks
   * this rank's. A collective on a world of several ranks (all call it in the same round).
   */
  private async checkpointAndAck(group: DpGroup): Promise<void> {
    const { spec } = this.o;
    if (group.size === 1 && this.book.window.length === 0 && this.book.trainedSkip.size === 0) return;
    this.state = 'checkpointing';
    const win: CheckpointLease[] = this.book.window.map((l) => ({ leaseId: l.leaseId, sampleId: l.sampleId, epoch: l.epoch }));
    const epoch = this.epoch.epoch;
    let all: CheckpointLease[];
    if (group.size === 1) {
      // Samples already in a checkpoint whose acks failed stay recorded as trained.
      all = [...win, ...[...this.book.trainedSkip].map((sampleId) => ({ leaseId: '', sampleId, epoch: 0 }))];
    } else {
      await writeWindowPart(spec, this.stepNo, epoch, group.index, { window: win, skipped: [...this.book.trainedSkip] });
      await group.barrier();
      all = group.index === 0 ? await takeWindowParts(spec, this.stepNo, epoch, group.size) : [];
    }
    this.train = await group.state(this.stepNo, this.samplesTrained);
    if (group.index === 0) await writeRankCheckpoint(spec, this.train, this.frozen.d2t as Int32Array, this.stepNo, all, epoch, this.samplesTrained);
    await group.barrier(); // committed: every rank may ack now
    this.stats.checkpoints++;
    this.o.onCheckpoint?.(this.stepNo);
    failpoint('rank.before-ack');
    const window = this.book.window;
    await this.book.ackAll(win);
    if (this.book.window === window) this.book.window = [];
  }

  /**
   * A collective failed: the world's state is unknown. Back to the latest committed checkpoint;
   * leases trained since then are acked if it holds them and released otherwise; ask for a
   * new epoch and re-form.
   */
  private async recover(e: Error): Promise<void> {
    const { spec, bus, rank } = this.o;
    this.state = 'recovering';
    this.stats.regroups++;
    this.log.warn('collective group failed; reverting to the latest checkpoint and regrouping', { epoch: this.epoch.epoch, error: e.message });
    const init = await loadWeightsFile(spec.initWeights, spec.draft);
    const ck = await loadRankCheckpoint(spec, init);
    const inCk = new Set(ck?.manifest.trained ?? []);
    const trained = this.book.window.filter((l) => inCk.has(l.sampleId));
    const lost = this.book.window.filter((l) => !inCk.has(l.sampleId));
    this.book.window = [];
    for (const l of lost) this.book.held.set(l.leaseId, { lease: l, tensors: null });
    for (const id of inCk) this.book.trainedSkip.add(id);
    await this.book.ackAll(trained);
    await this.book.releaseHeld();
    this.train = ck ? { ...initialState(spec, ck.weights), optimizer: ck.optimizer, step: ck.manifest.step, samples: ck.manifest.samples } : initialState(spec, init);
    this.stepNo = this.train.step;
    this.samplesTrained = this.train.samples;
    await bus.request(`dw.${spec.job}.coord.regroup`, { fromEpoch: this.epoch.epoch, rank }, { timeoutMs: 10_000, retries: 5, idempotencyKey: `regroup:${rank}:${this.epoch.epoch}` });
  }

  /** After the data ran out: ack re-leases of samples trained but not yet acked (bounded wait). */
  private async drainSkipped(): Promise<void> {
    const end = Date.now() + 3 * this.o.spec.leaseMs;
    while (this.book.trainedSkip.size > 0 && Date.now() < end && !this.stopped && this.outstanding > 0) {
      await this.collect(this.book.held.size + this.book.trainedSkip.size, Math.min(end, Date.now() + 1000));
    }
    if (this.book.trainedSkip.size > 0 && this.outstanding > 0) this.log.warn('finished with trained samples whose acks never got through', { samples: [...this.book.trainedSkip] });
  }

  private beat(): void {
    const { bus, rank } = this.o;
    bus.publish(bus.subjects.hb(`rank-${rank}`), {
      rank, pid: process.pid, node: this.o.node ?? null, step: this.stepNo, state: this.state, held: this.book.held.size + this.book.window.length,
      epoch: this.epoch.epoch, index: this.index, dp: this.epoch.partitions, at: Date.now(),
    });
  }

  private startTimers(): void {
    const { spec, bus } = this.o;
    this.beat(); // at once: a rank frozen before its first interval must still be known, hence detectable
    const hb = setInterval(() => this.beat(), 1000);
    // Renew held and trained-but-unacked leases well before they expire.
    const renew = setInterval(() => this.book.renew(this.epoch.epoch), Math.max(200, Math.floor(spec.leaseMs / 3)));
    this.timers.push(hb, renew);
    // An announced epoch change wakes a waiting rank at once, instead of at its next credit retry.
    this.epochSub = bus.subscribe<EpochInfo>(bus.subjects.ctlEpoch, (e) => {
      if (e && typeof e.epoch === 'number') this.announced = Math.max(this.announced, e.epoch);
      if (e && typeof e.epoch === 'number' && e.epoch > this.epoch.epoch) {
        this.newerEpochSeen = true;
        // A world still forming for the old epoch will never complete: its members move on.
        this.forming?.abort(`epoch ${e.epoch} superseded epoch ${this.epoch.epoch} while its world was forming`);
        setTimeout(() => this.wake?.(), 20);
      }
    }, { dedupe: false });
  }

  /** Waits for an epoch >= minEpoch; subscribes to its partition if this rank is a member. */
  private async joinEpoch(minEpoch: number): Promise<boolean> {
    const { bus, spec, rank } = this.o;
    const kv = await bus.kv(bus.subjects.kvBucket);
    for (let i = 0; ; i++) {
      const e = await kv.get<EpochInfo>('epoch');
      if (e && e.value.epoch >= minEpoch) { this.epoch = { ...e.value, members: epochMembers(e.value) }; break; }
      if (this.stopped) throw new DraftwireError('STOPPED', 'rank stopped', false);
      if (i > 1200) throw new DraftwireError('NO_EPOCH', `no epoch >= ${minEpoch} in KV bucket ${bus.subjects.kvBucket} after 120 s: is the coordinator running?`, true);
      await sleep(100);
    }
    this.newerEpochSeen = this.announced > this.epoch.epoch;
    this.index = this.epoch.members!.indexOf(rank);
    this.beat();
    if (this.index < 0) {
      this.log.info('not a member of the epoch', { epoch: this.epoch.epoch, members: this.epoch.members });
      return false;
    }
    if (!this.leader) {
      this.log.info('joined', { epoch: this.epoch.epoch, num: this.epoch.partitions, worldRank: this.index, partition: this.dpIdx, leases: 'from its cell leader', job: spec.job });
      return true;
    }
    this.sub = bus.subscribe<LeaseMessage>(bus.subjects.part(this.epoch.partitions, this.dpIdx), (m) => {
      if (m?.consumer !== this.consumer || !Array.isArray(m.leases)) return;
      this.book.receive(m.leases);
      this.wake?.();
    }, { dedupe: false });
    await bus.flush();
    this.log.info('joined', { epoch: this.epoch.epoch, num: this.epoch.partitions, partition: this.dpIdx, job: spec.job });
    return true;
  }

  /**
   * Gathers leases until `n` are held with their features read, or `until`; re-sends credit
   * while short. Returns true when the queue refused the credit as stale (a newer epoch).
   */
  private async collect(n: number, until: number): Promise<boolean> {
    const { bus, spec } = this.o;
    this.state = 'waiting';
    for (;;) {
      if (this.book.trainedSkip.size > 0) await this.book.ackSkipped();
      await this.book.fetchNew();
      if (this.book.ready().length >= n || this.newerEpochSeen) return false;
      if (this.stopped) throw new DraftwireError('STOPPED', 'rank stopped', false);
      if (Date.now() >= until) return false;
      try {
        const r = await bus.request<{ consumed?: number; dead?: number; committed?: number; partitionPending?: number }>(bus.subjects.queue.credit, {
          consumer: this.consumer, partition: [this.dpIdx, this.epoch.partitions], epoch: this.epoch.epoch, max: Math.max(0, n - this.book.usable().length), leaseMs: spec.leaseMs,
        }, { timeoutMs: 3000, retries: 2 });
        if (typeof r.consumed === 'number' && typeof r.dead === 'number') this.outstanding = jobRows(spec) - r.consumed - r.dead;
        // Nothing pending here and nothing more to be committed: this credit grants nothing, and
        // waiting for a full batch would only hold the world up (samples expired or released
        // later make the partition non-empty again, and the next reply says so).
        this.exhausted = typeof r.committed === 'number' && r.committed >= jobRows(spec) && r.partitionPending === 0;
        // Leases granted before this reply are here already (one connection, in order): read
        // them, so that a short batch is short only of samples that do not exist.
        if (this.exhausted) { await this.book.fetchNew(); return false; }
      } catch (e) {
        if (e instanceof StaleEpochError) {
          // The queue has not seen this rank's (newer) epoch yet: not a reshard, ask again.
          if ((e.detail as { ahead?: boolean } | undefined)?.ahead) { await sleep(100); continue; }
          return true; // reshard: agreed in the next round
        }
        this.log.warn('credit failed; retrying', { error: (e as Error).message });
      }
      // Leases may have arrived while the credit request was in flight: wait only if short.
      if (this.book.usable().length < n && !this.stopped && Date.now() < until) {
        await new Promise<void>((r) => { const t = setTimeout(r, Math.max(1, until - Date.now())); this.wake = () => { clearTimeout(t); r(); }; });
        this.wake = null;
      }
    }
  }
}
