// The leases one rank holds, as the queue granted them (actors/rank.ts drives it): the ones
// not trained yet (with their features once read), the window of trained ones waiting for
// their checkpoint, and the skip list of samples a committed checkpoint holds whose ack did not
// get through (their next lease is acked, never trained). Every queue call about a lease it
// already holds goes through here; credit and the epoch stay with the rank.
import type { Bus } from '../src/bus/bus.ts';
import type { CheckpointLease } from '../src/job/checkpoint.ts';
import { LeaseExpiredError, StaleEpochError } from '../src/errors.ts';
import type { Lease } from '../src/ledger/ledger.ts';
import type { Logger } from '../src/log.ts';
import type { FeatureStore } from '../src/store/feature-store.ts';
import type { Tensor } from '../src/tensor.ts';

export const FEATURES = ['ids', 'aux', 'last', 'mask'] as const;

export interface Held { lease: Lease; tensors: Record<string, Tensor> | null }

export interface LeaseStats { skippedAcks: number; staleAcks: number }

export class LeaseBook {
  /** Leases received and not yet trained, by leaseId (one per sample id). */
  readonly held = new Map<string, Held>();
  /** Leases trained since the last checkpoint: renewed until the checkpoint is durable, then acked. */
  window: Lease[] = [];
  /** Leases of the step being computed (between the agreement and the window). */
  inStep: Lease[] = [];
  /** Samples trained into a committed checkpoint whose ack did not get through: ack on re-lease, never retrain. */
  readonly trainedSkip = new Set<string>();

  constructor(private readonly o: { bus: Bus; store: FeatureStore; log: Logger; stats: LeaseStats }) {}

  /** New leases from the queue. A newer lease of a sample supersedes an older one (the older expired). */
  receive(leases: Lease[]): void {
    for (const l of leases) {
      for (const [id, h] of this.held) if (h.lease.sampleId === l.sampleId) this.held.delete(id);
      this.held.set(l.leaseId, { lease: l, tensors: null });
    }
  }

  /**
   * Held leases this rank may train (read or not): not of a sample trained since the last
   * checkpoint. A sample re-granted while its trained lease awaits the checkpoint (the old
   * lease expired) is acked through the skip list once that checkpoint commits, never trained
   * twice.
   */
  usable(): Held[] {
    const trained = new Set([...this.window, ...this.inStep].map((l) => l.sampleId));
    return [...this.held.values()].filter((h) => !trained.has(h.lease.sampleId));
  }

  /** Usable leases whose features were read, oldest first. */
  ready(): Held[] { return this.usable().filter((h) => h.tensors !== null); }

  /** The step's leases were trained: into the window, until their checkpoint. */
  trained(step: Held[]): void {
    for (const h of step) { if (this.held.get(h.lease.leaseId) === h) this.held.delete(h.lease.leaseId); this.window.push(h.lease); }
    this.inStep = [];
  }

  /** Acks leases of trained samples; a lease that is gone puts its sample on the skip list. */
  async ackAll(leases: CheckpointLease[]): Promise<void> {
    const { bus, log, stats } = this.o;
    await Promise.all(leases.filter((l) => l.leaseId !== '').map(async (l) => {
      try {
        await bus.request(bus.subjects.queue.ack, { leaseId: l.leaseId, epoch: l.epoch }, { idempotencyKey: `ack:${l.leaseId}`, retries: 10, timeoutMs: 3000 });
        this.trainedSkip.delete(l.sampleId);
      } catch (e) {
        if (!(e instanceof LeaseExpiredError || e instanceof StaleEpochError)) throw e;
        // A stale ack is refused by the queue (fencing); the sample is trained already, so its
        // next lease is acked without training it again.
        stats.staleAcks++;
        this.trainedSkip.add(l.sampleId);
        log.warn('ack refused (lease gone); the sample will be acked on its next lease', { leaseId: l.leaseId, sampleId: l.sampleId, error: (e as Error).message });
      }
    }));
  }

  /** Leases of samples already trained into a checkpoint: ack them, do not train again. */
  async ackSkipped(): Promise<void> {
    const { bus, log, stats } = this.o;
    for (const { lease: l } of [...this.held.values()]) {
      if (!this.trainedSkip.has(l.sampleId)) continue;
      this.held.delete(l.leaseId);
      try {
        await bus.request(bus.subjects.queue.ack, { leaseId: l.leaseId, epoch: l.epoch }, { idempotencyKey: `ack:${l.leaseId}`, retries: 10, timeoutMs: 3000 });
        this.trainedSkip.delete(l.sampleId);
        stats.skippedAcks++;
        log.info('acked a re-leased sample that the checkpoint already holds', { sampleId: l.sampleId, leaseId: l.leaseId });
      } catch (e) {
        if (!(e instanceof LeaseExpiredError || e instanceof StaleEpochError)) throw e;
      }
    }
  }

  /** Gives back every lease not trained. */
  async releaseHeld(): Promise<void> {
    const { bus, log } = this.o;
    const held = [...this.held.values()].map((h) => h.lease);
    this.held.clear();
    await Promise.all(held.map((l) => bus.request(bus.subjects.queue.release, { leaseId: l.leaseId, epoch: l.epoch }, { idempotencyKey: `release:${l.leaseId}`, retries: 5, timeoutMs: 3000 })
      .catch((e: unknown) => log.warn('release failed', { leaseId: l.leaseId, error: (e as Error).message }))));
  }

  /** Renews held and trained-but-unacked leases of `epoch` (an older epoch's cannot be: they are acked or released soon). */
  renew(epoch: number): void {
    const { bus, log } = this.o;
    for (const l of [...[...this.held.values()].map((h) => h.lease), ...this.window]) {
      if (l.epoch !== epoch) continue;
      bus.request(bus.subjects.queue.renew, { leaseId: l.leaseId, epoch: l.epoch }, { timeoutMs: 2000, retries: 1 }).catch((e: unknown) => {
        if (e instanceof LeaseExpiredError && this.held.get(l.leaseId)?.lease === l) this.held.delete(l.leaseId); // re-leased or gone
        // Refused as stale: the epoch moved on; the lease is acked or released at the reshard.
        if (e instanceof StaleEpochError) log.debug('lease renewal refused: newer epoch', { leaseId: l.leaseId });
        else log.warn('lease renewal failed', { leaseId: l.leaseId, error: (e as Error).message });
      });
    }
  }

  /** Reads the features of leases not read yet; one that cannot be read is failed (dead-lettered) and dropped. */
  async fetchNew(): Promise<void> {
    const { bus, store, log } = this.o;
    for (const h of [...this.held.values()]) {
      if (h.tensors || this.held.get(h.lease.leaseId) !== h) continue;
      const l = h.lease;
      try {
        h.tensors = await store.get(l.ref, { names: FEATURES });
      } catch (e) {
        log.error('sample unreadable; failing its lease', { sampleId: l.sampleId, error: (e as Error).message });
        this.held.delete(l.leaseId);
        await bus.request(bus.subjects.queue.fail, { leaseId: l.leaseId, epoch: l.epoch, retryable: false, reason: (e as Error).message }, { idempotencyKey: `fail:${l.leaseId}`, retries: 5 });
      }
    }
  }
}
