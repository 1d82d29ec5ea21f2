// One trainer rank (DESIGN.md §2). Per epoch it finds its place in the epoch's member list
// (its world rank; each data-parallel index is a cell of tp·sp consecutive world ranks that
// trains partition `dw.<job>.part.<partitions>.<dpIdx>`), forms the epoch's world
// (trainer/world.ts) and trains in lockstep with it. The cell's first rank (the leader)
// subscribes to the partition and holds the leases; it reads the features at once and, at
// each step, shares the step's sample refs with the cell's other ranks, which read the
// features themselves (an SP rank keeps its chunk). Every step starts with an agreement
// round (two tiny all-reduces) after which every rank decides the same thing at the same
// moment (trainer/step-decision.ts): step, checkpoint, reshard, wait or finish. While a step
// computes, heartbeats and lease renewals keep running on the event loop. The leases it holds
// live in a LeaseBook (trainer/lease-book.ts); the epoch, credit and the world stay here.
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
// manifest that commits them) and each leader acks its leases only once the checkpoint is
// durable, renewing them until then. A sample that is in a checkpoint but whose ack did not
// get through is acked without training when it is leased again (skip list). The protocol and
// why it is exactly-once: trainer/world-checkpoint.ts.
//
// Epoch changes. A newer epoch (credit refused as stale, or the announcement) is agreed in the
// next round; the world checkpoints and acks what it trained, releases what it did not use,
// and every member re-forms under the new epoch; a rank that is no longer a member retires
// (exits 0). A failed collective (a peer died or froze) reverts the rank to the latest
// committed checkpoint: leases it trained since are released (retrained by whoever gets them)
// unless that checkpoint holds them (then acked); it asks the coordinator for a new epoch
// (`coord.regroup`) and re-forms with whoever is a member of it.
import { checkpointStoreOf, type CheckpointStore } from '../src/job/checkpoint-store.ts';
import type { Bus, BusSubscription } from '../src/bus/bus.ts';
import type { LoadedRankCheckpoint } from '../src/job/checkpoint.ts';
import { CollectiveError, DraftwireError, StaleEpochError } from '../src/errors.ts';
import { batchOfSamples } from '../src/job/batch.ts';
import { sampleTokens } from '../src/wire/schema.ts';
import { evalMaxNew, evalPrompts } from '../src/job/prompts.ts';
import { checkpointEvery, rankDeadAfterMs, sampleBudget, type JobSpec } from '../src/job/spec.ts';
import { createLogger } from '../src/log.ts';
import { acceptLength, DraftModel, TRAINABLE_NAMES, type SampleBatch, type TargetModel } from '../src/native/addon.ts';
import { openTarget } from '../src/job/target.ts';
import { validateSampleRef, type SampleRef } from '../src/wire/sampleref.ts';
import type { FeatureStore } from '../src/store/feature-store.ts';
import type { Tensor } from '../src/tensor.ts';
import { epochMembers, type EpochInfo } from '../src/job/epoch.ts';
import { World, initialState, type TrainState } from './world.ts';
import { FEATURES, LeaseBook, type Held } from './lease-book.ts';
import { WorldCheckpoint } from './world-checkpoint.ts';
import { decideStep, roundInput, type StepDecision } from './step-decision.ts';
import { newerEpochAnnounced } from './announcement.ts';
import { STORAGE, type RankCounters, type StepMetrics } from '../src/wire/protocol.ts';
import { HeartbeatPublisher, QueueClient, listen, publish } from '../src/bus/clients.ts';

export { FEATURES } from './lease-book.ts';

/** What the rank publishes on `metrics` after each step (declared in the protocol table). */
export type { StepMetrics };

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
  /** The address this rank's collectives listen on (its machine's, reachable from the other ranks; default 127.0.0.1). */
  commHost?: string;
  /** Where checkpoints are committed (default: the store the spec names). */
  checkpoints?: CheckpointStore;
  /** Bytes this process fetched over the data plane so far (reported in heartbeats). */
  fetchedBytes?: () => number;
  /** The process's heartbeat publisher, if it beat already while starting (one sequence per process). */
  heartbeats?: HeartbeatPublisher;
}

