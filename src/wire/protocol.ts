// The wire protocol of a job, declared once: every subject (`dw.<job>.…`), who sends and who
// receives it, the message and reply shapes (TypeScript types, and a parser per message that
// the handlers run, so a malformed request is an InvalidArgumentError naming the field), the
// idempotency-key rule, and the default timeout and retries of a request. The job's subject
// names (subjects.ts, `bus.subjects`), the typed clients (src/bus/clients.ts) and
// scripts/wire-table.ts are derived from PROTOCOL below. Pure: no NATS client here.
//
// Kinds: `request` = request/reply with retries under one idempotency key (see bus/core.ts);
// `publish` = fire-and-forget to one kind of subscriber; `broadcast` = fire-and-forget that
// any number of subscribers read (heartbeats, epoch announcements).

import { InvalidArgumentError } from '../errors.ts';
import { checkId, validateSampleRef, type SampleRef } from './sampleref.ts';

// ------------------------------------------------------------------ message and reply types

/** The singleton roles: each runs on the one node that holds its leader lease (KV `role.<role>`). */
export const ROLES = ['coordinator', 'queue', 'janitor', 'rollout'] as const;
export type Role = (typeof ROLES)[number];

/**
 * A role's leader lease (KV key `role.<role>` of the job's bucket): who holds it and under
 * which term. Written only by compare-and-set; the term grows by one at each change of
 * holder; `node: null` is a lease released by its holder (anyone may take it at once).
 */
export interface RoleLeaseRecord { role: Role; term: number; node: string | null; host: string; pid: number; incarnation: string; ttlMs: number; at: number }

/** The job's epoch record (KV key `epoch`; announced on `ctl.epoch`). See src/job/epoch.ts. */
export interface EpochInfo { epoch: number; partitions: number; members?: number[]; cellSize?: number }

export interface CommitRequest { ref: SampleRef }
export interface CommitReply { sampleId: string; generation: number; status: 'added' | 'replaced' | 'duplicate' }
export interface CreditRequest { consumer: string; partition: [number, number]; epoch: number; max: number; leaseMs?: number }
/**
 * `budget`: the samples the job trains in all once they are consumed or dead (a fixed job's
 * steps·batch·dp; an external job's committed count once its input closed), null while an
 * external job's input is open (more may come).
 */
export interface CreditReply { epoch: number; num: number; depth: number; consumed: number; dead: number; committed: number; partitionPending: number; budget: number | null }
export interface LeaseRequest { leaseId: string; epoch: number }
export interface LeaseReply { leaseId: string; sampleId: string; status: string }
/** Up to BATCH_MAX refs committed by one request (`queue.commits`), each as `queue.commit` would. */
export interface CommitsRequest { refs: SampleRef[] }
/** Up to BATCH_MAX leases acked by one request (`queue.acks`): a step's leases. */
export interface AcksRequest { leases: LeaseRequest[] }
/** One answer per item of a batch, in order: its reply, or the typed error that refused it (error-codec's wire form). */
export type ItemResult<R> = { ok: R } | { error: { code: string; message: string; retryable: boolean; detail?: Record<string, unknown> } };
export interface BatchReply<R> { results: ItemResult<R>[] }
/** The most items one batched request carries (a ref is under 1 KiB: a batch stays far below NATS' 1 MiB payload). */
export const BATCH_MAX = 256;
export interface RenewReply { leaseId: string; deadline: number }
export interface FailRequest { leaseId: string; epoch: number; retryable: boolean; reason: string }
export interface RevokeRequest { consumer: string; beforeEpoch?: number }
export interface RevokeReply { revoked: number; dead: number }
export type Empty = Record<string, never>;
export interface QueueStatus {
  samples: number; pending: number; leased: number; consumed: number; dead: number; acks: number; leasesGranted: number; expired: number;
  epoch: number; num: number; depth: number; inFlight: number; incarnation: number; commitsPerSec: number; acksPerSec: number;
  /** See CreditReply.budget; `input`: an external job's producers and whether its input closed (null for a job with its own rollout). */
  budget: number | null;
  input: { open: string[]; ended: string[]; closed: { reason: string; samples: number } | null } | null;
  /** Write-ahead log records appended by this incarnation and the events they held (group commit: events per record). */
  wal?: { records: number; events: number };
  /** Ledger rebuilds from the log after a failed append (the actor's restarts are `incarnation`). */
  rebuilds?: number;
  credits: { consumer: string; partition: [number, number]; epoch: number; remaining: number; leaseMs: number | null }[];
  leases: Lease[];
  [k: string]: unknown;
}
/** `prefix`: only the sample ids that start with it (a producer asks for its own). */
export interface CommittedRequest { prefix?: string }
export interface CommittedReply { sampleIds: string[] }
/** Samples a node's store holds (at most FINISHED_MAX per request); see `queue.finished`. */
export interface FinishedRequest { samples: { sampleId: string; generation: number }[] }
/**
 * Those of the asked samples no reader will ever need: the ledger consumed or dead-lettered
 * the sample at the asked generation or a newer one (whichever store holds the ledger's copy).
 */
