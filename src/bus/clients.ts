// Typed clients and handlers over the Bus, derived from the protocol table (wire/protocol.ts):
// a request goes to the table's subject with the table's idempotency key, timeout and retries
// (a caller may override the last two); a handler gets the request already parsed by the
// table's parser, and must return the table's reply type. So the compiler keeps both sides of
// every subject in agreement, and no subject string is written outside protocol.ts.

import {
  PROTOCOL, subjectOf, type Endpoint, type EndpointName, type ParamsOf, type RepOf, type ReqOf, type RequestName,
  type CommitReply, type CreditRequest, type CreditReply, type LeaseRequest, type LeaseReply, type RenewReply, type FailRequest,
  type RevokeRequest, type RevokeReply, type QueueStatus, type CommittedReply, type CommittedRequest, type InputRequest, type InputReply, type ScaleReply, type RegroupRequest, type RegroupReply,
  type CoordStatus, type JanitorStatus, type SpawnRequest, type SpawnReply, type StopRequest, type StopReply,
  type RankHeartbeat, type NodeHeartbeat, type StepMetrics, type RankDone, type DeadRank, type StoreFree, type LeaseMessage, type EpochInfo,
} from '../wire/protocol.ts';
import type { SampleRef } from '../wire/sampleref.ts';
import type { Bus, BusSubscription, MsgMeta, SubscribeOptions } from './bus.ts';

export interface CallOptions { timeoutMs?: number; retries?: number }
type Params<K extends EndpointName> = ParamsOf<K>;
const entry = (name: EndpointName) => PROTOCOL[name] as unknown as Endpoint<unknown, unknown, unknown[]>;

/** Sends request `name` (parameters `params` for a parametrised subject) under the table's key, timeout and retries. */
export function call<K extends RequestName>(bus: Bus, name: K, req: ReqOf<K>, opts: CallOptions = {}, ...params: Params<K>): Promise<RepOf<K>> {
  const e = entry(name);
  const key = e.key?.(req) ?? undefined;
  return bus.request<RepOf<K>>(subjectOf(bus.job, name, ...params), req, {
    timeoutMs: opts.timeoutMs ?? e.timeoutMs, retries: opts.retries ?? e.retries, ...(key ? { idempotencyKey: key } : {}),
  });
}

/** Answers request `name`: the handler gets the parsed request (a bad one is refused with InvalidArgumentError). */
export function serve<K extends RequestName>(bus: Bus, name: K, handler: (req: ReqOf<K>, meta: MsgMeta) => Promise<RepOf<K>> | RepOf<K>, opts: SubscribeOptions = {}, ...params: Params<K>): BusSubscription {
  const e = entry(name);
  return bus.subscribe(subjectOf(bus.job, name, ...params), (x: unknown, meta) => handler(e.parse(x) as ReqOf<K>, meta), opts);
}

/** Publishes message `name` (a publish or broadcast subject). */
export function announce<K extends Exclude<EndpointName, RequestName>>(bus: Bus, name: K, msg: ReqOf<K>, ...params: Params<K>): void {
  bus.publish(subjectOf(bus.job, name, ...params), msg);
}

/**
 * Receives message `name`; the handler gets it parsed. A malformed one is dropped (the Bus
 * counts and logs what a handler throws). `subject` overrides the subject (a wildcard such as
 * `bus.subjects.hbAll`).
 */
export function listen<K extends Exclude<EndpointName, RequestName>>(bus: Bus, name: K, handler: (msg: ReqOf<K>, meta: MsgMeta) => void | Promise<void>, o: { subject?: string; params?: Params<K> } = {}): BusSubscription {
  const e = entry(name);
  const subject = o.subject ?? subjectOf(bus.job, name, ...((o.params ?? []) as Params<K>));
  return bus.subscribe(subject, (x: unknown, meta) => handler(e.parse(x) as ReqOf<K>, meta), { dedupe: false });
}

// ------------------------------------------------------------------ per-actor clients

export class QueueClient {
  constructor(readonly bus: Bus) {}
  commit(ref: SampleRef, o?: CallOptions): Promise<CommitReply> { return call(this.bus, 'queue.commit', { ref }, o); }
  credit(req: CreditRequest, o?: CallOptions): Promise<CreditReply> { return call(this.bus, 'queue.credit', req, o); }
  ack(l: LeaseRequest, o?: CallOptions): Promise<LeaseReply> { return call(this.bus, 'queue.ack', { leaseId: l.leaseId, epoch: l.epoch }, o); }
  release(l: LeaseRequest, o?: CallOptions): Promise<LeaseReply> { return call(this.bus, 'queue.release', { leaseId: l.leaseId, epoch: l.epoch }, o); }
  renew(l: LeaseRequest, o?: CallOptions): Promise<RenewReply> { return call(this.bus, 'queue.renew', { leaseId: l.leaseId, epoch: l.epoch }, o); }
  fail(req: FailRequest, o?: CallOptions): Promise<LeaseReply> { return call(this.bus, 'queue.fail', req, o); }
  revoke(req: RevokeRequest, o?: CallOptions): Promise<RevokeReply> { return call(this.bus, 'queue.revoke', req, o); }
  status(o?: CallOptions): Promise<QueueStatus> { return call(this.bus, 'queue.status', {}, o); }
  committed(req: CommittedRequest = {}, o?: CallOptions): Promise<CommittedReply> { return call(this.bus, 'queue.committed', req, o); }
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
