// The leases one rank holds, as the queue granted them (trainer/rank-worker.ts drives it): the
// ones not trained yet (with their features once read), the window of trained ones waiting
// for their checkpoint, and the skip list of samples a committed checkpoint holds whose ack
// did not get through (their next lease is acked, never trained). The upkeep of held leases
// (read, renew, fail, release) goes through here; acks are the checkpoint protocol's
// (trainer/world-checkpoint.ts); credit and the epoch stay with the rank.
//
// Replays are harmless: a lease push is accepted once per leaseId (a replayed or duplicated
// push of a lease held, trained, acked, released or failed is ignored, so a sample is never
// trained twice from one lease), and never for an epoch older than the rank's.
import type { Bus } from '../src/bus/bus.ts';
import { QueueClient } from '../src/bus/clients.ts';
import { DraftwireError, LeaseExpiredError, StaleEpochError } from '../src/errors.ts';
import type { Lease } from '../src/ledger/ledger.ts';
import type { Logger } from '../src/log.ts';
import type { FeatureStore } from '../src/store/feature-store.ts';
import type { Tensor } from '../src/tensor.ts';

export const FEATURES = ['ids', 'aux', 'last', 'mask'] as const;
/** Samples read at once (their reads overlap: a file's open and checks, an HTTP round trip). */
const FETCH_PARALLEL = 4;

export interface Held { lease: Lease; tensors: Record<string, Tensor> | null }

export class LeaseBook {
  /** Leases received and not yet trained, by leaseId (one per sample id). */
  readonly held = new Map<string, Held>();
  /** Leases trained since the last checkpoint: renewed until the checkpoint is durable, then acked. */
  window: Lease[] = [];
  /** Leases of the step being computed (between the agreement and the window). */
  inStep: Lease[] = [];
  /** Samples trained into a committed checkpoint whose ack did not get through: ack on re-lease, never retrain. */
  readonly trainedSkip = new Set<string>();

  /** Every leaseId ever received: a lease is taken once, whatever became of it since. */
  private readonly seen = new Set<string>();

  constructor(private readonly o: { bus: Bus; store: FeatureStore; log: Logger }) {}

  /**
   * New leases from the queue for a rank at `epoch`; returns how many were taken. A newer lease
   * of a sample supersedes an older one (the older expired). A lease seen before (a replay, a
   * duplicate) or of an older epoch (its credit was for a world that is gone) is ignored: an
   * ignored lease that was real expires in the queue and is granted again.
   */
  receive(leases: Lease[], epoch: number): number {
    let taken = 0;
    for (const l of leases) {
      if (typeof l?.leaseId !== 'string' || this.seen.has(l.leaseId) || !(l.epoch >= epoch)) continue;
      this.seen.add(l.leaseId);
      for (const [id, h] of this.held) if (h.lease.sampleId === l.sampleId) this.held.delete(id);
      this.held.set(l.leaseId, { lease: l, tensors: null });
      taken++;
    }
    return taken;
  }

  /** Puts trained leases whose step was lost (not in the committed checkpoint) back among the held, unread. */
  restore(leases: Lease[]): void {
    for (const l of leases) this.held.set(l.leaseId, { lease: l, tensors: null });
  }

  /**
   * Held leases this rank may train (read or not): not of a sample trained since the last
   * checkpoint, nor of one a committed checkpoint holds (the skip list: acked without
   * training, WorldCheckpoint.ackSkipped). A sample re-granted while its trained lease awaits
   * the checkpoint (the old lease expired) is acked through the skip list once that
   * checkpoint commits, never trained twice.
   */
  usable(): Held[] {
    const trained = new Set([...this.window, ...this.inStep].map((l) => l.sampleId));
    return [...this.held.values()].filter((h) => !trained.has(h.lease.sampleId) && !this.trainedSkip.has(h.lease.sampleId));
  }

  /** Usable leases whose features were read, oldest first. */
  ready(): Held[] { return this.usable().filter((h) => h.tensors !== null); }

  /** The step's leases were trained: into the window, until their checkpoint. */
  trained(step: Held[]): void {
    for (const h of step) { if (this.held.get(h.lease.leaseId) === h) this.held.delete(h.lease.leaseId); this.window.push(h.lease); }
    this.inStep = [];
  }

  /** Gives back every lease not trained. */
  async releaseHeld(): Promise<void> {
    const { bus, log } = this.o;
    const queue = new QueueClient(bus);
    const held = [...this.held.values()].map((h) => h.lease);
    this.held.clear();
    await Promise.all(held.map((l) => queue.release(l)
      .catch((e: unknown) => log.warn('release failed', { leaseId: l.leaseId, error: (e as Error).message }))));
  }

  /** Renews held and trained-but-unacked leases of `epoch` (an older epoch's cannot be: they are acked or released soon). */
  renew(epoch: number): void {
    const { bus, log } = this.o;
    const queue = new QueueClient(bus);
    for (const l of [...[...this.held.values()].map((h) => h.lease), ...this.window]) {
      if (l.epoch !== epoch) continue;
      queue.renew(l).catch((e: unknown) => {
        if (e instanceof LeaseExpiredError && this.held.get(l.leaseId)?.lease === l) this.held.delete(l.leaseId); // re-leased or gone
        // Refused as stale: the epoch moved on; the lease is acked or released at the reshard.
        if (e instanceof StaleEpochError) log.debug('lease renewal refused: newer epoch', { leaseId: l.leaseId });
        else log.warn('lease renewal failed', { leaseId: l.leaseId, error: (e as Error).message });
      });
    }
  }

  /**
   * Reads the features of leases not read yet, up to FETCH_PARALLEL at a time; one that cannot
   * be read is failed (dead-lettered) and dropped. One read pass at a time: a call while one
   * runs waits for it, then reads what arrived since (the rank's prefetch during a step and its
   * collect after it may both ask).
   */
  async fetchNew(): Promise<void> {
    while (this.fetching) await this.fetching;
    this.fetching = this.readUnread().finally(() => { this.fetching = null; });
    await this.fetching;
  }

  private fetching: Promise<void> | null = null;

  private async readUnread(): Promise<void> {
    // A skip-listed sample is acked, never trained: reading it would only risk failing (and
    // dead-lettering) a sample the model already holds, its store's host gone.
    const todo = [...this.held.values()].filter((h) => !h.tensors && !this.trainedSkip.has(h.lease.sampleId));
    let next = 0;
    await Promise.all(Array.from({ length: Math.min(FETCH_PARALLEL, todo.length) }, async () => {
      while (next < todo.length) await this.read(todo[next++]!);
    }));
  }

  private async read(h: Held): Promise<void> {
    const { bus, store, log } = this.o;
    if (h.tensors || this.held.get(h.lease.leaseId) !== h) return;
    const l = h.lease;
    try {
      h.tensors = await store.get(l.ref, { names: FEATURES });
    } catch (e) {
      log.error('sample unreadable; failing its lease', { sampleId: l.sampleId, error: (e as Error).message });
      this.held.delete(l.leaseId);
      try {
        await new QueueClient(bus).fail({ leaseId: l.leaseId, epoch: l.epoch, retryable: false, reason: (e as Error).message });
      } catch (f) {
        // The queue failing over: the lease, no longer renewed, expires and is granted again
        // (and failed then, if still unreadable). Not a reason for this rank to die.
        if (!(f instanceof DraftwireError) || !f.retryable) throw f;
        log.warn('failing the lease did not get through; it will expire and come back', { sampleId: l.sampleId, error: f.message });
      }
    }
  }
}