/**
 * How run() ended: trained to the end of the data, or retired by a scale-down. `final`: this
 * rank was world rank 0 of the world that finished the job (it writes the final checkpoint).
 */
export interface RankResult { state: TrainState; step: number; samples: number; retired: boolean; final: boolean }

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

type EpochEnd = 'done' | 'reshard';
/** The job's target, opened on first use. */
interface LazyTarget { get(): Promise<TargetModel>; close(): void }

export class RankWorker {
  private readonly log;
  private readonly consumer: string;
  /** What this rank holds: leases to train, trained ones awaiting their checkpoint, the skip list. */
  private readonly book: LeaseBook;
  /** The world checkpoint and the acks that follow it. */
  private readonly ckpt: WorldCheckpoint;
  private wake: (() => void) | null = null;
  private sub: BusSubscription | null = null;
  private epochSub: BusSubscription | null = null;
  /** Numbers this process's heartbeats, so the coordinator can tell a replayed one. */
  private beats: HeartbeatPublisher | null = null;
  private epoch: EpochInfo = { epoch: 0, partitions: 1, members: [] };
  private index = -1;
  private newerEpochSeen = false;
  /** The newest epoch announced on ctl.epoch (an announcement may arrive before the KV read). */
  private announced = 0;
  /** Cancels the rendezvous of the world being formed when a newer epoch is announced. */
  private forming: AbortController | null = null;
  /** The queue's last word on samples not finished yet (budget − consumed − dead). */
  private outstanding: number;
  /**
   * Samples the job trains in all: the queue's word (CreditReply.budget), else the spec's;
   * Infinity while an external job's input is open (the world never decides it is done).
   */
  private budget: number;
  /** The queue's last word: every sample of the budget is committed and none is pending in this partition. */
  private partitionExhausted = false;
  /** While a step computes (leader only): leases that arrive are read at once (prefetch). */
  private prefetching = false;
  /** The prefetch's credit and reads, awaited by the next collect. */
  private prefetched: Promise<void> | null = null;
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
  /** Running totals for the node's metrics (heartbeats carry them). */
  private readonly counters: Omit<RankCounters, 'fetchedBytes'> = { steps: 0, samples: 0, tokens: 0, stepSeconds: 0, dataSeconds: 0, computeSeconds: 0 };

