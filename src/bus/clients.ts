// Typed clients and handlers over the Bus, derived from the protocol table (wire/protocol.ts):
// a request goes to the table's subject with the table's idempotency key, timeout and retries
// (a caller may override the last two); a handler gets the request already parsed by the
// table's parser, and must return the table's reply type. So the compiler keeps both sides of
// every subject in agreement, and no subject string is written outside protocol.ts.

import {
  PROTOCOL, subjectOf, type Endpoint, type EndpointName, type ParamsOf, type RepOf, type ReqOf, type RequestName,
  BATCH_MAX, type BatchReply, type CommitReply, type CreditRequest, type CreditReply, type LeaseRequest, type LeaseReply, type RenewReply, type FailRequest,
  type RevokeRequest, type RevokeReply, type QueueStatus, type CommittedReply, type CommittedRequest, type FinishedReply, type FinishedRequest, type InputRequest, type InputReply, type ScaleReply, type RegroupRequest, type RegroupReply,
  type CoordStatus, type JanitorStatus, type SpawnRequest, type SpawnReply, type StopRequest, type StopReply,
  type Role, type RankHeartbeat, type NodeHeartbeat, type StepMetrics, type RankDone, type DeadRank, type StoreFree, type LeaseMessage, type EpochInfo,
} from '../wire/protocol.ts';
import type { SampleRef } from '../wire/sampleref.ts';
import { errorFromWire } from '../wire/error-codec.ts';
import type { DraftwireError } from '../errors.ts';
import type { Bus, BusSubscription, MsgMeta, SubscribeOptions } from './bus.ts';

export interface CallOptions { timeoutMs?: number; retries?: number }
type Params<K extends EndpointName> = ParamsOf<K>;
const entry = (name: EndpointName) => PROTOCOL[name] as unknown as Endpoint<unknown, unknown, unknown[]>;

/** The message with this process's term of `role` in it, when it holds the role (see src/bus/terms.ts). */
function stamped<T>(bus: Bus, role: Role | undefined, msg: T): T {
  const term = role ? bus.terms.termOf(role) : undefined;
  return term !== undefined && msg !== null && typeof msg === 'object' && !Array.isArray(msg) ? { ...msg, term } : msg;
}
const termIn = (x: unknown): unknown => (x !== null && typeof x === 'object' ? (x as { term?: unknown }).term : undefined);

/** Sends request `name` (parameters `params` for a parametrised subject) under the table's key, timeout and retries. */
export function call<K extends RequestName>(bus: Bus, name: K, req: ReqOf<K>, opts: CallOptions = {}, ...params: Params<K>): Promise<RepOf<K>> {
  const e = entry(name);
  const key = e.key?.(req) ?? undefined;
  const to = e.roles?.to;
  return bus.request<RepOf<K>>(subjectOf(bus.job, name, ...params), stamped(bus, e.roles?.from, req), {
    timeoutMs: opts.timeoutMs ?? e.timeoutMs, retries: opts.retries ?? e.retries, ...(key ? { idempotencyKey: key } : {}),
    ...(e.retryErrors ? { retryErrors: true } : {}),
    // A reply from an old holder of the role (a term older than one seen) is not taken: the attempt is retried.
    ...(to ? { refuseReply: (r: unknown) => (bus.terms.admit(to, termIn(r)) ? null : `a reply of ${to} term ${String(termIn(r))}, older than term ${bus.terms.newestOf(to)}`) } : {}),
  });
}

/**
 * Answers request `name`: the handler gets the parsed request (a bad one is refused with
 * InvalidArgumentError; one from an old holder of the sending role with StaleTermError), and
 * its reply carries this process's term of the answering role.
 */
