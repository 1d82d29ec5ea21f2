// The lease ledger's vocabulary: the events it logs (LedgerEvent: what the queue actor writes
// to the WAL and what replay and the audit read), leases, and the options and results of its
// calls. Separate from ledger.ts so the shapes read apart from the state machine; ledger.ts
// re-exports them all.

import type { Lease } from '../wire/protocol.ts';
import { validateSampleRef, type SampleRef } from '../wire/sampleref.ts';

export type SampleState = 'pending' | 'leased' | 'consumed' | 'dead';

export type { Lease };

/** One lease as logged (the ref is in the sample's put event). */
export interface LeaseGrant {
  leaseId: string;
  sampleId: string;
  generation: number;
  deadline: number;
  delivery: number;
}

export interface ExpiredLease {
  leaseId: string;
  sampleId: string;
  epoch: number;
  consumer: string;
  deadline: number;
}

interface EventBase {
  /** Position in the ledger's log, 1-based, contiguous. */
  seq: number;
  /** Time the call was applied (ms). */
  at: number;
  /** Idempotency key of the call that produced it (absent for expire/dead). */
  key?: string;
}

export type LedgerEvent =
  | (EventBase & { type: 'put'; ref: SampleRef; prevGeneration: number | null })
  | (EventBase & { type: 'lease'; epoch: number; consumer: string; partition: [number, number]; leases: LeaseGrant[] })
  | (EventBase & { type: 'ack'; leaseId: string; sampleId: string; epoch: number })
  | (EventBase & { type: 'release'; leaseId: string; sampleId: string; epoch: number })
  | (EventBase & { type: 'fail'; leaseId: string; sampleId: string; epoch: number; retryable: boolean; reason: string; dead: boolean })
  | (EventBase & { type: 'renew'; leaseId: string; sampleId: string; epoch: number; deadline: number })
  | (EventBase & { type: 'expire'; leases: ExpiredLease[] })
  | (EventBase & { type: 'dead'; sampleId: string; generation: number; deliveries: number; reason: string })
  | (EventBase & { type: 'epoch'; epoch: number; num: number | null })
  // A producer of the job's input (run --rollout external) opened or declared its end.
  | (EventBase & { type: 'input'; producer: string; state: 'open' | 'end'; incarnation: number })
  // The input closed: no new sample is committed after this event.
  | (EventBase & { type: 'close'; reason: InputCloseReason; samples: number });

/** Why a job's input closed: its producers all declared their end, or its sample cap was committed. */
export type InputCloseReason = 'producers' | 'samples';

export type LedgerEventType = LedgerEvent['type'];
/** An event before the ledger numbers it (everything but seq). */
export type NewEvent = LedgerEvent extends infer E ? (E extends LedgerEvent ? Omit<E, 'seq'> : never) : never;

/** What every mutating call returns besides its answer. */
export interface Applied {
  /** The events this call applied, in order (empty when nothing changed or the key repeated). */
  events: LedgerEvent[];
  /** True when the key had been seen and this is the first call's answer. */
  repeated: boolean;
}

export type PutResult = Applied & { sampleId: string; generation: number; status: 'added' | 'replaced' | 'duplicate' };
export type GetResult = Applied & { leases: Lease[] };
export type EndResult = Applied & { leaseId: string; sampleId: string; status: 'acked' | 'released' | 'pending' | 'dead' | 'duplicate' };
export type RenewResult = Applied & { leaseId: string; sampleId: string; deadline: number };
export type ExpireResult = Applied & { expired: ExpiredLease[]; dead: string[] };
export type EpochResult = Applied & { epoch: number; num: number | null };
export type InputResult = Applied & { producer: string; state: 'open' | 'ended' };
export type CloseResult = Applied & { closed: true; reason: InputCloseReason; samples: number };

/** The producers of the job's input and whether it closed (the queue's close policy reads it). */
export interface InputState {
  open: string[];
  ended: string[];
  closed: { reason: InputCloseReason; samples: number } | null;
}