  constructor(private readonly o: RankOptions) {
    // Stable per rank (not per process): a replacement process receives what the queue granted
    // to its predecessor's outstanding credit instead of letting it expire again.
    this.consumer = `rank-${o.rank}`;
    this.log = createLogger(`rank.${o.rank}`);
    this.book = new LeaseBook({ bus: o.bus, store: o.store, log: this.log });
    this.budget = sampleBudget(o.spec) ?? Infinity;
    this.outstanding = this.budget;
    this.frozen = Object.fromEntries(Object.entries(o.weights).filter(([k]) => !TRAINABLE_NAMES.includes(k)));
    this.ckpt = new WorldCheckpoint({
      spec: o.spec, bus: o.bus, book: this.book, log: this.log, stats: this.stats,
      d2t: this.frozen.d2t as Int32Array, onCheckpoint: o.onCheckpoint, checkpoints: o.checkpoints ?? checkpointStoreOf(o.spec, o.bus),
    });
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
    // The target serves only the accept length, on world rank 0: opened there, when first
    // needed (a Hugging Face target is gigabytes per process).
    let opened: Promise<TargetModel> | null = null;
    const target: LazyTarget = {
      get: () => (opened ??= openTarget(spec.target, spec.threads)),
      close: () => { void opened?.then((t) => t.close(), () => {}); opened = null; },
    };
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
        let world: World | null = null;
        try {
          this.state = 'forming';
          world = await this.formWorld();
          // World rank 0 loads the target while it trains (a failure is logged now and thrown at
          // the evaluation); a rank that is no longer world rank 0 lets it go.
          if (world.index === 0) void target.get().catch((e: unknown) => this.log.error('cannot open the target for the accept length', { error: (e as Error).message }));
          else target.close();
          const end = await this.trainEpoch(world, target);
          if (end === 'done') { final = world.index === 0; break; }
        } catch (e) {
          if (!(e instanceof CollectiveError)) throw e;
          await world?.close();
          world = null;
          await this.recover(e);
        } finally {
          await world?.close();
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

  private async formWorld(): Promise<World> {
    const { spec, bus } = this.o;
    const dead = rankDeadAfterMs(spec);
    this.forming = new AbortController();
    if (this.newerEpochSeen) this.forming.abort(`epoch ${this.epoch.epoch} was superseded before its world formed`);
    let world: World;
    try {
      world = await World.form({
        bus, spec, epoch: this.epoch.epoch, index: this.index, size: this.epoch.members!.length, frozen: this.frozen, commHost: this.o.commHost,
        timeoutMs: Math.max(10_000, 2 * dead), connectTimeoutMs: Math.max(30_000, 3 * dead), signal: this.forming.signal,
      }, this.train);
    } finally { this.forming = null; }
    this.stepNo = world.step;
    this.samplesTrained = world.samples;
    if (this.leader) await this.ckpt.ackCommitted();
    this.log.info('world formed', { epoch: this.epoch.epoch, dp: this.epoch.partitions, index: this.index, dpIdx: world.dpIdx, leader: world.leader, step: this.stepNo });
    return world;
  }

  /** Trains in lockstep with the epoch's world until the data is consumed or the epoch changes. */
  private async trainEpoch(world: World, target: LazyTarget): Promise<EpochEnd> {
    const { spec, rank } = this.o;
    const every = checkpointEvery(spec);
    const batchWaitMs = spec.batchWaitMs ?? 2000;
    const roundMs = world.size > 1 ? 250 : 1000;
    for (;;) {
      const t0 = Date.now();
      let step: Extract<StepDecision, { kind: 'step' }>;
      let mine: Held[];
      for (;;) {
        // Only a cell's leader leases; its other ranks (TP/SP) get the step's refs from it.
        const stale = this.leader ? await this.collect(spec.batch, Date.now() + roundMs) : false;
        // What this rank steps on if the world steps: fixed before the round, so the agreed
        // count is the count stepped on even if a lease is superseded meanwhile.
        mine = this.book.ready().slice(0, spec.batch);
        const lengths = mine.map((h) => sampleTokens(h.lease.ref.features));
        const a = await world.agree(roundInput({
          held: mine.length, window: this.book.window.length, staleEpoch: stale || this.newerEpochSeen, waitedMs: Date.now() - t0,
          outstanding: this.outstanding, leader: this.leader, partitionExhausted: this.partitionExhausted,
          longest: Math.max(0, ...lengths), tokens: lengths.reduce((x, y) => x + y, 0),
        }, { batch: spec.batch, batchWaitMs }));
        const d = decideStep(a, {
          batch: spec.batch, batchWaitMs, worldSize: world.size, stepNo: this.stepNo,
          checkpointEvery: every, evalEvery: spec.evalEvery, evalPending: this.evalPending, seqLen: spec.seqLen, sp: spec.sp,
        });
        if (d.kind === 'reshard') {
          this.state = 'resharding';
          await this.checkpointAndAck(world);
          // Leases of the old epoch cannot be renewed: give back what was not trained.
          await this.book.releaseHeld();
          this.stats.rejoins++;
          return 'reshard';
        }
        if (d.kind === 'checkpoint') { await this.checkpointAndAck(world); continue; } // flush: the acks finish the job
        if (d.kind === 'done') {
          // The accept length of the final weights, reported with the last step.
          if (d.evaluate) {
            const accept = await this.evaluate(world, target);
            if (accept !== null && this.lastMetrics) this.publishStep({ ...this.lastMetrics, acceptLength: accept, at: Date.now() });
          }
          return 'done';
        }
        if (d.kind === 'step') { step = d; break; }
        // 'wait': short of samples that may still come; collect more and agree again.
      }
      const t1 = Date.now();
      this.state = 'stepping';
      this.book.inStep = mine.map((h) => h.lease);
      const batch = await this.cellBatch(world, mine, step.width, step.seq);
      const tData = Date.now();
      if (batch.batch > batch.real) this.stats.paddedSteps++;
      const stepping = world.model.step(batch.slice, {
        lr: spec.lr, clip: spec.clip, weightDecay: spec.weightDecay, returnGrads: false, samples: world.size > 1 || batch.batch > batch.real ? step.samples : null,
      });
      // The step computes off the event loop: meanwhile, lease and read the next batch.
      if (this.leader) this.prefetch(spec.batch);
      let res: Awaited<typeof stepping>;
      try { res = await stepping; } finally { this.prefetching = false; }
      const t2 = Date.now();
      const c = this.counters;
      // This rank's own samples (a cell's leader holds its cell's; the others count none).
      c.steps++; c.samples += mine.length; c.tokens += mine.reduce((n, h) => n + sampleTokens(h.lease.ref.features), 0);
      c.stepSeconds += (t2 - t0) / 1000; c.dataSeconds += (tData - t0) / 1000; c.computeSeconds += (t2 - tData) / 1000;
      this.book.trained(mine);
      this.stepNo++;
      this.samplesTrained += step.samples;
      this.evalPending = true;
      const accept = step.evaluateAfter ? await this.evaluate(world, target) : null; // a collective when TP-sharded
      if (world.index === 0) {
        const m: StepMetrics = {
          rank, step: this.stepNo, loss: res.loss, gradNorm: res.gradNorm, ploss: [...res.ploss], acc: [...res.acc],
          samples: step.samples, tokens: step.tokens, stepMs: t2 - t1, waitMs: t1 - t0, fetchMs: tData - t1,
          acceptLength: accept, at: Date.now(), dp: this.epoch.partitions, epoch: this.epoch.epoch,
        };
        // Reported before the checkpoint: a step lost to a crash is reported again when it is
        // retrained (the run keeps the last report of each step), and none goes unreported.
        this.publishStep(m);
      }
      if (step.checkpointAfter) await this.checkpointAndAck(world);
    }
  }

  /** Asks the queue how much of the budget is finished; true when nothing is left. */
  private async queueFinished(): Promise<boolean> {
    const { bus } = this.o;
    let q: Awaited<ReturnType<QueueClient['status']>>;
    // The queue may be failing over (its host gone: a role lease to expire, the ledger to
    // rebuild once JetStream has re-elected): wait for it, as credit does, rather than die and
    // spend one of this rank's restarts on the queue's absence.
    for (;;) {
      try { q = await new QueueClient(bus).status({ timeoutMs: 5000, retries: 5 }); break; } catch (e) {
        if (!(e instanceof DraftwireError) || !e.retryable || this.stopped) throw e;
        this.log.warn('queue status failed; retrying', { error: e.message });
      }
    }
    this.learnBudget(q.budget);
    this.outstanding = this.budget - q.consumed - q.dead;
    return this.outstanding <= 0;
  }

  /** The queue's budget, once it knows one (an external input closed); the spec's until then. */
  private learnBudget(b: number | null | undefined): void {
    if (typeof b === 'number' && Number.isSafeInteger(b) && b >= 0) this.budget = b;
  }

  private publishStep(m: StepMetrics): void {
    this.lastMetrics = m;
    publish.metrics(this.o.bus, m);
    this.o.onStep?.(m);
  }

  /**
   * Accept length of the current weights, measured by world rank 0 (null on the others). Every
   * rank calls it: gathering a TP-sharded model's weights is a collective.
   */
  private async evaluate(world: World, lazy: LazyTarget): Promise<number | null> {
    const { spec } = this.o;
    this.evalPending = false;
    const opts = { maxNew: evalMaxNew(spec) };
    if (world.size === 1) return (await acceptLength(world.model, await lazy.get(), evalPrompts(spec), opts)).acceptLength;
    const weights = (await world.state(this.stepNo, this.samplesTrained)).weights;
    if (world.index !== 0) return null;
    const copy = DraftModel.create(spec.draft, { ...this.frozen, ...weights }, { threads: spec.threads });
    try { return (await acceptLength(copy, await lazy.get(), evalPrompts(spec), opts)).acceptLength; } finally { copy.close(); }
  }

  /**
   * This rank's part of its cell's step: the leader's samples (shared as refs with the cell's
   * TP/SP ranks, which read the features themselves), padded to `width` with fully-masked
   * samples, and the SP slice of it.
   */
  private async cellBatch(world: World, mine: Held[], width: number, seq: number): Promise<{ slice: SampleBatch; batch: number; real: number }> {
    const { spec, store } = this.o;
    let tensors = mine.map((h) => h.tensors!);
    if (world.cellSize > 1) {
      const shared = await world.shareInCell(this.leader ? { refs: mine.map((h) => h.lease.ref) } : null);
      const refs = (shared.refs ?? []) as SampleRef[];
      if (!this.leader) tensors = await Promise.all(refs.map((r) => store.get(validateSampleRef(r), { names: FEATURES })));
    }
    // Handed over as read: the addon stacks the samples (and takes this rank's SP slice) off
    // the event loop, in the one copy between the store's read and the step.
    const slice = batchOfSamples(tensors, seq, spec.draft.hidden, width - tensors.length);
    return { slice, batch: width, real: tensors.length };
  }

  /** The world checkpoint (trainer/world-checkpoint.ts), a collective: all ranks call it in the same round. */
  private async checkpointAndAck(world: World): Promise<void> {
    if (!this.ckpt.due(world)) return;
    this.state = 'checkpointing';
    this.train = await this.ckpt.commit(world, { step: this.stepNo, epoch: this.epoch.epoch, samples: this.samplesTrained });
  }

  /**
   * A collective failed: the world's state is unknown. Back to the latest committed checkpoint
   * (trainer/world-checkpoint.ts), then re-form under the epoch the coordinator makes.
   */
  private async recover(e: Error): Promise<void> {
    this.state = 'recovering';
    this.stats.regroups++;
    this.log.warn('collective group failed; reverting to the latest checkpoint and regrouping', { epoch: this.epoch.epoch, error: e.message });
    this.train = await this.ckpt.revert(this.epoch.epoch, this.o.rank);
    this.stepNo = this.train.step;
    this.samplesTrained = this.train.samples;
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
    (this.beats ??= this.o.heartbeats ?? new HeartbeatPublisher(bus)).rank(rank, {
      pid: process.pid, node: this.o.node ?? null, step: this.stepNo, state: this.state, held: this.book.held.size + this.book.window.length,
      epoch: this.epoch.epoch, index: this.index, dp: this.epoch.partitions,
      counters: { ...this.counters, fetchedBytes: this.o.fetchedBytes?.() ?? 0 },
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
    this.epochSub = listen(bus, 'ctl.epoch', (e) => {
      // A replayed, late or repeated announcement (not newer than this rank's epoch) is ignored.
      const newer = newerEpochAnnounced(e, this.epoch.epoch);
      if (newer === null) return;
      this.announced = Math.max(this.announced, newer);
      this.newerEpochSeen = true;
      // A world still forming for the old epoch will never complete: its members move on.
      this.forming?.abort(`epoch ${newer} superseded epoch ${this.epoch.epoch} while its world was forming`);
      setTimeout(() => this.wake?.(), 20);
    });
  }

  /** Waits for an epoch >= minEpoch; subscribes to its partition if this rank is a member. */
  private async joinEpoch(minEpoch: number): Promise<boolean> {
    const { bus, spec, rank } = this.o;
    const kv = await bus.kv(bus.subjects.kvBucket);
    for (let i = 0; ; i++) {
      const e = await kv.get<EpochInfo>(STORAGE.epochKey);
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
      // The log key stays `num` (the partition count): test/fault/chaos.test.ts and operators' greps read it.
      this.log.info('joined', { epoch: this.epoch.epoch, num: this.epoch.partitions, worldRank: this.index, partition: this.dpIdx, leases: 'from its cell leader', job: spec.job });
      return true;
    }
    this.sub = listen(bus, 'part', (m) => {
      if (m.consumer !== this.consumer) return;
      // Replays are dropped here: a lease already taken, or of an older epoch (LeaseBook.receive).
      if (this.book.receive(m.leases, this.epoch.epoch) > 0) {
        this.wake?.();
        if (this.prefetching) this.book.fetchNew().catch((e: unknown) => this.log.warn('prefetch read failed', { error: (e as Error).message }));
      }
    }, { params: [this.epoch.partitions, this.dpIdx] });
    await bus.flush();
    this.log.info('joined', { epoch: this.epoch.epoch, num: this.epoch.partitions, partition: this.dpIdx, job: spec.job });
    return true;
  }

  /**
   * The next batch while the current one computes: credit for what is short of `n` (the step's
   * own leases are not usable), and the leases read as they arrive. A failure is only logged:
   * the next collect asks again.
   */
  private prefetch(n: number): void {
    const { bus, spec } = this.o;
    this.prefetching = true;
    const max = n - this.book.usable().length;
    this.prefetched = (async () => {
      if (max > 0) {
        const r = await new QueueClient(bus).credit({ consumer: this.consumer, partition: [this.dpIdx, this.epoch.partitions], epoch: this.epoch.epoch, max, leaseMs: spec.leaseMs }, { retries: 0 });
        this.learnBudget(r.budget);
      }
      await this.book.fetchNew();
    })().catch((e: unknown) => this.log.debug('prefetch skipped', { error: (e as Error).message }));
  }

  /**
   * Gathers leases until `n` are held with their features read, or `until`; re-sends credit
   * while short. Returns true when the queue refused the credit as stale (a newer epoch).
   */
  private async collect(n: number, until: number): Promise<boolean> {
    const { bus, spec } = this.o;
    this.state = 'waiting';
    if (this.prefetched) { await this.prefetched; this.prefetched = null; }
    for (;;) {
      if (this.book.trainedSkip.size > 0) await this.ckpt.ackSkipped();
      await this.book.fetchNew();
      if (this.book.ready().length >= n || this.newerEpochSeen) return false;
      if (this.stopped) throw new DraftwireError('STOPPED', 'rank stopped', false);
      if (Date.now() >= until) return false;
      try {
        const r = await new QueueClient(bus).credit({
          consumer: this.consumer, partition: [this.dpIdx, this.epoch.partitions], epoch: this.epoch.epoch, max: Math.max(0, n - this.book.usable().length), leaseMs: spec.leaseMs,
        });
        this.learnBudget(r.budget);
        if (typeof r.consumed === 'number' && typeof r.dead === 'number') this.outstanding = this.budget - r.consumed - r.dead;
        // Nothing pending here and nothing more to be committed: this credit grants nothing, and
        // waiting for a full batch would only hold the world up (samples expired or released
        // later make the partition non-empty again, and the next reply says so).
        this.partitionExhausted = typeof r.committed === 'number' && r.committed >= this.budget && r.partitionPending === 0;
        // Leases granted before this reply are here already (one connection, in order): read
        // them, so that a short batch is short only of samples that do not exist.
        if (this.partitionExhausted) { await this.book.fetchNew(); return false; }
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