export function serve<K extends RequestName>(bus: Bus, name: K, handler: (req: ReqOf<K>, meta: MsgMeta) => Promise<RepOf<K>> | RepOf<K>, opts: SubscribeOptions = {}, ...params: Params<K>): BusSubscription {
  const e = entry(name);
  const subject = subjectOf(bus.job, name, ...params);
  const { from, to } = e.roles ?? {};
  return bus.subscribe(subject, async (x: unknown, meta) => {
    if (from) bus.terms.check(from, termIn(x), `request on ${subject}`);
    return stamped(bus, to, await handler(e.parse(x) as ReqOf<K>, meta));
  }, opts);
}

/** Publishes message `name` (a publish or broadcast subject), with this process's term of its sending role. */
export function announce<K extends Exclude<EndpointName, RequestName>>(bus: Bus, name: K, msg: ReqOf<K>, ...params: Params<K>): void {
  bus.publish(subjectOf(bus.job, name, ...params), stamped(bus, entry(name).roles?.from, msg));
}

/**
 * Receives message `name`; the handler gets it parsed. A malformed one, or one from an old
 * holder of its sending role, is dropped (the Bus counts and logs what a handler throws).
 * `subject` overrides the subject (a wildcard such as `bus.subjects.hbAll`).
 */
export function listen<K extends Exclude<EndpointName, RequestName>>(bus: Bus, name: K, handler: (msg: ReqOf<K>, meta: MsgMeta) => void | Promise<void>, o: { subject?: string; params?: Params<K> } = {}): BusSubscription {
  const e = entry(name);
  const subject = o.subject ?? subjectOf(bus.job, name, ...((o.params ?? []) as Params<K>));
  const from = e.roles?.from;
  return bus.subscribe(subject, (x: unknown, meta) => {
    if (from) bus.terms.check(from, termIn(x), `message on ${subject}`);
    return handler(e.parse(x) as ReqOf<K>, meta);
  }, { dedupe: false });
}

// ------------------------------------------------------------------ per-actor clients

/** Sends `items` in chunks of BATCH_MAX (concurrently) and flattens the answers, errors typed. */
async function batched<T, R>(items: T[], send: (chunk: T[]) => Promise<BatchReply<R>>, subject: string): Promise<(R | DraftwireError)[]> {
  const chunks: T[][] = [];
  for (let i = 0; i < items.length; i += BATCH_MAX) chunks.push(items.slice(i, i + BATCH_MAX));
  const replies = await Promise.all(chunks.map(send));
  return replies.flatMap((r) => r.results.map((x) => ('ok' in x ? x.ok : errorFromWire(x.error, subject))));
}

export class QueueClient {
  constructor(readonly bus: Bus) {}
  commit(ref: SampleRef, o?: CallOptions): Promise<CommitReply> { return call(this.bus, 'queue.commit', { ref }, o); }
  credit(req: CreditRequest, o?: CallOptions): Promise<CreditReply> { return call(this.bus, 'queue.credit', req, o); }
  ack(l: LeaseRequest, o?: CallOptions): Promise<LeaseReply> { return call(this.bus, 'queue.ack', { leaseId: l.leaseId, epoch: l.epoch }, o); }
  /** Commits refs in requests of up to BATCH_MAX: per ref its reply or the typed error that refused it, in order. */
  commitMany(refs: SampleRef[], o?: CallOptions): Promise<(CommitReply | DraftwireError)[]> {
    return batched(refs, (chunk) => call(this.bus, 'queue.commits', { refs: chunk }, o), subjectOf(this.bus.job, 'queue.commits'));
  }
  /** Acks leases (a step's) in requests of up to BATCH_MAX: per lease its reply or the typed error that refused it. */
  ackMany(leases: LeaseRequest[], o?: CallOptions): Promise<(LeaseReply | DraftwireError)[]> {
    return batched(leases.map((l) => ({ leaseId: l.leaseId, epoch: l.epoch })), (chunk) => call(this.bus, 'queue.acks', { leases: chunk }, o), subjectOf(this.bus.job, 'queue.acks'));
  }
  release(l: LeaseRequest, o?: CallOptions): Promise<LeaseReply> { return call(this.bus, 'queue.release', { leaseId: l.leaseId, epoch: l.epoch }, o); }
  renew(l: LeaseRequest, o?: CallOptions): Promise<RenewReply> { return call(this.bus, 'queue.renew', { leaseId: l.leaseId, epoch: l.epoch }, o); }
  fail(req: FailRequest, o?: CallOptions): Promise<LeaseReply> { return call(this.bus, 'queue.fail', req, o); }
  revoke(req: RevokeRequest, o?: CallOptions): Promise<RevokeReply> { return call(this.bus, 'queue.revoke', req, o); }
  status(o?: CallOptions): Promise<QueueStatus> { return call(this.bus, 'queue.status', {}, o); }
  committed(req: CommittedRequest = {}, o?: CallOptions): Promise<CommittedReply> { return call(this.bus, 'queue.committed', req, o); }
  finished(req: FinishedRequest, o?: CallOptions): Promise<FinishedReply> { return call(this.bus, 'queue.finished', req, o); }
  input(req: InputRequest, o?: CallOptions): Promise<InputReply> { return call(this.bus, 'queue.input', req, o); }
}

