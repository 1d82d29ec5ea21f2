// Group commit for the ledger's write-ahead log. The queue applies each request to the ledger
// at once and hands the events here; they are gathered into one log record per batch, up to
// `maxInFlight` records are appended at a time (pipelined), and every reply or publish that
// depended on them waits (`then`) until its batch and every batch before it are durable. The
// durability rule is the one of a single append per request: nothing leaves before its events
// are in the log.
//
// The fence against a second writer is kept through the pipeline: each record names the one
// it must follow, the previous record's own id (the first after a rebuild: the stream seq the
// rebuild read up to). A seq would not do for the later ones: if a record of ours is refused
// because another writer's took its place, that record holds the very seq the next of ours
// expects, and ours would land on top of it, two ledgers interleaved. With ids, if one append
// fails every later one fails too, and the log never holds a gap or another writer's records
// between ours. A failed append fails the whole pipeline: every waiter is told it was lost
// (its caller retries with the same idempotency key) and `failed` stays set until the owner
// rebuilt its state and calls reset().
import { randomUUID } from 'node:crypto';
import type { LedgerEvent } from './events.ts';

/** Where a record must land: right after `after`, or the append fails (a conflict). */
export interface AppendFence {
  /** This record's id, unique per record (the stream's dedupe id: a retried append is a duplicate, not a second record). */
  msgId: string;
  /** The record it follows: the previous record's id, or the stream seq a rebuild read up to. */
  after: { msgId: string } | { seq: number };
}

export interface GroupCommitOptions {
  /** Appends one record of events where `fence` says; resolves with its own stream seq. */
  append(events: LedgerEvent[], fence: AppendFence): Promise<number>;
  /** Records appended at once (default 4). */
  maxInFlight?: number;
  /** A record holds at most this many events (default 1024)... */
  maxEvents?: number;
  /** ...and about this many bytes (default 256 KiB, well under NATS' 1 MiB payload). */
  maxBytes?: number;
  /** Told each append's seconds and event count (metrics). */
  onAppend?(seconds: number, events: number): void;
  /** Told an error a waiter threw (a bug in a reply path): the pipeline goes on. */
  onWaiterError?(e: unknown): void;
  /** The error waiters of a lost batch get, from the append's own failure. */
  lostError?(cause: unknown): Error;
}

export interface Waiter {
  /** Everything written before this waiter is in the log. */
  durable(): void;
  /** It will never be (the append failed): the caller must retry. */
  lost(e: Error): void;
}

interface Batch { events: LedgerEvent[]; bytes: number; waiters: Waiter[]; sent: boolean; durable: boolean }

/**
 * A cheap upper estimate of an event's encoded size: puts carry a whole SampleRef (its strings,
 * and per feature a name and a shape), the rest are small.
 */
function estimateBytes(e: LedgerEvent): number {
  if (e.type === 'put') {
    const r = e.ref;
    let n = 384 + r.job.length + r.sampleId.length + r.uri.length + r.checksum.length + r.producer.node.length + r.producer.actor.length;
    for (const name in r.features) n += 24 + name.length + 9 * r.features[name]!.shape.length;
    return n;
  }
  if (e.type === 'lease') return 128 + 96 * e.leases.length;
  if (e.type === 'expire') return 128 + 96 * e.leases.length;
  return 192;
}

export class GroupCommit {
  private readonly maxInFlight: number;
  private readonly maxEvents: number;
  private readonly maxBytes: number;
  /** Batches not yet durable, in log order; the unsent ones at the tail. */
  private batches: Batch[] = [];
  private inFlight = 0;
  /** The stream seq the next record sent expects to follow. */
  private lastSeq = 0;
  /** The id of the last record sent (null: none since the last reset, fence on lastSeq). */
  private lastMsgId: string | null = null;
  /** Names this pipeline's records: fresh at every reset, so ids never repeat across rebuilds. */
  private writer = randomUUID();
  private sent = 0;
  private scheduled = false;
  private failure: Error | null = null;
  private idleWaiters: (() => void)[] = [];
  /** Records and events appended since the start (for the benchmark and tests). */
  readonly stats = { records: 0, events: 0 };