export interface FinishedReply { finished: { sampleId: string; generation: number; why: 'consumed' | 'dead' }[] }
export const FINISHED_MAX = 1000;
/** A producer of an external job's input opens (at its start) or declares its end. */
export interface InputRequest { producer: string; state: 'open' | 'end'; incarnation: number }
export interface InputReply { producer: string; state: 'open' | 'ended'; closed: boolean; committed: number; budget: number | null }
/** `at` makes two scale requests with the same dp two requests (an operator may repeat one). */
export interface ScaleRequest { dp: number; at?: number }
export interface ScaleReply { from: EpochInfo; to: EpochInfo; changed?: boolean; spawned: { rank: number; node: string }[]; retiring: number[] }
/** `by`: 'rank' (its collective group failed; retried under one key) or 'node' (it lost the rank's process). */
export interface RegroupRequest { fromEpoch?: number; rank?: number; remove?: number; by?: 'rank' | 'node' }
/** `reassigned`: to a node's regroup for a rank the coordinator gave to another node meanwhile (that node was unreachable): do not respawn it. */
export interface RegroupReply { from: EpochInfo; to: EpochInfo; changed: boolean; reassigned?: { node: string; epoch: number } }
export interface CoordStatus {
  epoch: EpochInfo | null; deadAfterMs: number; deaths: { rank: number; pid: number; at: number; silentMs: number }[];
  /** Orphaned ranks (their node gone) this coordinator reassigned. */
  reassigned?: number;
  nodes: { node: string; pid: number; lastSeen: number; ranks: number[]; alive: boolean }[];
  members: { rank: number; pid: number; node: string | null; step: number; state: string; held: number; epoch: number; dead: boolean; deaths: number; alive: boolean; silentMs: number; member: boolean }[];
}
export interface JanitorStatus { freed: number; aborted: number; sweeps: number; lastGc: unknown; usage: { bytes: number; samples: number; [k: string]: unknown } }
export interface SpawnRequest { rank: number; minEpoch: number }
export interface SpawnReply { pid: number | null }
export interface StopRequest { rank: number }
export interface StopReply { stopped: boolean }
/** What a rank (its cell leader) receives on `part.<num>.<index>`. */
/** A lease as the queue grants it (the ledger's record of it, and what a rank receives on `part.*`). */
export interface Lease {
  leaseId: string;
  sampleId: string;
  ref: SampleRef;
  epoch: number;
  consumer: string;
  deadline: number;
  /** Which delivery this is (1 = first). */
  delivery: number;
}

export interface LeaseMessage { consumer: string; leases: Lease[] }
export interface StoreFree { ref: SampleRef; why: 'consumed' | 'dead' }
export interface DeadRank { rank: number; pid: number; silentMs: number }
/**
 * A heartbeat. `at` (sender's clock, ms) and `seq` (per sending process, from 1) order the
 * beats of one sender: a receiver ignores one not newer than the last it took (a replay).
 */
/**
 * A rank's running totals since its process started (the node's /metrics exports them as
 * counters): steps, samples, tokens; seconds stepping, of them waiting for and fetching
 * features (data) and in the step itself (compute); bytes fetched over the data plane.
 */
export interface RankCounters { steps: number; samples: number; tokens: number; stepSeconds: number; dataSeconds: number; computeSeconds: number; fetchedBytes: number }
export const RANK_COUNTERS = ['steps', 'samples', 'tokens', 'stepSeconds', 'dataSeconds', 'computeSeconds', 'fetchedBytes'] as const satisfies readonly (keyof RankCounters)[];
export interface RankHeartbeat { kind?: 'rank'; rank: number; pid: number; node?: string | null; step: number; state: string; held: number; epoch: number; index?: number; dp?: number; at: number; seq?: number; counters?: RankCounters }
export interface NodeHeartbeat { kind: 'node'; node: string; pid: number; ranks: number[]; at: number; seq?: number }
export type Heartbeat = RankHeartbeat | NodeHeartbeat;
export interface StepMetrics {
  rank: number; step: number; loss: number; gradNorm: number; ploss: number[]; acc: number[];
  /** stepMs: fetching the batch's features and the step; of it fetchMs the fetch (absent from older ranks); waitMs: waiting for leases. */
  samples: number; tokens: number; stepMs: number; waitMs: number; fetchMs?: number; acceptLength: number | null; at: number;
  /** The data-parallel width and epoch the step ran at. */
  dp: number; epoch: number;
}
export interface RankDone { rank: number; step: number; samples: number; checkpoint: string }

// ------------------------------------------------------------------ field parsers

type Obj = Record<string, unknown>;

