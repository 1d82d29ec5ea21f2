// The lease ledger (DESIGN.md §2 "Lease protocol") as a pure, deterministic state machine:
// no timers, no I/O, time passed in as `now` (ms). The queue actor is a thin adapter: it
// calls a method, writes the returned events to a JetStream stream, then replies; after a
// restart it rebuilds the ledger with `LeaseLedger.replay(events)`.
//
// A sample is  pending -> leased -> consumed,  or -> dead (dead letter).
//
// Rules (decided here, relied on by the actors):
// - Leases are granted only under the current epoch, only for pending samples with
//   dpPartition(sampleId, num) == index. The partition is computed at grant time, never
//   stored with the sample, so the same pending pool redistributes when num changes.
// - get/renew under an epoch other than the current one: StaleEpochError (detail.ahead is
//   true when the caller's epoch is newer than the ledger's: retry once the queue has
//   caught up). A get whose `num` differs from the num declared for the epoch: StaleEpochError.
// - ack/release/fail must echo the lease's own (leaseId, epoch). They are accepted while the
//   lease is live even after the epoch has moved on (a rank finishes and acks the step in
//   flight during a reshard); renew is not (an old-epoch lease can't be extended, it must be
//   finished or it expires).
// - A lease is live until acked, released, failed, or reclaimed by expire(now). Deadlines
//   are enforced only by expire(now) (the actor calls it on a timer): an ack arriving after
//   the deadline but before the lease was reclaimed still counts (nobody else holds the
//   sample). An ack/release/fail/renew of a lease that is no longer live (reclaimed,
//   re-leased, unknown) is LeaseExpiredError, except that repeating the operation that ended
//   it (a second ack of an acked lease, e.g. from another rank of the same step) succeeds
//   with status 'duplicate' and changes nothing.
// - release: back to pending, the delivery is not charged. fail(retryable): back to pending,
//   charged. fail(non-retryable): dead. expire: back to pending, charged. A sample whose
//   charged deliveries reach maxDeliveries goes dead.
// - put is idempotent on (sampleId, generation). A newer generation replaces the ref of a
//   pending or leased sample (a live lease stays valid; the next lease gets the new ref); a
//   newer generation of a consumed or dead sample is refused; an older one is
//   StaleGenerationError.
// - Every mutating call takes an idempotency `key`: a repeated key returns the first answer
//   (or throws the first error) without mutating again. Answers of calls that logged events
//   are rebuilt by replay; cached errors are not (a retried request after a restart is
//   evaluated afresh, which never grants a second lease).
//
// The event and result types are in ledger-events.ts and the log audit in ledger-audit.ts;
// both are re-exported here, so imports of '…/src/ledger.ts' stay as they were.
import { DraftwireError, InputClosedError, InvalidArgumentError, LeaseExpiredError, StaleEpochError, StaleGenerationError } from '../errors.ts';
import { dpPartition, hash64, jumpHash } from './partition.ts';
import { validateSampleRef, type SampleRef } from '../wire/sampleref.ts';
import type {
  Applied, CallOpts, CloseResult, EndResult, EpochResult, ExpireResult, ExpiredLease, GetOpts, GetResult, InputCloseReason, InputResult, InputState, Lease, LeaseGrant,
  LedgerEvent, LedgerOptions, LedgerStats, NewEvent, PutResult, RenewResult, SampleState, SampleStatus,
} from './events.ts';

export type {
  SampleState, Lease, LeaseGrant, ExpiredLease, LedgerEvent, LedgerEventType, Applied, PutResult, GetResult,
  EndResult, RenewResult, ExpireResult, EpochResult, InputResult, CloseResult, InputState, InputCloseReason, LedgerOptions, CallOpts, GetOpts, SampleStatus, LedgerStats,
} from './events.ts';
export { auditEvents, type AuditReport } from './audit.ts';

interface LiveLease {
  leaseId: string;
  sampleId: string;
  epoch: number;
  consumer: string;
  deadline: number;
  delivery: number;
}

interface Entry {
  sampleId: string;
  h64: bigint;
  ref: SampleRef;
  state: SampleState;
  deliveries: number;
  lease: LiveLease | null;
  /** Partition index cache: index under `pNum`. */
  pIdx: number;
  pNum: number;
}

type EndKind = 'acked' | 'released' | 'failed' | 'expired';
type Op = 'put' | 'get' | 'ack' | 'release' | 'fail' | 'renew' | 'epoch' | 'input' | 'close';
type CachedValue = Record<string, unknown>;