  constructor(private readonly o: GroupCommitOptions) {
    this.maxInFlight = o.maxInFlight ?? 4;
    this.maxEvents = o.maxEvents ?? 1024;
    this.maxBytes = o.maxBytes ?? 256 * 1024;
  }

  /** Set once an append failed; cleared by reset(). */
  get failed(): Error | null { return this.failure; }

  /** Starts over after the log `lastSeq` (a rebuild read it). Only when idle. */
  reset(lastSeq: number): void {
    if (this.batches.length > 0 || this.inFlight > 0) throw new Error('GroupCommit.reset while appends are pending');
    this.failure = null;
    this.lastSeq = lastSeq;
    this.lastMsgId = null;
    this.writer = randomUUID();
  }

  /** Adds events to the log's next record. */
  write(events: LedgerEvent[]): void {
    if (this.failure) throw this.failure;
    for (const e of events) {
      const bytes = estimateBytes(e);
      let tail = this.batches.at(-1);
      if (!tail || tail.sent || tail.events.length >= this.maxEvents || (tail.events.length > 0 && tail.bytes + bytes > this.maxBytes)) {
        tail = { events: [], bytes: 0, waiters: [], sent: false, durable: false };
        this.batches.push(tail);
      }
      tail.events.push(e);
      tail.bytes += bytes;
    }
    if (events.length > 0) this.schedule();
  }

  /** Runs `w.durable` once everything written so far is in the log (at once when it is already). */
  then(w: Waiter): void {
    if (this.failure) { w.lost(this.failure); return; }
    const tail = this.batches.at(-1);
    if (!tail) { this.call(() => w.durable()); return; }
    tail.waiters.push(w);
  }

  /** Resolves when nothing is pending or in flight (a failed pipeline: once its appends settled). */
  idle(): Promise<void> {
    if (this.batches.length === 0 && this.inFlight === 0) return Promise.resolve();
    return new Promise((r) => this.idleWaiters.push(r));
  }

  private schedule(): void {
    if (this.scheduled) return;
    this.scheduled = true;
    // The next turn: requests handled in this one (a socket read holds many) share the record.
    setImmediate(() => { this.scheduled = false; this.pump(); });
  }

  private pump(): void {
    while (!this.failure && this.inFlight < this.maxInFlight) {
      const b = this.batches.find((x) => !x.sent);
      if (!b) return;
      b.sent = true;
      this.inFlight++;
      const expected = this.lastSeq++;
      const fence: AppendFence = { msgId: `${this.writer}.${++this.sent}`, after: this.lastMsgId ? { msgId: this.lastMsgId } : { seq: expected } };
      this.lastMsgId = fence.msgId;
      const t0 = performance.now();
      this.o.append(b.events, fence).then((seq) => {
        this.inFlight--;
        if (this.failure) return this.checkIdle();
        if (seq !== expected + 1) return this.fail(new Error(`write-ahead log record landed at seq ${seq}, expected ${expected + 1}`));
        this.o.onAppend?.((performance.now() - t0) / 1000, b.events.length);
        this.stats.records++;
        this.stats.events += b.events.length;
        b.durable = true;
        this.drain();
        this.pump();
      }, (e: unknown) => {
        this.inFlight--;
        this.fail(e);
      });
    }
  }

  /** Tells the waiters of the durable batches at the head, in order. */
  private drain(): void {
    while (this.batches[0]?.durable) {
      const b = this.batches.shift()!;
      for (const w of b.waiters) this.call(() => w.durable());
    }
    this.checkIdle();
  }

  private fail(cause: unknown): void {
    if (!this.failure) {
      this.failure = this.o.lostError?.(cause) ?? (cause instanceof Error ? cause : new Error(String(cause)));
      const lost = this.batches;
      this.batches = [];
      for (const b of lost) for (const w of b.waiters) this.call(() => w.lost(this.failure!));
    }
    this.checkIdle();
  }

  private checkIdle(): void {
    if (this.batches.length > 0 || this.inFlight > 0) return;
    const ws = this.idleWaiters;
    this.idleWaiters = [];
    for (const r of ws) r();
  }

  private call(fn: () => void): void {
    try { fn(); } catch (e) { this.o.onWaiterError?.(e); }
  }
}
