// The lease ledger's write-ahead log: a JetStream stream of records {f: WAL_RECORD, events},
// each one the events of one ledger call, appended before its reply is sent. The queue
// actor appends and replays it; `draftwire audit` and `run --resume` read it.
//
// Replay trusts nothing it reads: a record that fails its MAC, does not decode, or holds an
// event of the wrong shape (events.ts validates each type) is reported with its stream
// sequence number and the reason. A byte-for-byte copy of an earlier record (same events,
// same ledger seqs: the ledger seq is the event's identity) is recognised and ignored. The
// operator decides about a bad record with `draftwire wal skip`, which appends a sealed
// {f: WAL_SKIP, skip: N, reason} record: replay then ignores record N explicitly, and the
// audit reports it as skipped. Until then the queue refuses to start (WalCorruptError,
// not retryable), so it neither crash-loops nor silently drops a record.
import { createHash } from 'node:crypto';
import type { JobSubjects } from '../wire/subjects.ts';

/**
 * What the log needs of the NATS boundary (the Bus provides it): its JetStream stream, read
 * whole with the records that did not open, and appended to. Declared here so the ledger
 * imports nothing of bus/.
 */
export interface WalBus {
  readonly job: string;
  readonly subjects: JobSubjects;
  ensureStream(name: string, subjects: string[]): Promise<void>;
  readAll(stream: string, fromSeq: number, opts: { yieldInvalid: true }): AsyncIterable<{ seq: number; obj: unknown; error?: Error }>;
  append(subject: string, obj: unknown, opts: { msgId: string }): Promise<number>;
}
import { DraftwireError, InvalidArgumentError, AuthError, WalCorruptError } from '../errors.ts';
import { ledgerEventProblem, type LedgerEvent, type WalFindings, type BadWalRecord } from './events.ts';
import { LeaseLedger } from './ledger.ts';
import type { LedgerOptions } from './events.ts';

export const WAL_RECORD = 'draftwire/ledger-events/1';
export const WAL_SKIP = 'draftwire/ledger-skip/1';

export { WalCorruptError };

/** One entry as the stream gave it: the opened record, or why it did not open. */
export type WalEntry = { seq: number; obj: unknown; error?: undefined } | { seq: number; obj?: undefined; error: Error };
export interface WalRecord { streamSeq: number; events: LedgerEvent[] }
export interface WalReplay extends WalFindings {
  /** The usable records, in order (duplicates, skipped and bad ones left out). */
  records: WalRecord[];
  events: LedgerEvent[];
  /** Every stream seq seen, by kind, for `wal skip` to check what it names. */
  kinds: Map<number, 'events' | 'skip' | 'bad' | 'duplicate' | 'skipped'>;
  /** The last stream seq read (0: an empty log): the queue's next append expects it (a fence against a second writer). */
  lastStreamSeq: number;
}

const hex = (_k: string, v: unknown) => (v instanceof Uint8Array ? Buffer.from(v).toString('hex') : v);
const digest = (events: unknown[]) => createHash('sha256').update(JSON.stringify(events, hex)).digest('hex');
const isMap = (x: unknown): x is Record<string, unknown> => x !== null && typeof x === 'object' && !Array.isArray(x);

function skipProblem(o: Record<string, unknown>): string | null {
  if (!(Number.isSafeInteger(o.skip) && (o.skip as number) >= 1)) return 'skip record: skip is not a stream seq';
  if (typeof o.reason !== 'string' || o.reason.trim() === '') return 'skip record: no reason';
  if (typeof o.at !== 'number') return 'skip record: at is not a time';
  return null;
}