function checkKey(key: unknown): string {
  if (typeof key !== 'string' || key.length === 0 || key.length > 256) throw new InvalidArgumentError(`idempotency key must be a non-empty string of at most 256 characters, got ${typeof key === 'string' ? JSON.stringify(key.slice(0, 40)) : typeof key}`);
  return key;
}
function checkTime(now: unknown, what = 'now'): number {
  if (typeof now !== 'number' || !Number.isFinite(now)) throw new InvalidArgumentError(`${what} must be a finite number of ms, got ${String(now)}`);
  return now;
}
function checkUint(x: unknown, what: string): number {
  if (typeof x !== 'number' || !Number.isSafeInteger(x) || x < 0) throw new InvalidArgumentError(`${what} must be a non-negative integer, got ${String(x)}`);
  return x;
}
function checkString(x: unknown, what: string): string {
  if (typeof x !== 'string' || x.length === 0 || x.length > 256) throw new InvalidArgumentError(`${what} must be a non-empty string of at most 256 characters`);
  return x;
}

export class LeaseLedger {
  readonly maxDeliveries: number;
  readonly leaseMs: number;
  private readonly keyCacheSize: number;
  private readonly endedCacheSize: number;
  private readonly leasePrefix: string;

  private epoch: number;
  private epochNum: number | null = null;
  private seq = 0;
  private leaseCounter = 0;
  private readonly samples = new Map<string, Entry>();
  /** Pending sample ids, in the order they became pending. */
  private readonly pending = new Set<string>();
  /** Pending ids by partition for one `num`, same order; rebuilt when num changes. */
  private partIdx: { num: number; sets: Set<string>[] } | null = null;
  private readonly leases = new Map<string, LiveLease>();
  private readonly ended = new Map<string, { sampleId: string; epoch: number; how: EndKind }>();
  private readonly keyResults = new Map<string, { op: Op; value: CachedValue }>();
  private readonly keyErrors = new Map<string, { op: Op; error: DraftwireError }>();
  /** Producers of the input by id: open, or ended (their end declared). */
  private readonly producers = new Map<string, 'open' | 'ended'>();
  private closed: { reason: InputCloseReason; samples: number } | null = null;
  /** Bytes of the samples not finished (pending or leased): what the store holds for the ledger. */
  private live = 0;
  private counts = { consumed: 0, dead: 0, leasesGranted: 0, acks: 0, releases: 0, fails: 0, expired: 0, renewals: 0 };

  constructor(opts: LedgerOptions = {}) {
    this.maxDeliveries = opts.maxDeliveries ?? 5;
    this.leaseMs = opts.leaseMs ?? 60_000;
    this.epoch = opts.epoch ?? 0;
    this.keyCacheSize = opts.keyCacheSize ?? 100_000;
    this.endedCacheSize = opts.endedLeaseCacheSize ?? 1_000_000;
    this.leasePrefix = opts.leaseIdPrefix ?? 'L';
    if (!Number.isInteger(this.maxDeliveries) || this.maxDeliveries < 1) throw new InvalidArgumentError(`maxDeliveries must be an integer >= 1, got ${this.maxDeliveries}`);
    if (!(this.leaseMs > 0)) throw new InvalidArgumentError(`leaseMs must be > 0, got ${this.leaseMs}`);
    checkUint(this.epoch, 'epoch');
    if (!Number.isInteger(this.keyCacheSize) || this.keyCacheSize < 1) throw new InvalidArgumentError('keyCacheSize must be a positive integer');
    if (!Number.isInteger(this.endedCacheSize) || this.endedCacheSize < 1) throw new InvalidArgumentError('endedLeaseCacheSize must be a positive integer');
  }

  /** A ledger rebuilt from a log (events in order, seq contiguous from 1). */
  static replay(events: Iterable<LedgerEvent>, opts: LedgerOptions = {}): LeaseLedger {
    const q = new LeaseLedger(opts);
    for (const ev of events) q.apply(ev);
    return q;
  }

  // ---------------------------------------------------------------- queries

  currentEpoch(): number { return this.epoch; }
  /** Partition count declared for the current epoch, or null. */
  currentNum(): number | null { return this.epochNum; }
  /** Number of the last applied event. */
  lastSeq(): number { return this.seq; }
  /** Pending samples (leasable). */
  depth(): number { return this.pending.size; }
  /** Live leases. */
  inFlight(): number { return this.leases.size; }

  stats(): LedgerStats {
    return {
      epoch: this.epoch, num: this.epochNum, seq: this.seq, samples: this.samples.size,
      pending: this.pending.size, leased: this.leases.size, ...this.counts,
    };
  }

  state(sampleId: string): SampleStatus | undefined {
    const e = this.samples.get(sampleId);
    if (!e) return undefined;
    const lease = e.lease ? { ...e.lease, sampleId: e.sampleId } : null;
    return { sampleId, state: e.state, generation: e.ref.generation, deliveries: e.deliveries, lease, ref: e.ref };
  }