function map(x: unknown, what: string): Obj {
  if (x === null || typeof x !== 'object' || Array.isArray(x)) throw new InvalidArgumentError(`${what}: message must be a map, got ${x === null ? 'null' : Array.isArray(x) ? 'an array' : typeof x}`);
  return x as Obj;
}
const show = (v: unknown) => (typeof v === 'string' ? JSON.stringify(v.slice(0, 40)) : Array.isArray(v) ? 'an array' : String(v));
function bad(what: string, field: string, want: string, v: unknown): never {
  throw new InvalidArgumentError(`${what}: ${field} must be ${want}, got ${show(v)}`, { detail: { field } });
}
function str(m: Obj, f: string, what: string, nonEmpty = true): string {
  const v = m[f];
  if (typeof v !== 'string' || (nonEmpty && v.length === 0) || v.length > 256) bad(what, f, nonEmpty ? 'a non-empty string' : 'a string', v);
  return v;
}
function uint(m: Obj, f: string, what: string): number {
  const v = m[f];
  if (!Number.isSafeInteger(v) || (v as number) < 0) bad(what, f, 'an integer >= 0', v);
  return v as number;
}
function num(m: Obj, f: string, what: string): number {
  const v = m[f];
  if (typeof v !== 'number' || !Number.isFinite(v)) bad(what, f, 'a finite number', v);
  return v;
}
const opt = <T>(m: Obj, f: string, p: (m: Obj, f: string, what: string) => T, what: string): T | undefined => (m[f] === undefined ? undefined : p(m, f, what));
function uints(m: Obj, f: string, what: string): number[] {
  const v = m[f];
  if (!Array.isArray(v) || !v.every((x) => Number.isSafeInteger(x) && x >= 0)) bad(what, f, 'a list of integers >= 0', v);
  return v as number[];
}

const parseEmpty = (x: unknown, what: string): Empty => { if (x !== undefined && x !== null) map(x, what); return {}; };
/** A batch's list field: an array of 1..BATCH_MAX items. */
function list(m: Record<string, unknown>, field: string, what: string): unknown[] {
  const v = m[field];
  if (!Array.isArray(v) || v.length < 1 || v.length > BATCH_MAX) bad(what, field, `a list of 1..${BATCH_MAX} items`, v);
  return v as unknown[];
}
const parseLease = (what: string) => (x: unknown): LeaseRequest => { const m = map(x, what); return { leaseId: str(m, 'leaseId', what), epoch: uint(m, 'epoch', what) }; };

export function parseEpochInfo(x: unknown, what = 'epoch record'): EpochInfo {
  const m = map(x, what);
  const e: EpochInfo = { epoch: uint(m, 'epoch', what), partitions: uint(m, 'partitions', what) };
  if (m.members !== undefined) e.members = uints(m, 'members', what);
  if (m.cellSize !== undefined) e.cellSize = uint(m, 'cellSize', what);
  return e;
}

export function parseHeartbeat(x: unknown): Heartbeat {
  const w = 'heartbeat';
  const m = map(x, w);
  const seq = opt(m, 'seq', uint, w);
  if (m.kind === 'node') {
    return { kind: 'node', node: str(m, 'node', w), pid: uint(m, 'pid', w), ranks: Array.isArray(m.ranks) ? m.ranks.filter((r) => Number.isSafeInteger(r) && r >= 0) as number[] : [], at: num(m, 'at', w), ...(seq !== undefined ? { seq } : {}) };
  }
  return {
    rank: uint(m, 'rank', w), pid: uint(m, 'pid', w), node: typeof m.node === 'string' ? m.node : null, step: Number(m.step), state: String(m.state),
    held: Number(m.held), epoch: Number(m.epoch), at: num(m, 'at', w), ...(seq !== undefined ? { seq } : {}),
    ...(m.index !== undefined ? { index: Number(m.index) } : {}), ...(m.dp !== undefined ? { dp: Number(m.dp) } : {}),
    ...(m.counters !== undefined ? { counters: parseCounters(m.counters) } : {}),
  };
}

function parseCounters(x: unknown): RankCounters {
  const w = 'heartbeat counters', m = map(x, w);
  const out = {} as RankCounters;
  for (const f of RANK_COUNTERS) { const v = num(m, f, w); if (v < 0) bad(w, f, 'a number >= 0', v); out[f] = v; }
  return out;
}

// ------------------------------------------------------------------ the table

export type Kind = 'request' | 'publish' | 'broadcast';

export interface Endpoint<Req, Rep, P extends unknown[] = []> {
  /** Pattern relative to `dw.<job>.`, parameters in angle brackets. */
  readonly pattern: string;
  readonly kind: Kind;
  readonly publisher: string;
  readonly subscriber: string;
  /**
   * The singleton roles whose term fences this endpoint (src/bus/terms.ts): `from`, the role
   * that sends the message or request (stamped with its term when it holds the lease); `to`,
   * the role that answers a request (its reply is stamped). Receivers refuse an older term.
   */
  readonly roles?: { readonly from?: Role; readonly to?: Role };
  /** Fields of the request (or message) and of the reply, for the docs: `name: type`. */
  readonly fields: { readonly request: readonly string[]; readonly reply: readonly string[] };
  /** Validates what arrives; throws InvalidArgumentError naming the field. */
  readonly parse: (x: unknown) => Req;
  /** The idempotency key of a request (the same on every retry); null: a fresh key each call. */
  readonly key: ((req: Req) => string | null) | null;
  /** Human form of the key rule, for the docs. */
  readonly keyRule: string;
  readonly timeoutMs: number;
  readonly retries: number;
  /** Whether a retryable error reply is retried within `retries` (see RequestOptions.retryErrors); default no. */
  readonly retryErrors?: boolean;
  /** Builds the concrete subject tail from the parameters (validated). */
  readonly tail: (...params: P) => string;
  /** Phantom: the reply type (never set at run time). */
  readonly reply?: Rep;
}