export interface LedgerOptions {
  /** Charged deliveries after which a sample is dead-lettered (default 5). */
  maxDeliveries?: number;
  /** Default lease length, ms (default 60 000). */
  leaseMs?: number;
  /** Initial epoch (default 0). */
  epoch?: number;
  /** Remembered idempotency keys (default 100 000; oldest evicted first). */
  keyCacheSize?: number;
  /** Remembered ended leases, for duplicate detection and messages (default 1 000 000). */
  endedLeaseCacheSize?: number;
  /** Prefix of lease ids (default 'L'); ids are prefix + a counter rebuilt by replay. */
  leaseIdPrefix?: string;
}

export interface CallOpts { key: string; now: number }
export interface GetOpts extends CallOpts {
  partition: readonly [number, number];
  consumer: string;
  epoch: number;
  leaseMs?: number;
}

export interface SampleStatus {
  sampleId: string;
  state: SampleState;
  generation: number;
  /** Charged deliveries so far. */
  deliveries: number;
  lease: Omit<Lease, 'ref'> | null;
  ref: SampleRef;
}

export interface LedgerStats {
  epoch: number;
  num: number | null;
  seq: number;
  samples: number;
  pending: number;
  leased: number;
  consumed: number;
  dead: number;
  leasesGranted: number;
  acks: number;
  releases: number;
  fails: number;
  expired: number;
  renewals: number;
}

// ------------------------------------------------------------------ shape validation
// What replay reads back from the write-ahead log is checked here, one validator per event
// type, before the ledger or the audit touch it: a record of the wrong shape (forged, fuzzed,
// from another version) must become a report naming it, never a TypeError deep in replay.
// Independent of the ledger class on purpose. Extra fields are tolerated (older readers of
// newer logs); missing or mistyped ones are not.

type Check = (o: Record<string, unknown>) => string | null;
const isObj = (x: unknown): x is Record<string, unknown> => x !== null && typeof x === 'object' && !Array.isArray(x) && !(x instanceof Uint8Array);
const uint = (x: unknown) => typeof x === 'number' && Number.isSafeInteger(x) && x >= 0;
const time = (x: unknown) => typeof x === 'number' && Number.isFinite(x);
const str = (x: unknown) => typeof x === 'string' && x.length > 0 && x.length <= 4096;
/** The first of `fields` whose check fails, as a reason, or null. */
function fields(o: Record<string, unknown>, spec: Record<string, (x: unknown) => boolean>, what: string): string | null {
  for (const [k, ok] of Object.entries(spec)) if (!ok(o[k])) return `${what}.${k} is ${describeValue(o[k])}`;
  return null;
}
function describeValue(x: unknown): string {
  if (x === undefined) return 'missing';
  if (x === null) return 'null';
  if (Array.isArray(x)) return `an array of ${x.length}`;
  if (typeof x === 'string') return `the string ${JSON.stringify(x.slice(0, 40))}`;
  if (typeof x === 'number') return `the number ${x}`;
  return `a ${typeof x}`;
}
function each(x: unknown, what: string, one: (o: Record<string, unknown>, what: string) => string | null): string | null {
  if (!Array.isArray(x)) return `${what} is ${describeValue(x)}, not an array`;
  if (x.length > 1_000_000) return `${what} has ${x.length} entries`;
  for (let i = 0; i < x.length; i++) {
    const g: unknown = x[i];
    if (!isObj(g)) return `${what}[${i}] is ${describeValue(g)}, not a map`;
    const r = one(g, `${what}[${i}]`);
    if (r) return r;
  }
  return null;
}
const leaseEnd = { leaseId: str, sampleId: str, epoch: uint };