export class CoordinatorClient {
  constructor(readonly bus: Bus) {}
  /** `at` defaults to now: each scale request is its own (a retry of this call keeps it). */
  scale(dp: number, o?: CallOptions & { at?: number }): Promise<ScaleReply> { return call(this.bus, 'coord.scale', { dp, at: o?.at ?? Date.now() }, o); }
  regroup(req: RegroupRequest, o?: CallOptions): Promise<RegroupReply> { return call(this.bus, 'coord.regroup', req, o); }
  status(o?: CallOptions): Promise<CoordStatus> { return call(this.bus, 'coord.status', {}, o); }
}

export class JanitorClient {
  constructor(readonly bus: Bus) {}
  status(o?: CallOptions): Promise<JanitorStatus> { return call(this.bus, 'janitor.status', {}, o); }
}

export class NodeClient {
  constructor(readonly bus: Bus) {}
  spawn(nodeId: string, req: SpawnRequest, o?: CallOptions): Promise<SpawnReply> { return call(this.bus, 'node.spawn', req, o, nodeId); }
  stop(nodeId: string, req: StopRequest, o?: CallOptions): Promise<StopReply> { return call(this.bus, 'node.stop', req, o, nodeId); }
}

/** Heartbeats of one sending process: numbers them (`seq`) so a receiver can refuse a replay. */
export class HeartbeatPublisher {
  private seq = 0;
  constructor(readonly bus: Bus) {}
  rank(rank: number, hb: Omit<RankHeartbeat, 'rank' | 'seq' | 'at'> & { at?: number }): void {
    announce(this.bus, 'hb', { ...hb, rank, at: hb.at ?? Date.now(), seq: ++this.seq }, `rank-${rank}`);
  }
  node(nodeId: string, hb: Omit<NodeHeartbeat, 'kind' | 'node' | 'seq' | 'at'>): void {
    announce(this.bus, 'hb', { kind: 'node', node: nodeId, ...hb, at: Date.now(), seq: ++this.seq }, `node-${nodeId}`);
  }
}

/** The fire-and-forget messages of a job, typed. */
export const publish = {
  leases: (bus: Bus, partitions: number, index: number, m: LeaseMessage): void => announce(bus, 'part', m, partitions, index),
  storeFree: (bus: Bus, m: StoreFree): void => announce(bus, 'store.free', m),
  epoch: (bus: Bus, e: EpochInfo): void => announce(bus, 'ctl.epoch', e),
  dead: (bus: Bus, m: DeadRank): void => announce(bus, 'ctl.dead', m),
  metrics: (bus: Bus, m: StepMetrics): void => announce(bus, 'metrics', m),
  rankDone: (bus: Bus, m: RankDone): void => announce(bus, 'rank.done', m),
};