  /** Pending sample ids in order (optionally those of one partition). */
  pendingIds(partition?: readonly [number, number]): string[] {
    if (!partition) return [...this.pending];
    const [index, num] = partition;
    return [...this.pending].filter((id) => dpPartition(id, num) === index);
  }

  /** How many samples of partition [index, num] are pending (the partition index, not a scan). */
  pendingCount(partition: readonly [number, number]): number {
    const [index, num] = partition;
    if (!Number.isInteger(num) || num < 1 || !Number.isInteger(index) || index < 0 || index >= num) throw new InvalidArgumentError(`partition [${String(index)}, ${String(num)}] is not [index, num] with 0 <= index < num`);
    return this.partitionSet(num)[index]!.size;
  }

  /** Bytes of the committed samples not consumed or dead yet (their refs' `bytes`). */
  liveBytes(): number { return this.live; }

  /** The input's producers and whether it closed. */
  inputState(): InputState {
    const open: string[] = [], ended: string[] = [];
    for (const [p, st] of this.producers) (st === 'open' ? open : ended).push(p);
    return { open, ended, closed: this.closed ? { ...this.closed } : null };
  }

  /** Live leases (without refs), in grant order. */
  liveLeases(): Omit<Lease, 'ref'>[] {
    return [...this.leases.values()].map((l) => ({ ...l }));
  }

  /** A canonical, JSON-able picture of the whole state (for equality checks after replay). */
  snapshot(): Record<string, unknown> {
    const samples = [...this.samples.values()].map((e) => ({
      sampleId: e.sampleId, state: e.state, generation: e.ref.generation, checksum: e.ref.checksum,
      deliveries: e.deliveries, lease: e.lease ? { ...e.lease } : null,
    }));
    return {
      epoch: this.epoch, num: this.epochNum, seq: this.seq, leaseCounter: this.leaseCounter,
      samples, pending: [...this.pending], leases: [...this.leases.keys()],
      ended: [...this.ended.entries()].map(([k, v]) => [k, v.sampleId, v.epoch, v.how]),
      counts: { ...this.counts },
      producers: [...this.producers.entries()], closed: this.closed,
    };
  }

  // ---------------------------------------------------------------- mutations

  /** Commits a sample ref (idempotent on sampleId + generation). */
  put(ref: SampleRef, o: CallOpts): PutResult {
    return this.run<PutResult>('put', o.key, () => {
      const now = checkTime(o.now);
      let r: SampleRef;
      try { r = validateSampleRef(ref); } catch (e) { throw new InvalidArgumentError(`put: ${(e as Error).message}`, { cause: e }); }
      const cur = this.samples.get(r.sampleId);
      const base = { sampleId: r.sampleId, generation: r.generation };
      if (cur) {
        const g = cur.ref.generation;
        if (r.generation === g) return { ...base, status: 'duplicate' as const, events: [] };
        if (r.generation < g) throw new StaleGenerationError(`put of sample "${r.sampleId}" generation ${r.generation}: the ledger already holds generation ${g}`, { detail: { sampleId: r.sampleId, generation: r.generation, current: g } });
        if (cur.state === 'consumed' || cur.state === 'dead') {
          throw new InvalidArgumentError(`put of sample "${r.sampleId}" generation ${r.generation}: the sample was already ${cur.state} at generation ${g}`, { detail: { sampleId: r.sampleId, state: cur.state } });
        }
      }
      if (!cur && this.closed) {
        throw new InputClosedError(`put of sample "${r.sampleId}": the job's input is closed (${closeWhy(this.closed)}); it takes no new samples`, { detail: { sampleId: r.sampleId, reason: this.closed.reason } });
      }
      const ev = this.emit({ type: 'put', key: o.key, at: now, ref: r, prevGeneration: cur ? cur.ref.generation : null });
      return { ...base, status: cur ? 'replaced' as const : 'added' as const, events: [ev] };
    });
  }