/** Classifies the entries of a log (pure: the tests feed it entries without NATS). */
export function classifyWal(entries: readonly WalEntry[]): WalReplay {
  const out: WalReplay = { records: [], events: [], bad: [], skipped: [], duplicates: [], kinds: new Map(), lastStreamSeq: entries.reduce((m, e) => Math.max(m, e.seq), 0) };
  // Pass 1: the operator's skip records (they come after the record they name).
  const skips = new Map<number, { skipStreamSeq: number; reason: string; at: number }>();
  for (const e of entries) {
    if (e.error || !isMap(e.obj) || e.obj.f !== WAL_SKIP || skipProblem(e.obj)) continue;
    const n = e.obj.skip as number;
    if (n < e.seq && !skips.has(n)) skips.set(n, { skipStreamSeq: e.seq, reason: e.obj.reason as string, at: e.obj.at as number });
  }
  const bad = (streamSeq: number, reason: string) => { out.bad.push({ streamSeq, reason }); out.kinds.set(streamSeq, 'bad'); };
  // Ledger seq of the first event of each applied record -> its stream seq and digest.
  const firsts = new Map<number, { streamSeq: number; n: number; digest: string }>();
  let lastSeq = 0;
  for (const e of entries) {
    const isSkip = !e.error && isMap(e.obj) && e.obj.f === WAL_SKIP;
    if (!isSkip) {
      const sk = skips.get(e.seq);
      if (sk) { out.skipped.push({ streamSeq: e.seq, ...sk }); out.kinds.set(e.seq, 'skipped'); continue; }
    }
    if (e.error) { bad(e.seq, e.error instanceof AuthError ? 'failed its MAC (authentication failed)' : `did not decode: ${e.error.message.replace(/^stream \S+ seq \d+: /, '')}`); continue; }
    const o = e.obj;
    if (!isMap(o)) { bad(e.seq, 'not a map'); continue; }
    if (isSkip) {
      const p = skipProblem(o);
      if (p) bad(e.seq, p); else out.kinds.set(e.seq, 'skip');
      continue;
    }
    if (o.f !== WAL_RECORD) { bad(e.seq, `not a ledger record (f is ${JSON.stringify(String(o.f).slice(0, 60))})`); continue; }
    if (!Array.isArray(o.events)) { bad(e.seq, 'events is not an array'); continue; }
    const events = o.events as unknown[];
    let problem: string | null = null;
    for (let i = 0; i < events.length && !problem; i++) {
      const p = ledgerEventProblem(events[i]);
      if (p) problem = `event ${i + 1} of ${events.length}: ${p}`;
      else if (i > 0 && (events[i] as LedgerEvent).seq !== (events[i - 1] as LedgerEvent).seq + 1) problem = `event ${i + 1} of ${events.length}: ledger seq ${(events[i] as LedgerEvent).seq} does not follow ${(events[i - 1] as LedgerEvent).seq}`;
    }
    if (problem) { bad(e.seq, problem); continue; }
    if (events.length === 0) { out.kinds.set(e.seq, 'events'); continue; }
    const evs = events as LedgerEvent[];
    const first = evs[0]!.seq, last = evs.at(-1)!.seq;
    if (first <= lastSeq) {
      const orig = firsts.get(first);
      if (orig && orig.n === evs.length && orig.digest === digest(evs)) {
        out.duplicates.push({ streamSeq: e.seq, original: orig.streamSeq, events: [first, last] });
        out.kinds.set(e.seq, 'duplicate');
      } else {
        bad(e.seq, `rewrites ledger events #${first}..#${last}, already in the log${orig ? ` (stream seq ${orig.streamSeq} holds #${first})` : ''}`);
      }
      continue;
    }
    if (first !== lastSeq + 1) { bad(e.seq, `its ledger events start at #${first}, but the log so far ends at #${lastSeq} (a record is missing, or this one is forged)`); continue; }
    firsts.set(first, { streamSeq: e.seq, n: evs.length, digest: digest(evs) });
    lastSeq = last;
    out.records.push({ streamSeq: e.seq, events: evs });
    for (const ev of evs) out.events.push(ev);
    out.kinds.set(e.seq, 'events');
  }
  return out;
}

/** Reads and classifies the job's whole write-ahead log (see classifyWal). */
export async function readWal(bus: WalBus): Promise<WalReplay> {
  const s = bus.subjects;
  await bus.ensureStream(s.walStream, [s.walSubject]);
  const entries: WalEntry[] = [];
  for await (const rec of bus.readAll(s.walStream, 1, { yieldInvalid: true })) {
    entries.push(rec.error ? { seq: rec.seq, error: rec.error } : { seq: rec.seq, obj: rec.obj });
  }
  return classifyWal(entries);
}

export function walCorrupt(job: string, b: BadWalRecord, more: number, wellFormed = false): WalCorruptError {
  return new WalCorruptError(
    `the write-ahead log of job ${job} has a record replay cannot use: stream seq ${b.streamSeq} ${b.reason}` +
    `${more > 0 ? ` (and ${more} more; see draftwire audit --job ${job})` : ''}; ` +
    `if it is not the queue's, skip it: draftwire wal skip --job ${job} --seq ${b.streamSeq} --reason "..."${wellFormed ? ' --force' : ''}`,
    { detail: { streamSeq: b.streamSeq, reason: b.reason } });
}

/** Every usable ledger event of the job's log, in order; WalCorruptError on a bad record nobody skipped. */
export async function readLedgerEvents(bus: WalBus): Promise<LedgerEvent[]> {
  const r = await readWal(bus);
  if (r.bad.length > 0) throw walCorrupt(bus.job, r.bad[0]!, r.bad.length - 1);
  return r.events;
}

/**
 * The ledger rebuilt from the log (what the queue does on start). WalCorruptError names the
 * stream seq of the first record that is bad, or whose events the ledger refuses to apply.
 */
export async function rebuildLedger(bus: WalBus, opts: LedgerOptions = {}): Promise<{ ledger: LeaseLedger; replay: WalReplay }> {
  const replay = await readWal(bus);
  if (replay.bad.length > 0) throw walCorrupt(bus.job, replay.bad[0]!, replay.bad.length - 1);
  const ledger = new LeaseLedger(opts);
  for (const rec of replay.records) {
    for (const ev of rec.events) {
      try { ledger.apply(ev); } catch (e) {
        throw walCorrupt(bus.job, { streamSeq: rec.streamSeq, reason: `holds event #${ev.seq} (${ev.type}) the ledger refuses: ${(e as Error).message}` }, 0, true);
      }
    }
  }
  return { ledger, replay };
}

/** Appends the operator's decision to ignore record `seq` (see `draftwire wal skip`). */
export async function appendWalSkip(bus: WalBus, seq: number, reason: string, now = Date.now()): Promise<number> {
  if (!Number.isSafeInteger(seq) || seq < 1) throw new InvalidArgumentError(`wal skip: --seq must be a stream seq >= 1, got ${seq}`);
  if (reason.trim() === '') throw new InvalidArgumentError('wal skip: --reason must say why the record is skipped');
  const s = bus.subjects;
  // msgId: a retried skip of the same record is one record.
  return bus.append(s.walSubject, { f: WAL_SKIP, skip: seq, reason: reason.slice(0, 500), at: now }, { msgId: `wal-skip:${seq}` });
}