const TOKEN_RE = /^[A-Za-z0-9_-]{1,64}$/;
export function token(x: unknown, what: string): string {
  if (typeof x !== 'string' || !TOKEN_RE.test(x)) throw new InvalidArgumentError(`${what} must be 1..64 characters of [A-Za-z0-9_-], got ${JSON.stringify(x)}`);
  return x;
}
function count(x: number, what: string): number {
  if (!Number.isSafeInteger(x) || x < 0) throw new InvalidArgumentError(`${what} must be a non-negative integer, got ${x}`);
  return x;
}

type Decl<Req, Rep, P extends unknown[]> = Omit<Endpoint<Req, Rep, P>, 'tail' | 'reply' | 'kind'> & { tail?: (...p: P) => string };
const build = <Req, Rep, P extends unknown[]>(e: Decl<Req, Rep, P>, kind: Kind) => Object.freeze({ ...e, kind, tail: e.tail ?? ((() => e.pattern) as unknown as (...p: P) => string) });
/** A request/reply endpoint. */
function rq<Req, Rep, P extends unknown[] = []>(e: Decl<Req, Rep, P>): Endpoint<Req, Rep, P> & { kind: 'request' } {
  return build(e, 'request') as Endpoint<Req, Rep, P> & { kind: 'request' };
}
/** A fire-and-forget message. */
function ev<M, P extends unknown[] = []>(kind: 'publish' | 'broadcast', e: Decl<M, void, P>): Endpoint<M, void, P> & { kind: 'publish' | 'broadcast' } {
  return build(e, kind) as Endpoint<M, void, P> & { kind: 'publish' | 'broadcast' };
}
export const PROTOCOL = Object.freeze({
  'queue.commit': rq<CommitRequest, CommitReply>({
    pattern: 'queue.commit', publisher: 'rollout (any producer)', subscriber: 'queue', roles: { from: 'rollout', to: 'queue' },
    fields: { request: ['ref: SampleRef'], reply: ['sampleId: string', 'generation: uint', "status: 'added' | 'replaced' | 'duplicate'"] },
    parse: (x) => { const m = map(x, 'commit'); if (m.ref === undefined) bad('commit', 'ref', 'a SampleRef', undefined); return { ref: validateSampleRef(m.ref) }; },
    key: (r) => `commit:${r.ref.sampleId}:${r.ref.generation}`, keyRule: 'commit:<sampleId>:<generation>', timeoutMs: 5000, retries: 20,
  }),
  'queue.commits': rq<CommitsRequest, BatchReply<CommitReply>>({
    pattern: 'queue.commits', publisher: 'rollout (any producer)', subscriber: 'queue', roles: { from: 'rollout', to: 'queue' },
    fields: { request: [`refs: SampleRef[] (1..${BATCH_MAX})`], reply: ['results: ({ok: commit reply} | {error: wire error})[], one per ref, in order'] },
    parse: (x) => ({ refs: list(map(x, 'commits'), 'refs', 'commits').map((r, i) => { try { return validateSampleRef(r); } catch (e) { return bad('commits', `refs[${i}]`, `a SampleRef (${(e as Error).message})`, undefined); } }) }),
    key: null, keyRule: 'none (each ref keeps commit:<sampleId>:<generation> in the ledger)', timeoutMs: 5000, retries: 20,
  }),
  'queue.credit': rq<CreditRequest, CreditReply>({
    pattern: 'queue.credit', publisher: 'rank (cell leader)', subscriber: 'queue', roles: { to: 'queue' },
    fields: { request: ['consumer: string', 'partition: [index, num]', 'epoch: uint', 'max: uint', 'leaseMs?: number'], reply: ['epoch', 'num', 'depth', 'consumed', 'dead', 'committed', 'partitionPending', 'budget: uint | null (null: an open input)'] },
    parse: (x) => {
      const w = 'credit', m = map(x, w), p = m.partition;
      if (!Array.isArray(p) || p.length !== 2 || !p.every((v) => Number.isSafeInteger(v) && v >= 0) || p[0] >= p[1]) bad(w, 'partition', '[index, num] with index < num', p);
      const leaseMs = typeof m.leaseMs === 'number' ? m.leaseMs : undefined;
      return { consumer: str(m, 'consumer', w), partition: [p[0] as number, p[1] as number], epoch: uint(m, 'epoch', w), max: uint(m, 'max', w), ...(leaseMs !== undefined ? { leaseMs } : {}) };
    },
    key: null, keyRule: 'none (a credit replaces the previous one)', timeoutMs: 3000, retries: 2,
  }),
  'queue.ack': rq<LeaseRequest, LeaseReply>({
    pattern: 'queue.ack', publisher: 'rank (cell leader)', subscriber: 'queue', roles: { to: 'queue' },
    fields: { request: ['leaseId: string', 'epoch: uint'], reply: ['leaseId', 'sampleId', "status: 'acked' | …"] },
    parse: parseLease('ack'), key: (r) => `ack:${r.leaseId}`, keyRule: 'ack:<leaseId>', timeoutMs: 3000, retries: 10,
  }),
  'queue.acks': rq<AcksRequest, BatchReply<LeaseReply>>({
    pattern: 'queue.acks', publisher: 'rank (cell leader)', subscriber: 'queue', roles: { to: 'queue' },
    fields: { request: [`leases: {leaseId, epoch}[] (1..${BATCH_MAX})`], reply: ['results: ({ok: ack reply} | {error: wire error})[], one per lease, in order'] },
    parse: (x) => ({ leases: list(map(x, 'acks'), 'leases', 'acks').map((l, i) => parseLease(`acks leases[${i}]`)(l)) }),
    key: null, keyRule: 'none (each lease keeps ack:<leaseId> in the ledger)', timeoutMs: 3000, retries: 10,
  }),
  'queue.release': rq<LeaseRequest, LeaseReply>({
    pattern: 'queue.release', publisher: 'rank (cell leader)', subscriber: 'queue', roles: { to: 'queue' },
    fields: { request: ['leaseId: string', 'epoch: uint'], reply: ['leaseId', 'sampleId', "status: 'released' | …"] },
    parse: parseLease('release'), key: (r) => `release:${r.leaseId}`, keyRule: 'release:<leaseId>', timeoutMs: 3000, retries: 5,
  }),
  'queue.renew': rq<LeaseRequest, RenewReply>({
    pattern: 'queue.renew', publisher: 'rank (cell leader)', subscriber: 'queue', roles: { to: 'queue' },
    fields: { request: ['leaseId: string', 'epoch: uint'], reply: ['leaseId', 'deadline: ms'] },
    // Every renewal must run (each extends the deadline), so no key repeats across calls.
    parse: parseLease('renew'), key: null, keyRule: 'none (each renewal extends the deadline)', timeoutMs: 2000, retries: 1,
  }),
  'queue.fail': rq<FailRequest, LeaseReply>({
    pattern: 'queue.fail', publisher: 'rank (cell leader)', subscriber: 'queue', roles: { to: 'queue' },
    fields: { request: ['leaseId: string', 'epoch: uint', 'retryable: boolean (default true)', 'reason: string'], reply: ['leaseId', 'sampleId', "status: 'pending' | 'dead'"] },
    parse: (x) => { const w = 'fail', m = map(x, w); return { leaseId: str(m, 'leaseId', w), epoch: uint(m, 'epoch', w), retryable: m.retryable !== false, reason: String(m.reason ?? '').slice(0, 500) }; },
    key: (r) => `fail:${r.leaseId}`, keyRule: 'fail:<leaseId>', timeoutMs: 2000, retries: 5,
  }),
  'queue.revoke': rq<RevokeRequest, RevokeReply>({
    pattern: 'queue.revoke', publisher: 'node agent (its rank process exited)', subscriber: 'queue', roles: { to: 'queue' },
    fields: { request: ['consumer: string', 'beforeEpoch?: uint'], reply: ['revoked: uint', 'dead: uint'] },
    parse: (x) => { const w = 'revoke', m = map(x, w); const b = opt(m, 'beforeEpoch', uint, w); return { consumer: str(m, 'consumer', w), ...(b !== undefined ? { beforeEpoch: b } : {}) }; },
    key: null, keyRule: 'none (revoking twice is a no-op)', timeoutMs: 10_000, retries: 3,
  }),
  'queue.status': rq<Empty, QueueStatus>({
    pattern: 'queue.status', publisher: 'CLI, ranks', subscriber: 'queue', roles: { to: 'queue' },
    fields: { request: [], reply: ['ledger stats', 'depth', 'inFlight', 'incarnation', 'commitsPerSec', 'acksPerSec', 'credits[]', 'leases[]'] },
    parse: (x) => parseEmpty(x, 'queue status'), key: null, keyRule: 'none (read-only)', timeoutMs: 2000, retries: 2,
  }),
  'queue.committed': rq<CommittedRequest, CommittedReply>({
    pattern: 'queue.committed', publisher: 'rollout, producers (on start)', subscriber: 'queue', roles: { to: 'queue' },
    fields: { request: ['prefix?: string'], reply: ['sampleIds: string[]'] },
    parse: (x) => {
      const w = 'queue committed';
      if (x === undefined || x === null) return {};
      const prefix = opt(map(x, w), 'prefix', (m, f) => str(m, f, w, false), w);
      return prefix !== undefined ? { prefix } : {};
    },
    key: null, keyRule: 'none (read-only)', timeoutMs: 5000, retries: 20,
  }),
  'queue.finished': rq<FinishedRequest, FinishedReply>({
    pattern: 'queue.finished', publisher: 'node agent (reconciling its store)', subscriber: 'queue', roles: { to: 'queue' },
    fields: { request: [`samples: {sampleId, generation}[] (1..${FINISHED_MAX})`], reply: ["finished: {sampleId, generation, why: 'consumed' | 'dead'}[] (the ledger finished the sample: no copy of it, at any generation, is read again)"] },
    parse: (x) => {
      const w = 'queue finished', m = map(x, w);
      if (!Array.isArray(m.samples) || m.samples.length < 1 || m.samples.length > FINISHED_MAX) bad(w, 'samples', `a list of 1..${FINISHED_MAX} samples`, m.samples);
      const samples = (m.samples as unknown[]).map((e, i) => {
        const item = map(e, `${w} samples[${i}]`);
        let sampleId: string;
        try { sampleId = checkId(item.sampleId, 'sampleId'); } catch { bad(`${w} samples[${i}]`, 'sampleId', 'an id ([A-Za-z0-9._:-]{1,200})', item.sampleId); }
        return { sampleId, generation: uint(item, 'generation', `${w} samples[${i}]`) };
      });
      return { samples };
    },
    key: null, keyRule: 'none (read-only)', timeoutMs: 5000, retries: 2,
  }),
  'queue.input': rq<InputRequest, InputReply>({
    pattern: 'queue.input', publisher: 'producer (run --rollout external)', subscriber: 'queue', roles: { to: 'queue' },
    fields: { request: ['producer: id', "state: 'open' | 'end'", 'incarnation: uint (which start of the producer)'], reply: ['producer', "state: 'open' | 'ended'", 'closed: boolean', 'committed: uint', 'budget: uint | null'] },
    parse: (x) => {
      const w = 'input', m = map(x, w);
      if (m.state !== 'open' && m.state !== 'end') bad(w, 'state', '"open" or "end"', m.state);
      let producer: string;
      try { producer = checkId(m.producer, 'producer'); } catch { bad(w, 'producer', 'an id ([A-Za-z0-9._:-]{1,200})', m.producer); }
      return { producer, state: m.state, incarnation: uint(m, 'incarnation', w) };
    },
    key: (r) => `input:${r.producer}:${r.state}:${r.incarnation}`, keyRule: 'input:<producer>:<state>:<incarnation>', timeoutMs: 5000, retries: 20,
  }),
  'coord.scale': rq<ScaleRequest, ScaleReply>({
    pattern: 'coord.scale', publisher: 'CLI `scale`', subscriber: 'coordinator', roles: { to: 'coordinator' },
    fields: { request: ['dp: uint >= 1', 'at?: ms (the asker\'s clock)'], reply: ['from: EpochInfo', 'to: EpochInfo', 'spawned: {rank, node}[]', 'retiring: uint[]'] },
    parse: (x) => {
      const m = map(x, 'scale');
      if (!Number.isInteger(m.dp)) throw new InvalidArgumentError('scale: needs dp (an integer >= 1)', { detail: { field: 'dp' } });
      const at = opt(m, 'at', num, 'scale');
      return { dp: m.dp as number, ...(at !== undefined ? { at } : {}) };
    },
    key: (r) => `scale:${r.dp}:${r.at ?? Date.now()}`, keyRule: 'scale:<dp>:<at>', timeoutMs: 10_000, retries: 5, retryErrors: true,
  }),
  'coord.regroup': rq<RegroupRequest, RegroupReply>({
    pattern: 'coord.regroup', publisher: 'rank (group failed), node agent (rank lost)', subscriber: 'coordinator', roles: { to: 'coordinator' },
    fields: { request: ['fromEpoch?: uint', 'rank?: uint', 'remove?: uint (a rank id)', "by?: 'rank' | 'node'"], reply: ['from: EpochInfo', 'to: EpochInfo', 'changed: boolean', 'reassigned?: {node, epoch} (the rank went to another node)'] },
    parse: (x) => {
      const m = map(x, 'regroup');
      if (m.fromEpoch !== undefined && !Number.isInteger(m.fromEpoch)) throw new InvalidArgumentError('regroup: fromEpoch must be an integer', { detail: { field: 'fromEpoch' } });
      if (m.remove !== undefined && !Number.isInteger(m.remove)) throw new InvalidArgumentError('regroup: remove must be a rank id (integer)', { detail: { field: 'remove' } });
      if (m.rank !== undefined && !Number.isInteger(m.rank)) throw new InvalidArgumentError('regroup: rank must be an integer', { detail: { field: 'rank' } });
      if (m.by !== undefined && m.by !== 'rank' && m.by !== 'node') bad('regroup', 'by', "'rank' or 'node'", m.by);
      return { ...(m.fromEpoch !== undefined ? { fromEpoch: m.fromEpoch as number } : {}), ...(m.rank !== undefined ? { rank: m.rank as number } : {}),
        ...(m.remove !== undefined ? { remove: m.remove as number } : {}), ...(m.by !== undefined ? { by: m.by as 'rank' | 'node' } : {}) };
    },
    // A rank retries its own regroup under one key; a node's request for a lost rank is never
    // deduped (two losses of one rank are two regroups).
    key: (r) => (r.by !== 'node' && r.rank !== undefined && r.fromEpoch !== undefined ? `regroup:${r.rank}:${r.fromEpoch}` : null),
    keyRule: "regroup:<rank>:<fromEpoch> (by a rank); none (by a node)", timeoutMs: 10_000, retries: 5,
  }),
  'coord.status': rq<Empty, CoordStatus>({
    pattern: 'coord.status', publisher: 'CLI, tests', subscriber: 'coordinator', roles: { to: 'coordinator' },
    fields: { request: [], reply: ['epoch: EpochInfo | null', 'deadAfterMs', 'deaths[]', 'nodes[]', 'members[]'] },
    parse: (x) => parseEmpty(x, 'coord status'), key: null, keyRule: 'none (read-only)', timeoutMs: 2000, retries: 1,
  }),
  'janitor.status': rq<Empty, JanitorStatus>({
    pattern: 'janitor.status', publisher: 'CLI', subscriber: 'janitor', roles: { to: 'janitor' },
    fields: { request: [], reply: ['freed', 'aborted', 'sweeps', 'lastGc', 'usage'] },
    parse: (x) => parseEmpty(x, 'janitor status'), key: null, keyRule: 'none (read-only)', timeoutMs: 2000, retries: 1,
  }),
  'node.spawn': rq<SpawnRequest, SpawnReply, [nodeId: string]>({
    pattern: 'node.<nodeId>.spawn', publisher: 'coordinator (scale up)', subscriber: 'node agent <nodeId>', roles: { from: 'coordinator' },
    fields: { request: ['rank: uint', 'minEpoch: uint (default 0)'], reply: ['pid: uint | null'] },
    parse: (x) => {
      const m = map(x, 'spawn');
      if (!Number.isInteger(m.rank) || (m.rank as number) < 0) throw new InvalidArgumentError('spawn: needs a rank (integer >= 0)', { detail: { field: 'rank' } });
      const minEpoch = m.minEpoch ?? 0;
      if (!Number.isInteger(minEpoch) || (minEpoch as number) < 0) throw new InvalidArgumentError('spawn: minEpoch must be an integer >= 0', { detail: { field: 'minEpoch' } });
      return { rank: m.rank as number, minEpoch: minEpoch as number };
    },
    key: (r) => `spawn:${r.rank}:${r.minEpoch}`, keyRule: 'spawn:<rank>:<minEpoch>', timeoutMs: 10_000, retries: 2,
    tail: (nodeId) => `node.${token(nodeId, 'node id')}.spawn`,
  }),
  'node.stop': rq<StopRequest, StopReply, [nodeId: string]>({
    pattern: 'node.<nodeId>.stop', publisher: 'operator tools', subscriber: 'node agent <nodeId>',
    fields: { request: ['rank: uint'], reply: ['stopped: boolean'] },
    parse: (x) => {
      const m = map(x, 'stop');
      if (!Number.isInteger(m.rank) || (m.rank as number) < 0) throw new InvalidArgumentError('stop: needs a rank (integer >= 0)', { detail: { field: 'rank' } });
      return { rank: m.rank as number };
    },
    // No key: a rank respawned and stopped again must really be stopped again.
    key: null, keyRule: 'none (stopping a stopped rank is a no-op)', timeoutMs: 10_000, retries: 1,
    tail: (nodeId) => `node.${token(nodeId, 'node id')}.stop`,
  }),
  'part': ev<LeaseMessage, [partitions: number, index: number]>('publish', {
    pattern: 'part.<partitions>.<index>', publisher: 'queue', subscriber: 'rank (cell leader of DP index <index>)', roles: { from: 'queue' },
    fields: { request: ['consumer: string', 'leases: Lease[] {leaseId, sampleId, ref, epoch, consumer, deadline, delivery}'], reply: [] },
    parse: (x) => { const m = map(x, 'leases'); if (!Array.isArray(m.leases)) bad('leases', 'leases', 'a list', m.leases); return { consumer: str(m, 'consumer', 'leases'), leases: m.leases as Lease[] }; },
    key: null, keyRule: '— (a lease is taken once, by leaseId)', timeoutMs: 0, retries: 0,
    tail: (n, index) => {
      count(n, 'partition count'); count(index, 'partition index');
      if (n < 1 || index >= n) throw new InvalidArgumentError(`partition index ${index} out of range for ${n} partitions`);
      return `part.${n}.${index}`;
    },
  }),
  'store.free': ev<StoreFree>('publish', {
    pattern: 'store.free', publisher: 'queue (acked or dead-lettered)', subscriber: 'janitor', roles: { from: 'queue' },
    fields: { request: ['ref: SampleRef', "why: 'consumed' | 'dead'"], reply: [] },
    parse: (x) => { const m = map(x, 'store.free'); return { ref: validateSampleRef(m.ref), why: m.why === 'dead' ? 'dead' : 'consumed' }; },
    key: null, keyRule: '— (freeing twice is a no-op)', timeoutMs: 0, retries: 0,
  }),
  'ctl.epoch': ev<EpochInfo>('broadcast', {
    pattern: 'ctl.epoch', publisher: 'coordinator (epoch CAS winner)', subscriber: 'ranks', roles: { from: 'coordinator' },
    fields: { request: ['epoch: uint', 'partitions: uint', 'members?: uint[]', 'cellSize?: uint'], reply: [] },
    parse: (x) => parseEpochInfo(x, 'ctl.epoch'), key: null, keyRule: '— (only a newer epoch counts)', timeoutMs: 0, retries: 0,
  }),
  'ctl.dead': ev<DeadRank>('broadcast', {
    pattern: 'ctl.dead', publisher: 'coordinator', subscriber: 'node agents', roles: { from: 'coordinator' },
    fields: { request: ['rank: uint', 'pid: uint', 'silentMs: number'], reply: [] },
    parse: (x) => { const w = 'ctl.dead', m = map(x, w); return { rank: uint(m, 'rank', w), pid: uint(m, 'pid', w), silentMs: Number(m.silentMs ?? 0) }; },
    key: null, keyRule: '— (kills only that pid)', timeoutMs: 0, retries: 0,
  }),
  'hb': ev<Heartbeat, [actor: string]>('broadcast', {
    pattern: 'hb.<actor>', publisher: 'ranks (rank-<id>), node agents (node-<id>)', subscriber: 'coordinator, node agents',
    fields: { request: ['rank: rank, pid, node?, step, state, held, epoch, index?, dp?, at, seq, counters?: RankCounters', "node: kind='node', node, pid, ranks[], at, seq"], reply: [] },
    parse: parseHeartbeat, key: null, keyRule: '— (older than the sender\'s last: ignored)', timeoutMs: 0, retries: 0,
    tail: (actor) => `hb.${token(actor, 'actor name')}`,
  }),
  'metrics': ev<StepMetrics>('broadcast', {
    pattern: 'metrics', publisher: 'rank (world rank 0)', subscriber: 'CLI `run`, node agents (live page)',
    fields: { request: ['rank', 'step', 'loss', 'gradNorm', 'ploss[]', 'acc[]', 'samples', 'tokens', 'stepMs', 'waitMs', 'fetchMs?', 'acceptLength', 'at', 'dp', 'epoch'], reply: [] },
    parse: (x) => { const w = 'metrics', m = map(x, w); uint(m, 'step', w); return m as unknown as StepMetrics; }, key: null, keyRule: '— (the last report of a step wins)', timeoutMs: 0, retries: 0,
  }),
  'rank.done': ev<RankDone>('broadcast', {
    pattern: 'rank.done', publisher: 'rank process (final checkpoint written)', subscriber: 'tests, tools',
    fields: { request: ['rank: uint', 'step: uint', 'samples: uint', 'checkpoint: path'], reply: [] },
    parse: (x) => { const w = 'rank.done', m = map(x, w); return { rank: uint(m, 'rank', w), step: uint(m, 'step', w), samples: uint(m, 'samples', w), checkpoint: str(m, 'checkpoint', w) }; },
    key: null, keyRule: '—', timeoutMs: 0, retries: 0,
  }),
});