  /** Leases up to `max` pending samples of partition [index, num] to `consumer`. */
  get(max: number, o: GetOpts): GetResult {
    return this.run<GetResult>('get', o.key, () => {
      const now = checkTime(o.now);
      checkUint(max, 'max');
      const consumer = checkString(o.consumer, 'consumer');
      const epoch = checkUint(o.epoch, 'epoch');
      const part = o.partition;
      if (!Array.isArray(part) || part.length !== 2) throw new InvalidArgumentError('partition must be [index, num]');
      const [index, num] = part;
      if (!Number.isInteger(num) || num < 1 || !Number.isInteger(index) || index < 0 || index >= num) {
        throw new InvalidArgumentError(`partition [${String(index)}, ${String(num)}] is not [index, num] with 0 <= index < num`);
      }
      const leaseMs = o.leaseMs ?? this.leaseMs;
      if (!(typeof leaseMs === 'number' && leaseMs > 0 && Number.isFinite(leaseMs))) throw new InvalidArgumentError(`leaseMs must be > 0, got ${String(leaseMs)}`);
      this.checkGrantEpoch(epoch, num);
      const ids = this.partitionSet(num)[index]!;
      const grants: LeaseGrant[] = [];
      for (const id of ids) {
        if (grants.length >= max) break;
        const e = this.samples.get(id)!;
        grants.push({ leaseId: `${this.leasePrefix}${this.leaseCounter + grants.length + 1}`, sampleId: id, generation: e.ref.generation, deadline: now + leaseMs, delivery: e.deliveries + 1 });
      }
      if (grants.length === 0) return { leases: [], events: [] };
      const ev = this.emit({ type: 'lease', key: o.key, at: now, epoch, consumer, partition: [index, num], leases: grants });
      return { leases: this.leasesOf(ev as Extract<LedgerEvent, { type: 'lease' }>), events: [ev] };
    });
  }

  /** Marks the leased sample consumed. */
  ack(leaseId: string, epoch: number, o: CallOpts): EndResult {
    return this.run<EndResult>('ack', o.key, () => {
      const now = checkTime(o.now);
      const l = this.liveLease('ack', leaseId, epoch, 'acked');
      if ('duplicate' in l) return l.duplicate;
      const ev = this.emit({ type: 'ack', key: o.key, at: now, leaseId, sampleId: l.sampleId, epoch });
      return { leaseId, sampleId: l.sampleId, status: 'acked' as const, events: [ev] };
    });
  }

  /** Gives the sample back to pending without charging the delivery. */
  release(leaseId: string, epoch: number, o: CallOpts): EndResult {
    return this.run<EndResult>('release', o.key, () => {
      const now = checkTime(o.now);
      const l = this.liveLease('release', leaseId, epoch, 'released');
      if ('duplicate' in l) return l.duplicate;
      const ev = this.emit({ type: 'release', key: o.key, at: now, leaseId, sampleId: l.sampleId, epoch });
      return { leaseId, sampleId: l.sampleId, status: 'released' as const, events: [ev] };
    });
  }

  /** Processing failed: retryable -> pending (charged), else dead letter. */
  fail(leaseId: string, epoch: number, retryable: boolean, o: CallOpts & { reason?: string }): EndResult {
    return this.run<EndResult>('fail', o.key, () => {
      const now = checkTime(o.now);
      if (typeof retryable !== 'boolean') throw new InvalidArgumentError('fail: retryable must be a boolean');
      const reason = typeof o.reason === 'string' ? o.reason.slice(0, 500) : (retryable ? 'failed (retryable)' : 'failed');
      const l = this.liveLease('fail', leaseId, epoch, 'failed');
      if ('duplicate' in l) return l.duplicate;
      const e = this.samples.get(l.sampleId)!;
      const dead = !retryable || e.deliveries + 1 >= this.maxDeliveries;
      const events: LedgerEvent[] = [this.emit({ type: 'fail', key: o.key, at: now, leaseId, sampleId: l.sampleId, epoch, retryable, reason, dead })];
      if (dead) {
        const why = retryable ? `${e.deliveries} deliveries reached maxDeliveries ${this.maxDeliveries} (last: ${reason})` : `non-retryable failure: ${reason}`;
        events.push(this.emit({ type: 'dead', at: now, sampleId: l.sampleId, generation: e.ref.generation, deliveries: e.deliveries, reason: why }));
      }
      return { leaseId, sampleId: l.sampleId, status: dead ? 'dead' as const : 'pending' as const, events };
    });
  }

  /** Extends a live lease of the current epoch to now + leaseMs. */
  renew(leaseId: string, epoch: number, o: CallOpts & { leaseMs?: number }): RenewResult {
    return this.run<RenewResult>('renew', o.key, () => {
      const now = checkTime(o.now);
      const leaseMs = o.leaseMs ?? this.leaseMs;
      if (!(typeof leaseMs === 'number' && leaseMs > 0 && Number.isFinite(leaseMs))) throw new InvalidArgumentError(`leaseMs must be > 0, got ${String(leaseMs)}`);
      const l = this.liveLease('renew', leaseId, epoch, null);
      if ('duplicate' in l) throw new Error('unreachable');
      if (l.epoch !== this.epoch) {
        throw new StaleEpochError(`renew of lease ${leaseId}: it was granted under epoch ${l.epoch}, the queue is at epoch ${this.epoch}; finish and ack, or let it expire`, { detail: { leaseId, epoch: l.epoch, current: this.epoch } });
      }
      const deadline = Math.max(l.deadline, now + leaseMs);
      const ev = this.emit({ type: 'renew', key: o.key, at: now, leaseId, sampleId: l.sampleId, epoch, deadline });
      return { leaseId, sampleId: l.sampleId, deadline, events: [ev] };
    });
  }