const CHECKS: Record<LedgerEventType, Check> = {
  put: (o) => {
    if (!(o.prevGeneration === null || uint(o.prevGeneration))) return `put.prevGeneration is ${describeValue(o.prevGeneration)}`;
    // A ledger exported as JSON (ledger.jsonl) holds the ref's mac as hex: the same ref.
    const ref = isObj(o.ref) && typeof o.ref.mac === 'string' && /^[0-9a-f]{64}$/.test(o.ref.mac) ? { ...o.ref, mac: new Uint8Array(Buffer.from(o.ref.mac, 'hex')) } : o.ref;
    try { validateSampleRef(ref); return null; } catch (e) { return `put.ref: ${(e as Error).message}`; }
  },
  lease: (o) => {
    const r = fields(o, { epoch: uint, consumer: str }, 'lease');
    if (r) return r;
    const p = o.partition;
    if (!Array.isArray(p) || p.length !== 2 || !uint(p[0]) || !uint(p[1]) || (p[0] as number) >= (p[1] as number)) return `lease.partition is not [index, count] with index < count`;
    return each(o.leases, 'lease.leases', (g, w) => fields(g, { leaseId: str, sampleId: str, generation: uint, deadline: time, delivery: uint }, w));
  },
  ack: (o) => fields(o, leaseEnd, 'ack'),
  release: (o) => fields(o, leaseEnd, 'release'),
  fail: (o) => fields(o, { ...leaseEnd, retryable: (x) => typeof x === 'boolean', reason: (x) => typeof x === 'string', dead: (x) => typeof x === 'boolean' }, 'fail'),
  renew: (o) => fields(o, { ...leaseEnd, deadline: time }, 'renew'),
  expire: (o) => each(o.leases, 'expire.leases', (g, w) => fields(g, { leaseId: str, sampleId: str, epoch: uint, consumer: str, deadline: time }, w)),
  dead: (o) => fields(o, { sampleId: str, generation: uint, deliveries: uint, reason: (x) => typeof x === 'string' }, 'dead'),
  epoch: (o) => fields(o, { epoch: uint, num: (x) => x === null || (uint(x) && (x as number) >= 1) }, 'epoch'),
  input: (o) => fields(o, { producer: str, state: (x) => x === 'open' || x === 'end', incarnation: uint }, 'input'),
  close: (o) => fields(o, { reason: (x) => x === 'producers' || x === 'samples', samples: uint }, 'close'),
};

/** Why `x` is not a well-formed LedgerEvent, or null when it is one. */
export function ledgerEventProblem(x: unknown): string | null {
  if (!isObj(x)) return `not a map (${describeValue(x)})`;
  const type = x.type;
  if (typeof type !== 'string' || !Object.hasOwn(CHECKS, type)) return `unknown event type ${describeValue(type)}`;
  if (!(uint(x.seq) && (x.seq as number) >= 1)) return `${type}.seq is ${describeValue(x.seq)}`;
  if (!time(x.at)) return `${type}.at is ${describeValue(x.at)}`;
  if (!(x.key === undefined || x.key === null || typeof x.key === 'string')) return `${type}.key is ${describeValue(x.key)}`;
  return CHECKS[type as LedgerEventType](x);
}

/** True when `x` is a well-formed LedgerEvent (see ledgerEventProblem for why not). */
export function isLedgerEvent(x: unknown): x is LedgerEvent {
  return ledgerEventProblem(x) === null;
}

// ------------------------------------------------------------------ what replay found

/** A WAL record that replay could not use: it failed its MAC, did not decode, or had the wrong shape. */
export interface BadWalRecord { streamSeq: number; reason: string }
/** A record the operator told replay to ignore (`draftwire wal skip`), and the skip record saying so. */
export interface SkippedWalRecord { streamSeq: number; reason: string; skipStreamSeq: number; at: number }
/** A byte-for-byte copy of an earlier record (same events, same ledger seqs): ignored. */
export interface DuplicateWalRecord { streamSeq: number; original: number; events: [number, number] }

export interface WalFindings {
  /** Records not applied and not skipped: replay cannot go on past them until the operator decides. */
  bad: BadWalRecord[];
  skipped: SkippedWalRecord[];
  duplicates: DuplicateWalRecord[];
}