export type Protocol = typeof PROTOCOL;
export type EndpointName = keyof Protocol;
export type RequestName = { [K in EndpointName]: Protocol[K] extends { kind: 'request' } ? K : never }[EndpointName];
export type ReqOf<K extends EndpointName> = Protocol[K] extends Endpoint<infer Q, any, any> ? Q : never;
export type RepOf<K extends EndpointName> = Protocol[K] extends Endpoint<any, infer R, any> ? R : never;
export type ParamsOf<K extends EndpointName> = Protocol[K] extends Endpoint<any, any, infer P> ? P : never;
/** Endpoints whose subject has no parameters. */
export type PlainName = { [K in EndpointName]: ParamsOf<K> extends [] ? K : never }[EndpointName];

/** Every subject of job `job` starts with this (`dw.<job>`). */
export const jobPrefix = (job: string): string => `dw.${token(job, 'job id')}`;

/** The concrete subject of endpoint `name` in job `job`. */
export function subjectOf<K extends EndpointName>(job: string, name: K, ...params: ParamsOf<K>): string {
  const e = PROTOCOL[name] as unknown as Endpoint<unknown, unknown, ParamsOf<K>>;
  return `${jobPrefix(job)}.${e.tail(...params)}`;
}

/** JetStream and KV names of a job. */
export const STORAGE = Object.freeze({
  kvBucket: (job: string) => `dw_${token(job, 'job id')}`,
  /** The coordinator's key of the bucket: the epoch record (EpochInfo). */
  epochKey: 'epoch',
  /** A role's leader lease (RoleLeaseRecord). */
  roleKey: (role: Role) => `role.${role}`,
  walStream: (job: string) => `dw_${token(job, 'job id')}_wal`,
  /** The object store bucket of a job's checkpoints (checkpointStore 'nats'). */
  ckptBucket: (job: string) => `dw_${token(job, 'job id')}_ckpt`,
  /** Keys of the job's KV bucket for those checkpoints: the manifest (the commit point), and a rank's window part. */
  ckptLatestKey: 'ckpt.latest',
  ckptPartKey: (step: number, epoch: number, index: number) => `ckpt.part.${step}.${epoch}.${index}`,
  walSubject: (job: string) => `dw.${token(job, 'job id')}.wal.ledger`,
  /** The same names as patterns, for the docs. */
  patterns: Object.freeze({ ckptBucket: 'dw_<job>_ckpt', ckptPartKey: 'ckpt.part.<step>.<epoch>.<rank>', roleKey: 'role.<role>', kvBucket: 'dw_<job>', walStream: 'dw_<job>_wal', walSubject: 'dw.<job>.wal.ledger' }),
});