  /** Reclaims every live lease whose deadline is <= now (back to pending, charged). */
  expire(now: number): ExpireResult {
    checkTime(now);
    return this.reclaim((l) => l.deadline <= now, now, 'lease expired');
  }

  /**
   * Reclaims every live lease of `consumer` now, whatever its deadline (back to pending,
   * charged) granted before `beforeEpoch`: its holder is known to be gone (its process
   * exited), so waiting for the deadline would only delay the samples. Logged as an expiry.
   */
  revokeConsumer(consumer: string, now: number, beforeEpoch = Number.MAX_SAFE_INTEGER): ExpireResult {
    checkString(consumer, 'consumer');
    checkTime(now);
    checkUint(beforeEpoch, 'beforeEpoch');
    // Only leases granted before `beforeEpoch`: a replacement reusing the consumer name joins a
    // later epoch, and a late revoke must not take its leases.
    return this.reclaim((l) => l.consumer === consumer && l.epoch < beforeEpoch, now, `holder ${consumer} gone`);
  }

  private reclaim(which: (l: LiveLease) => boolean, now: number, why: string): ExpireResult {
    const expired: ExpiredLease[] = [];
    for (const l of this.leases.values()) {
      if (which(l)) expired.push({ leaseId: l.leaseId, sampleId: l.sampleId, epoch: l.epoch, consumer: l.consumer, deadline: l.deadline });
    }
    if (expired.length === 0) return { expired, dead: [], events: [], repeated: false };
    const events: LedgerEvent[] = [this.emit({ type: 'expire', at: now, leases: expired })];
    const dead: string[] = [];
    for (const x of expired) {
      const e = this.samples.get(x.sampleId)!;
      if (e.state === 'pending' && e.deliveries >= this.maxDeliveries) {
        dead.push(x.sampleId);
        events.push(this.emit({ type: 'dead', at: now, sampleId: x.sampleId, generation: e.ref.generation, deliveries: e.deliveries, reason: `${why}; ${e.deliveries} deliveries reached maxDeliveries ${this.maxDeliveries}` }));
      }
    }
    return { expired, dead, events, repeated: false };
  }

  /**
   * Moves to a newer epoch (optionally declaring its partition count). Older epochs are
   * refused; the same epoch again is a no-op.
   */
  setEpoch(epoch: number, o: Partial<CallOpts> & { num?: number } = {}): EpochResult {
    const key = o.key ?? `epoch:${epoch}:${o.num ?? ''}`;
    return this.run<EpochResult>('epoch', key, () => {
      checkUint(epoch, 'epoch');
      const now = o.now === undefined ? 0 : checkTime(o.now);
      const num = o.num ?? null;
      if (num !== null && (!Number.isInteger(num) || num < 1)) throw new InvalidArgumentError(`num must be an integer >= 1, got ${String(num)}`);
      if (epoch < this.epoch) throw new StaleEpochError(`setEpoch(${epoch}): the ledger is already at epoch ${this.epoch}`, { detail: { epoch, current: this.epoch } });
      if (epoch === this.epoch) {
        if (num === null || num === this.epochNum) return { epoch, num: this.epochNum, events: [] };
        if (this.epochNum !== null) throw new InvalidArgumentError(`epoch ${epoch} already has num ${this.epochNum}; a different num (${num}) needs a new epoch`);
      }
      const ev = this.emit({ type: 'epoch', key, at: now, epoch, num });
      return { epoch, num, events: [ev] };
    });
  }

  /**
   * A producer of the input opens or declares its end (idempotent on the key). Opening after
   * the input closed is refused; an end always counts (a late end changes nothing).
   */
  input(producer: string, state: 'open' | 'end', o: CallOpts & { incarnation: number }): InputResult {
    return this.run<InputResult>('input', o.key, () => {
      const now = checkTime(o.now);
      const id = checkString(producer, 'producer');
      const incarnation = checkUint(o.incarnation, 'incarnation');
      if (state !== 'open' && state !== 'end') throw new InvalidArgumentError(`input state must be "open" or "end", got ${JSON.stringify(state)}`);
      const cur = this.producers.get(id);
      if (state === 'open' && this.closed) {
        throw new InputClosedError(`producer "${id}" cannot open: the job's input is closed (${closeWhy(this.closed)})`, { detail: { producer: id, reason: this.closed.reason } });
      }
      if ((state === 'open' && cur === 'open') || (state === 'end' && cur === 'ended')) return { producer: id, state: cur, events: [] };
      const ev = this.emit({ type: 'input', key: o.key, at: now, producer: id, state, incarnation });
      return { producer: id, state: state === 'open' ? 'open' as const : 'ended' as const, events: [ev] };
    });
  }

