// The world checkpoint and the ack protocol: how a world of ranks trains every sample of the
// job into the weights exactly once, across crashes, frozen peers and epoch changes.
//
// INVARIANT. A lease is acked only after a committed checkpoint holds its sample (names it in
// `trained` and its weights include it); and a sample a committed checkpoint holds is never
// trained again. Hence the committed weights hold each acked sample once, and a sample the
// queue considers finished is in them.
//
// WHY IT HOLDS.
// - Commit (commit()): every rank writes its window part (the leases it trained since the
//   last checkpoint, and its skip list), barrier; world rank 0 gathers the parts, writes the
//   weights, AdamW state and the manifest naming every part, and commits it by one rename
//   (src/job/checkpoint.ts); barrier: now every rank knows the commit is durable, and only
//   then does each cell's leader ack its own leases (they were renewed until here). A crash
//   before the commit loses only unacked steps: their leases expire, are re-leased and
//   retrained from the previous checkpoint's weights. A crash after it loses only acks.
// - Lost acks (ackAll()): an ack refused because the lease is gone (expired, fenced by a newer
//   epoch) puts the sample on the skip list; its next lease is acked without training
//   (ackSkipped()). The skip list is itself written into the next checkpoint's parts, and a
//   world that forms acks the latest manifest's window and adopts its `trained` list
//   (ackCommitted()), so a lost ack survives the death of the rank that lost it.
// - Failed collective (revert()): the world's state is unknown (a peer died or froze between
//   barriers). The rank goes back to the latest committed checkpoint: its trained leases that
//   checkpoint holds are acked, the others released (retrained by whoever leases them next),
//   its held leases released; then it asks the coordinator for a new epoch and re-forms. A
//   zombie writer of an older epoch cannot replace a newer manifest (writeRankCheckpoint
//   refuses it), so the job never rolls back.
// - Acks and releases are idempotent by key (`ack:<leaseId>`, `release:<leaseId>`): a retried
//   or replayed one changes nothing.
import type { Bus } from '../src/bus/bus.ts';
import { CoordinatorClient, QueueClient } from '../src/bus/clients.ts';
import { loadWeightsFile, type CheckpointLease } from '../src/job/checkpoint.ts';
import type { CheckpointStore } from '../src/job/checkpoint-store.ts';
import { DraftwireError, LeaseExpiredError, StaleEpochError } from '../src/errors.ts';
import { failpoint } from '../src/failpoints.ts';
import type { JobSpec } from '../src/job/spec.ts';
import type { Logger } from '../src/log.ts';
import type { LeaseBook } from './lease-book.ts';
import { initialState, type TrainState, type World } from './world.ts';

export interface CheckpointStats { checkpoints: number; skippedAcks: number; staleAcks: number }

export interface WorldCheckpointOptions {
  spec: JobSpec;
  bus: Bus;
  book: LeaseBook;
  log: Logger;
  stats: CheckpointStats;
  /** The frozen draft-to-target vocabulary map, written with the weights. */
  d2t: Int32Array;
  /** Where the world's checkpoints are committed (the run directory, or the job's JetStream). */
  checkpoints: CheckpointStore;
  /** Called after every committed checkpoint, before its leases are acked. */
  onCheckpoint?: (step: number) => void;
}

/** Where the world stands when it checkpoints. */
export interface CheckpointAt { step: number; epoch: number; samples: number }

export class WorldCheckpoint {
  constructor(private readonly o: WorldCheckpointOptions) {}

  /** False when there is nothing to commit (a world of one rank with no trained, unacked sample). */
  due(world: World): boolean {
    const { book } = this.o;
    return !(world.size === 1 && book.window.length === 0 && book.trainedSkip.size === 0);
  }

  /**
   * Commits a checkpoint of the world's state holding every rank's trained leases, then acks
   * this rank's. A collective on a world of several ranks (all call it in the same round).
   * Returns the committed state.
   */
  async commit(world: World, at: CheckpointAt): Promise<TrainState> {
    const { spec, book, stats } = this.o;
    const win: CheckpointLease[] = book.window.map((l) => ({ leaseId: l.leaseId, sampleId: l.sampleId, epoch: l.epoch }));
    let all: CheckpointLease[];
    if (world.size === 1) {
      // Samples already in a checkpoint whose acks failed stay recorded as trained.
      all = [...win, ...[...book.trainedSkip].map((sampleId) => ({ leaseId: '', sampleId, epoch: 0 }))];
    } else {
      await this.o.checkpoints.writeWindowPart(at.step, at.epoch, world.index, { window: win, skipped: [...book.trainedSkip] });
      await world.barrier();
      all = world.index === 0 ? await this.o.checkpoints.takeWindowParts(at.step, at.epoch, world.size) : [];
    }
    const state = await world.state(at.step, at.samples);
    if (world.index === 0) await this.o.checkpoints.writeRankCheckpoint(state, this.o.d2t, at.step, all, at.epoch, at.samples);
    await world.barrier(); // committed: every rank may ack now
    stats.checkpoints++;
    this.o.onCheckpoint?.(at.step);
    failpoint('rank.before-ack');
    const window = book.window;
    await this.ackAll(win);
    if (book.window === window) book.window = [];
    return state;
  }