  /** Closes the input: from here on a new sample's put is refused (InputClosedError). Closing again is a no-op. */
  closeInput(reason: InputCloseReason, o: CallOpts): CloseResult {
    return this.run<CloseResult>('close', o.key, () => {
      const now = checkTime(o.now);
      if (reason !== 'producers' && reason !== 'samples') throw new InvalidArgumentError(`close reason must be "producers" or "samples", got ${JSON.stringify(reason)}`);
      if (this.closed) return { closed: true as const, ...this.closed, events: [] };
      const ev = this.emit({ type: 'close', key: o.key, at: now, reason, samples: this.samples.size });
      return { closed: true as const, reason, samples: this.samples.size, events: [ev] };
    });
  }

  /**
   * Applies one logged event (replay). Events with seq <= lastSeq() are ignored (returns
   * false), a gap throws InvalidArgumentError, as does an event inconsistent with the state.
   */
  apply(ev: LedgerEvent): boolean {
    if (ev === null || typeof ev !== 'object' || typeof (ev as { type?: unknown }).type !== 'string') throw new InvalidArgumentError('apply: not a ledger event');
    if (typeof ev.seq !== 'number' || !Number.isSafeInteger(ev.seq)) throw new InvalidArgumentError('apply: event has no seq');
    if (ev.seq <= this.seq) return false;
    if (ev.seq !== this.seq + 1) throw new InvalidArgumentError(`apply: event seq ${ev.seq} leaves a gap after ${this.seq}`);
    this.applyEvent(ev);
    return true;
  }

  // ---------------------------------------------------------------- internals

  private run<T extends Applied>(op: Op, key: string, fn: () => Omit<T, 'repeated'>): T {
    checkKey(key);
    const hit = this.keyResults.get(key);
    if (hit) {
      if (hit.op !== op) throw new InvalidArgumentError(`idempotency key ${JSON.stringify(key.slice(0, 60))} was used for ${hit.op}, not ${op}`);
      return { ...structuredClone(hit.value), events: [], repeated: true } as unknown as T;
    }
    const err = this.keyErrors.get(key);
    if (err) {
      if (err.op !== op) throw new InvalidArgumentError(`idempotency key ${JSON.stringify(key.slice(0, 60))} was used for ${err.op}, not ${op}`);
      throw err.error;
    }
    let out: Omit<T, 'repeated'>;
    try {
      out = fn();
    } catch (e) {
      if (e instanceof DraftwireError && !(e instanceof InvalidArgumentError && /idempotency key/.test(e.message))) {
        remember(this.keyErrors, key, { op, error: e }, this.keyCacheSize);
      }
      throw e;
    }
    if (!this.keyResults.has(key)) {
      // Calls that logged nothing (duplicates, empty gets) are remembered here; calls that
      // logged events were remembered by applyEvent (so replay rebuilds them too).
      const { events: _events, ...value } = out as unknown as CachedValue;
      remember(this.keyResults, key, { op, value: structuredClone(value) }, this.keyCacheSize);
    }
    return { ...out, repeated: false } as T;
  }

  private checkGrantEpoch(epoch: number, num: number): void {
    if (epoch !== this.epoch) {
      const ahead = epoch > this.epoch;
      throw new StaleEpochError(ahead
        ? `get under epoch ${epoch}: the queue is still at epoch ${this.epoch} (retry once it has caught up)`
        : `get under epoch ${epoch}: the queue grants only under epoch ${this.epoch}`, { detail: { epoch, current: this.epoch, ahead } });
    }
    if (this.epochNum !== null && num !== this.epochNum) {
      throw new StaleEpochError(`get with num ${num}: epoch ${this.epoch} partitions by num ${this.epochNum}`, { detail: { epoch, num, current: this.epochNum, ahead: false } });
    }
  }

  /** The live lease for (leaseId, epoch), or a duplicate answer, or throws. */
  private liveLease(op: string, leaseId: string, epoch: number, endedAs: EndKind | null): LiveLease | { duplicate: Omit<EndResult, 'repeated'> } {
    checkString(leaseId, 'leaseId');
    checkUint(epoch, 'epoch');
    const l = this.leases.get(leaseId);
    if (l) {
      if (l.epoch !== epoch) throw new StaleEpochError(`${op} of lease ${leaseId} under epoch ${epoch}: the lease was granted under epoch ${l.epoch}`, { detail: { leaseId, epoch, leaseEpoch: l.epoch } });
      return l;
    }
    const end = this.ended.get(leaseId);
    if (end && endedAs !== null && end.how === endedAs && end.epoch === epoch) {
      return { duplicate: { leaseId, sampleId: end.sampleId, status: 'duplicate', events: [] } };
    }
    const why = end ? `it was ${end.how}` : 'no such live lease';
    const holder = end ? this.samples.get(end.sampleId) : undefined;
    const now = holder?.lease ? `; sample "${end!.sampleId}" is now leased as ${holder.lease.leaseId}` : holder ? `; sample "${end!.sampleId}" is ${holder.state}` : '';
    throw new LeaseExpiredError(`${op} of lease ${leaseId}: ${why}${now}`, { detail: { leaseId, ended: end?.how ?? null } });
  }

  private partitionSet(num: number): Set<string>[] {
    if (this.partIdx && this.partIdx.num === num) return this.partIdx.sets;
    const sets = Array.from({ length: num }, () => new Set<string>());
    for (const id of this.pending) {
      const e = this.samples.get(id)!;
      if (e.pNum !== num) { e.pIdx = jumpHash(e.h64, num); e.pNum = num; }
      sets[e.pIdx]!.add(id);
    }
    this.partIdx = { num, sets };
    return sets;
  }

  private addPending(e: Entry): void {
    e.state = 'pending';
    this.pending.add(e.sampleId);
    if (this.partIdx) {
      const num = this.partIdx.num;
      if (e.pNum !== num) { e.pIdx = jumpHash(e.h64, num); e.pNum = num; }
      this.partIdx.sets[e.pIdx]!.add(e.sampleId);
    }
  }

  private removePending(e: Entry): void {
    this.pending.delete(e.sampleId);
    if (this.partIdx && e.pNum === this.partIdx.num) this.partIdx.sets[e.pIdx]!.delete(e.sampleId);
  }

  private emit(ev: NewEvent): LedgerEvent {
    const full = { seq: this.seq + 1, ...ev } as LedgerEvent;
    if (full.key === undefined) delete full.key;
    this.applyEvent(full, true);
    return full;
  }

  private leasesOf(ev: Extract<LedgerEvent, { type: 'lease' }>): Lease[] {
    return ev.leases.map((g) => ({
      leaseId: g.leaseId, sampleId: g.sampleId, ref: this.samples.get(g.sampleId)!.ref, epoch: ev.epoch,
      consumer: ev.consumer, deadline: g.deadline, delivery: g.delivery,
    }));
  }

  private endLease(e: Entry, leaseId: string, how: EndKind): LiveLease {
    const l = e.lease;
    if (!l || l.leaseId !== leaseId) throw new InvalidArgumentError(`apply: lease ${leaseId} of sample "${e.sampleId}" is not live`);
    e.lease = null;
    this.leases.delete(leaseId);
    remember(this.ended, leaseId, { sampleId: e.sampleId, epoch: l.epoch, how }, this.endedCacheSize);
    return l;
  }

  private entryOf(sampleId: string): Entry {
    const e = this.samples.get(sampleId);
    if (!e) throw new InvalidArgumentError(`apply: unknown sample "${sampleId}"`);
    return e;
  }