  /**
   * A world just formed (on a cell's leader): every sample the committed checkpoint holds is
   * trained, never train it again. Its leases are acked (idempotent; also those of a rank that
   * died after the commit): what is acked leaves the skip list, what was re-granted meanwhile
   * stays on it.
   */
  async ackCommitted(): Promise<void> {
    const m = await this.o.checkpoints.latestManifest();
    if (!m) return;
    for (const id of m.trained) this.o.book.trainedSkip.add(id);
    await this.ackAll(m.window);
  }

  /**
   * A collective failed: back to the latest committed checkpoint; leases trained since then
   * are acked if it holds them and released otherwise; ask for a new epoch. Returns the state
   * to re-form with.
   */
  async revert(epoch: number, rank: number): Promise<TrainState> {
    const { spec, bus, book } = this.o;
    const init = await loadWeightsFile(spec.initWeights, spec.draft);
    const ck = await this.o.checkpoints.loadRankCheckpoint(init);
    const inCk = new Set(ck?.manifest.trained ?? []);
    const trained = book.window.filter((l) => inCk.has(l.sampleId));
    const lost = book.window.filter((l) => !inCk.has(l.sampleId));
    book.window = [];
    book.restore(lost);
    for (const id of inCk) book.trainedSkip.add(id);
    await this.ackAll(trained);
    await book.releaseHeld();
    const state = ck ? { ...initialState(spec, ck.weights), optimizer: ck.optimizer, step: ck.manifest.step, samples: ck.manifest.samples } : initialState(spec, init);
    await new CoordinatorClient(bus).regroup({ fromEpoch: epoch, rank });
    return state;
  }

  /**
   * Acks leases of trained samples (a step's worth in one queue.acks request); a lease that is
   * gone puts its sample on the skip list.
   */
  async ackAll(leases: CheckpointLease[]): Promise<void> {
    const { log, stats, book } = this.o;
    const live = leases.filter((l) => l.leaseId !== '');
    for (const [i, r] of (await this.ackLeases(live)).entries()) {
      const l = live[i]!;
      if (!(r instanceof Error)) { book.trainedSkip.delete(l.sampleId); continue; }
      // A stale ack is refused by the queue (fencing), or lost with it; the sample is trained
      // already, so its next lease is acked without training it again.
      stats.staleAcks++;
      book.trainedSkip.add(l.sampleId);
      log.warn('ack refused or lost; the sample will be acked on its next lease', { leaseId: l.leaseId, sampleId: l.sampleId, error: r.message });
    }
  }

  /** Held leases of samples already trained into a checkpoint: ack them, do not train again. */
  async ackSkipped(): Promise<void> {
    const { log, stats, book } = this.o;
    const skip = [...book.held.values()].map((h) => h.lease).filter((l) => book.trainedSkip.has(l.sampleId));
    for (const l of skip) book.held.delete(l.leaseId);
    for (const [i, r] of (await this.ackLeases(skip)).entries()) {
      if (r instanceof Error) continue; // gone again: acked on the next lease
      const l = skip[i]!;
      book.trainedSkip.delete(l.sampleId);
      stats.skippedAcks++;
      log.info('acked a re-leased sample that the checkpoint already holds', { sampleId: l.sampleId, leaseId: l.leaseId });
    }
  }

  /**
   * Per lease: acked, or the LeaseExpiredError/StaleEpochError that refused it, or (for all)
   * the retryable error of a queue that did not answer (failing over): the samples are in the
   * committed checkpoint, so a lost ack is as good as a refused one (acked on the next lease).
   * Anything else throws.
   */
  private async ackLeases(leases: { leaseId: string; epoch: number }[]): Promise<(true | Error)[]> {
    if (leases.length === 0) return [];
    let res: Awaited<ReturnType<QueueClient['ackMany']>>;
    try { res = await new QueueClient(this.o.bus).ackMany(leases); } catch (e) {
      if (!(e instanceof DraftwireError) || !e.retryable) throw e;
      return leases.map(() => e);
    }
    return res.map((r) => {
      if (!(r instanceof Error)) return true;
      if (!(r instanceof LeaseExpiredError || r instanceof StaleEpochError)) throw r;
      return r;
    });
  }
}