  /** The only place state changes. `own`: an event this ledger just built from checked input (its ref is validated already). */
  private applyEvent(ev: LedgerEvent, own = false): void {
    let result: CachedValue | null = null;
    let op: Op | null = null;
    switch (ev.type) {
      case 'put': {
        let ref: SampleRef;
        try { ref = own ? ev.ref : validateSampleRef(ev.ref); } catch (e) { throw new InvalidArgumentError(`apply: put #${ev.seq}: ${(e as Error).message}`); }
        const cur = this.samples.get(ref.sampleId);
        if (ev.prevGeneration === null) {
          if (cur) throw new InvalidArgumentError(`apply: put of existing sample "${ref.sampleId}"`);
          if (this.closed) throw new InvalidArgumentError(`apply: put of new sample "${ref.sampleId}" after the input closed`);
          const e: Entry = { sampleId: ref.sampleId, h64: hash64(ref.sampleId), ref, state: 'pending', deliveries: 0, lease: null, pIdx: -1, pNum: 0 };
          this.samples.set(ref.sampleId, e);
          this.live += ref.bytes;
          this.addPending(e);
        } else {
          if (!cur || cur.ref.generation !== ev.prevGeneration) throw new InvalidArgumentError(`apply: put replaces generation ${ev.prevGeneration} of "${ref.sampleId}", which the ledger does not hold`);
          this.live += ref.bytes - cur.ref.bytes;
          cur.ref = ref;
        }
        op = 'put';
        result = { sampleId: ref.sampleId, generation: ref.generation, status: ev.prevGeneration === null ? 'added' : 'replaced' };
        break;
      }
      case 'lease': {
        for (const g of ev.leases) {
          const e = this.entryOf(g.sampleId);
          if (e.state !== 'pending') throw new InvalidArgumentError(`apply: lease of sample "${g.sampleId}" in state ${e.state}`);
          this.removePending(e);
          e.state = 'leased';
          e.lease = { leaseId: g.leaseId, sampleId: g.sampleId, epoch: ev.epoch, consumer: ev.consumer, deadline: g.deadline, delivery: g.delivery };
          this.leases.set(g.leaseId, e.lease);
          this.leaseCounter++;
          this.counts.leasesGranted++;
        }
        op = 'get';
        result = { leases: this.leasesOf(ev) };
        break;
      }
      case 'ack': {
        const e = this.entryOf(ev.sampleId);
        this.endLease(e, ev.leaseId, 'acked');
        e.state = 'consumed';
        this.counts.consumed++;
        this.live -= e.ref.bytes;
        this.counts.acks++;
        op = 'ack';
        result = { leaseId: ev.leaseId, sampleId: ev.sampleId, status: 'acked' };
        break;
      }
      case 'release': {
        const e = this.entryOf(ev.sampleId);
        this.endLease(e, ev.leaseId, 'released');
        this.addPending(e);
        this.counts.releases++;
        op = 'release';
        result = { leaseId: ev.leaseId, sampleId: ev.sampleId, status: 'released' };
        break;
      }
      case 'fail': {
        const e = this.entryOf(ev.sampleId);
        this.endLease(e, ev.leaseId, 'failed');
        e.deliveries++;
        this.addPending(e);
        this.counts.fails++;
        op = 'fail';
        result = { leaseId: ev.leaseId, sampleId: ev.sampleId, status: ev.dead ? 'dead' : 'pending' };
        break;
      }
      case 'renew': {
        const e = this.entryOf(ev.sampleId);
        if (!e.lease || e.lease.leaseId !== ev.leaseId) throw new InvalidArgumentError(`apply: renew of lease ${ev.leaseId}, which is not live`);
        e.lease.deadline = ev.deadline;
        this.counts.renewals++;
        op = 'renew';
        result = { leaseId: ev.leaseId, sampleId: ev.sampleId, deadline: ev.deadline };
        break;
      }
      case 'expire': {
        for (const x of ev.leases) {
          const e = this.entryOf(x.sampleId);
          this.endLease(e, x.leaseId, 'expired');
          e.deliveries++;
          this.addPending(e);
          this.counts.expired++;
        }
        break;
      }
      case 'dead': {
        const e = this.entryOf(ev.sampleId);
        if (e.state !== 'pending') throw new InvalidArgumentError(`apply: dead letter of sample "${ev.sampleId}" in state ${e.state}`);
        this.removePending(e);
        e.state = 'dead';
        this.counts.dead++;
        this.live -= e.ref.bytes;
        break;
      }
      case 'epoch': {
        if (ev.epoch < this.epoch) throw new InvalidArgumentError(`apply: epoch ${ev.epoch} is older than ${this.epoch}`);
        this.epoch = ev.epoch;
        this.epochNum = ev.num;
        op = 'epoch';
        result = { epoch: ev.epoch, num: ev.num };
        break;
      }
      case 'input': {
        this.producers.set(ev.producer, ev.state === 'open' ? 'open' : 'ended');
        op = 'input';
        result = { producer: ev.producer, state: ev.state === 'open' ? 'open' : 'ended' };
        break;
      }
      case 'close': {
        if (this.closed) throw new InvalidArgumentError('apply: the input is closed twice');
        if (ev.samples !== this.samples.size) throw new InvalidArgumentError(`apply: the input closed at ${ev.samples} samples, the ledger holds ${this.samples.size}`);
        this.closed = { reason: ev.reason, samples: ev.samples };
        op = 'close';
        result = { closed: true, reason: ev.reason, samples: ev.samples };
        break;
      }
      default:
        throw new InvalidArgumentError(`apply: unknown event type ${JSON.stringify((ev as { type: unknown }).type)}`);
    }
    this.seq = ev.seq;
    if (ev.key !== undefined && op !== null && result !== null && !this.keyResults.has(ev.key)) {
      remember(this.keyResults, ev.key, { op, value: result }, this.keyCacheSize);
    }
  }
}

function closeWhy(c: { reason: InputCloseReason; samples: number }): string {
  return c.reason === 'producers' ? `every producer declared its end, at ${c.samples} samples` : `its ${c.samples} samples were committed`;
}

function remember<K, V>(m: Map<K, V>, k: K, v: V, cap: number): void {
  m.delete(k);
  m.set(k, v);
  while (m.size > cap) m.delete(m.keys().next().value as K);
}
