// The queue actor: the single lease authority of a job (DESIGN.md §2). A thin adapter over
// the pure ledger (src/ledger.ts): each request mutates the ledger, the events are appended
// to the job's JetStream write-ahead log, and only then is the reply sent. After a crash or
// restart the actor rebuilds the ledger by replaying that stream, leases included.
// Credits are soft state: ranks re-send them, so they are not logged.
import type { ActorContext, ActorRef, ActorSpec, ActorSystem } from '../src/runtime/actor-system.ts';
import type { Bus, BusSubscription } from '../src/bus/bus.ts';
import { AuthError, BackpressureError, ConflictError, DecodeError, DraftwireError, InputClosedError, InvalidArgumentError, LeaseExpiredError, SchemaError, StaleEpochError, StaleGenerationError, UnavailableError } from '../src/errors.ts';
import { LeaseLedger, type Lease, type LedgerEvent, type LedgerOptions } from '../src/ledger/ledger.ts';
import type { EpochInfo } from '../src/job/epoch.ts';
import { rebuildLedger, WAL_RECORD, WalCorruptError } from '../src/ledger/wal.ts';
import { GroupCommit } from '../src/ledger/group-commit.ts';
import { failpoint } from '../src/failpoints.ts';
import { createLogger } from '../src/log.ts';
import { validateSampleRef, type SampleRef } from '../src/wire/sampleref.ts';
import {
  STORAGE, parseEpochInfo, type BatchReply, type ItemResult, type CommitReply, type CommittedReply, type FinishedReply, type FinishedRequest, type InputReply, type CreditReply, type LeaseMessage, type LeaseReply, type QueueStatus, type RenewReply, type RevokeReply,
} from '../src/wire/protocol.ts';
import { publish, serve } from '../src/bus/clients.ts';
import { errorToWire } from '../src/wire/error-codec.ts';
import { checkSampleRef, type SampleSchema } from '../src/wire/schema.ts';
import { commitPressure, inputCloseReason, sampleBudgetOf, type QueueInput } from '../src/ledger/input.ts';

export interface Credit { consumer: string; partition: [number, number]; epoch: number; remaining: number; leaseMs: number | null }

export type { LeaseMessage } from '../src/wire/protocol.ts';

export type QueueMsg =
  | { op: 'commit'; ref: unknown; key: string }
  | { op: 'credit'; consumer: string; partition: [number, number]; epoch: number; max: number; leaseMs?: number }
  | { op: 'ack' | 'release' | 'renew'; leaseId: string; epoch: number; key: string }
  | { op: 'fail'; leaseId: string; epoch: number; retryable: boolean; reason: string; key: string }
  | { op: 'epoch'; epoch: number; num: number }
  | { op: 'tick' }
  // Grants to the consumers with credit, once for every request queued before it (grantSoon).
  | { op: 'grant' }
  | { op: 'revoke'; consumer: string; beforeEpoch?: number }
  | { op: 'status' }
  | { op: 'committed'; prefix?: string }
  | { op: 'finished'; samples: FinishedRequest['samples'] }
  | { op: 'input'; producer: string; state: 'open' | 'end'; incarnation: number; key: string }
  // Several commits or acks in one message (queue.commits, queue.acks): one answer per item.
  | { op: 'batch'; items: (Extract<QueueMsg, { op: 'commit' }> | Extract<QueueMsg, { op: 'ack' | 'release' | 'renew' }>)[] };

interface QueueState {
  ledger: LeaseLedger | null; credits: Map<string, Credit>; grants: number; window: { at: number; puts: number; acks: number }[];
  /** The log holds a record replay cannot use (until the operator skips it): refused since `at`. */
  corrupt: { error: WalCorruptError; at: number } | null;
  /** An external input above its store watermark: new samples are refused until it drains (commitPressure). */
  pressured: boolean;
  /** A 'grant' message is in the mailbox. */
  grantDue: boolean;
}

export interface QueueActorOptions {
  bus: Bus;
  ledger?: LedgerOptions;
  /** How often expired leases are reclaimed, ms (default 500). */
  tickMs?: number;
  /** The job's sample schema: a commit whose ref does not match it is refused (SchemaError), nothing logged. */
  schema?: SampleSchema;
  /** Where the job's samples come from (its budget, and when an external input closes); absent: no budget is told. */
  input?: QueueInput;
  /** Told the seconds of each write-ahead log append (the node's metrics). */
  onWalAppend?: (seconds: number) => void;
  /** Write-ahead log records appended at once (default 4; 1: one at a time). */
  walPipeline?: number;
}

function isObj(x: unknown): x is Record<string, unknown> {
  return x !== null && typeof x === 'object' && !Array.isArray(x);
}

export function queueActorSpec(o: QueueActorOptions): ActorSpec<QueueState, QueueMsg> {
  const { bus } = o;
  const s = bus.subjects;
  const log = createLogger('queue');
  // One record per batch of requests, pipelined; each append names the record it follows
  // (GroupCommit's fence), so a second writer (an old holder of the queue role, resurrected)
  // makes the next append fail instead of interleaving two ledgers; the actor then rebuilds.
  const wal = new GroupCommit({
    append: async (events, fence) => {
      failpoint('queue.before-persist');
      const seq = await bus.append(s.walSubject, { f: WAL_RECORD, events }, {
        msgId: fence.msgId, ...('seq' in fence.after ? { expectedLastSeq: fence.after.seq } : { expectedLastMsgId: fence.after.msgId }),
      });
      // A crash here: the events are in the log, their replies never sent (the callers retry).
      failpoint('queue.after-persist');
      return seq;
    },
    ...(o.walPipeline !== undefined ? { maxInFlight: o.walPipeline } : {}),
    onAppend: (seconds) => o.onWalAppend?.(seconds),
    onWaiterError: (e) => log.error('a reply after a write-ahead log append threw', { error: e as Error }),
    lostError: (e) => e instanceof ConflictError
      ? new UnavailableError('the write-ahead log moved under this queue (another queue wrote to it): rebuilding the ledger; retry', { cause: e })
      : new UnavailableError(`the write-ahead log append failed (${(e as Error)?.message ?? String(e)}): the queue rebuilds its ledger; retry`, { cause: e }),
  });
  /** Sends once everything written so far is in the log (a lost append drops it: the ledger that decided it is rebuilt). */
  const after = (fn: () => void) => wal.then({ durable: fn, lost: () => {} });

  const input = o.input ?? null;
  /** The events that close an external input when its policy says so (logged with the call that triggered it). */
  const closeIfDue = (ledger: LeaseLedger, now: number): LedgerEvent[] => {
    const why = inputCloseReason(input, ledger.inputState(), ledger.stats().samples);
    return why ? ledger.closeInput(why, { key: `close:${why}`, now }).events : [];
  };
  const budget = (ledger: LeaseLedger) => sampleBudgetOf(input, ledger.inputState());
  const free = (ledger: LeaseLedger, sampleId: string, why: 'consumed' | 'dead') => {
    const ref = ledger.state(sampleId)!.ref;
    after(() => publish.storeFree(bus, { ref, why }));
  };

  const grantNow = (st: QueueState, ledger: LeaseLedger): void => {
    const now = Date.now();
    for (const c of st.credits.values()) {
      if (c.remaining <= 0 || ledger.depth() === 0) continue;
      if (c.epoch !== ledger.currentEpoch()) { st.credits.delete(c.consumer); continue; }
      let res;
      try {
        res = ledger.get(c.remaining, { partition: c.partition, consumer: c.consumer, epoch: c.epoch, key: `grant:${c.consumer}:${++st.grants}:${now}`, now, ...(c.leaseMs ? { leaseMs: c.leaseMs } : {}) });
      } catch (e) {
        if (e instanceof StaleEpochError) { st.credits.delete(c.consumer); continue; }
        throw e;
      }
      if (res.leases.length === 0) continue;
      wal.write(res.events);
      c.remaining -= res.leases.length;
      const msg: LeaseMessage = { consumer: c.consumer, leases: res.leases };
      after(() => publish.leases(bus, c.partition[1], c.partition[0], msg));
    }
  };
  /**
   * Grants once the requests already in the mailbox are applied: a burst of commits (a batch
   * of 64, or 16 producers at once) becomes one lease message per consumer with credit, not
   * one per sample (each message costs a MAC, a publish, and an ack request of its own).
   */
  const grantSoon = (st: QueueState, ledger: LeaseLedger, ctx: ActorContext<QueueMsg>): void => {
    if (st.grantDue) return;
    st.grantDue = true;
    try { ctx.system.dispatch(ctx.self, { op: 'grant' }); } catch { st.grantDue = false; grantNow(st, ledger); } // mailbox full: now
  };

  const fresh = (): QueueState => ({ ledger: null, credits: new Map(), grants: 0, window: [], corrupt: null, pressured: false, grantDue: false });
  /** Ledger rebuilds after a failed append (each one as good as a restart). */
  let rebuilds = 0;
  /**
   * The newest epoch this queue was told (the epoch watch tells each change once). Kept across
   * rebuilds and restarts: an epoch applied to a ledger whose append was then lost (another
   * queue wrote to the log) or told while the log was refused is re-applied to the rebuilt
   * one, or the queue would stay on the old epoch and refuse every rank of the new world.
   */
  let newestEpoch: { epoch: number; num: number } | null = null;
  return {
    init: fresh,
    async handle(st, msg, ctx: ActorContext<QueueMsg>) {
      // An append failed: the ledger may hold what the log does not (the waiters were told
      // their requests were lost). Start over from the log, as a restart would, and serve this
      // request from the rebuilt ledger.
      if (st.ledger && wal.failed) {
        ctx.log.warn('a write-ahead log append failed: rebuilding the ledger from the log', { error: wal.failed });
        st = fresh();
        rebuilds++;
      }
      if (msg.op === 'epoch' && msg.epoch > (newestEpoch?.epoch ?? -1)) newestEpoch = { epoch: msg.epoch, num: msg.num };
      const deferred = ctx.defer();
      // Every answer waits for the log to hold everything written before it, its own events
      // included: no caller learns of a state a crash could undo.
      const reply: Reply = (v) => wal.then({ durable: () => deferred.reply(v), lost: (e) => deferred.fail(e) });
      if (!st.ledger && !(await rebuild(st, msg, ctx, reply))) return st;
      try {
        apply(st, st.ledger!, msg, ctx, reply);
      } catch (e) {
        // A refusal by the ledger is an answer (the ledger did not change): reply with it.
        // Anything else (a bug) crashes the actor: the supervisor restarts it and it rebuilds
        // the ledger from the log.
        if (!isAnswer(e)) throw e;
        reply({ refused: e });
      }
      return st;
    },
    async afterStop() { await wal.idle(); },
  };

  /**
   * Rebuilds the ledger from the log, once the appends of the previous incarnation settled. A
   * bad record nobody skipped is not a crash (the supervisor would restart-loop on it): every
   * request is refused with WalCorruptError (not retryable, naming the stream seq) and the log
   * is re-read at most every 2 s, so the queue starts by itself once the operator runs
   * `draftwire wal skip`. Returns false while refusing.
   */
  async function rebuild(st: QueueState, msg: QueueMsg, ctx: ActorContext<QueueMsg>, reply: Reply): Promise<boolean> {
    if (!st.corrupt || Date.now() - st.corrupt.at >= 2000) {
      await wal.idle();
      try {
        const { ledger, replay } = await rebuildLedger(bus, o.ledger);
        st.ledger = ledger;
        wal.reset(replay.lastStreamSeq);
        st.corrupt = null;
        ctx.log.info('ledger rebuilt from the write-ahead log', { events: replay.events.length, skipped: replay.skipped.length, duplicates: replay.duplicates.length, ...ledger.stats() });
        if (replay.duplicates.length) ctx.log.warn('write-ahead log holds replayed copies of records; ignored', { streamSeqs: replay.duplicates.map((d) => d.streamSeq).slice(0, 20) });
      } catch (e) {
        if (!(e instanceof WalCorruptError)) throw e; // the log unreachable: crash, restart, retry
        if (!st.corrupt) ctx.log.error('queue refuses to start: the write-ahead log holds a bad record', { error: e });
        st.corrupt = { error: e, at: Date.now() };
      }
    }
    if (!st.ledger) { reply({ refused: st.corrupt!.error }); return false; }
    const held = newestEpoch;
    if (held && held.epoch > st.ledger.currentEpoch() && !(msg.op === 'epoch' && msg.epoch >= held.epoch)) {
      wal.write(st.ledger.setEpoch(held.epoch, { num: held.num, key: `epoch:${held.epoch}`, now: Date.now() }).events);
    }
    return true;
  }

  function apply(st: QueueState, ledger: LeaseLedger, msg: QueueMsg, ctx: ActorContext<QueueMsg>, reply: Reply): void {
    const now = Date.now();
    switch (msg.op) {
      case 'commit': {
        const ref: SampleRef = validateSampleRef(msg.ref);
        // The ref's own MAC (the producer's signature over every field), not only the message's:
        // a ref that does not verify never reaches the ledger.
        o.bus.auth.verifyRef(ref);
        if (o.schema) checkSampleRef(ref, o.schema);
        if (!ledger.state(ref.sampleId)) {
          const p = commitPressure(input, st.pressured, ledger.liveBytes(), ref.bytes);
          st.pressured = p.pressured;
          if (p.refuse) {
            throw new BackpressureError(`commit of "${ref.sampleId}": the job holds ${ledger.liveBytes()} bytes of samples not trained yet, above its store watermark; retry once the ranks consumed some`, {
              detail: { sampleId: ref.sampleId, liveBytes: ledger.liveBytes(), highBytes: input?.kind === 'external' ? input.highBytes : null },
            });
          }
        }
        const res = ledger.put(ref, { key: msg.key, now });
        wal.write([...res.events, ...closeIfDue(ledger, now)]);
        reply({ sampleId: res.sampleId, generation: res.generation, status: res.status });
        grantSoon(st, ledger, ctx);
        break;
      }
      case 'credit': {
        const epoch = ledger.currentEpoch();
        if (msg.epoch !== epoch) throw new StaleEpochError(`credit under epoch ${msg.epoch}: the queue grants under epoch ${epoch}`, { detail: { epoch: msg.epoch, current: epoch, num: ledger.currentNum(), ahead: msg.epoch > epoch } });
        st.credits.set(msg.consumer, { consumer: msg.consumer, partition: msg.partition, epoch: msg.epoch, remaining: msg.max, leaseMs: msg.leaseMs ?? null });
        // consumed + dead tell the ranks how much of the job's sample budget is finished;
        // committed and the partition's pending samples whether more can still come to them.
        const { consumed, dead, samples: committed } = ledger.stats();
        reply({ epoch, num: ledger.currentNum(), depth: ledger.depth(), consumed, dead, committed, partitionPending: ledger.pendingCount(msg.partition), budget: budget(ledger) });
        grantSoon(st, ledger, ctx);
        break;
      }
      case 'ack':
      case 'release': {
        const res = ledger[msg.op](msg.leaseId, msg.epoch, { key: msg.key, now });
        wal.write(res.events);
        reply({ leaseId: res.leaseId, sampleId: res.sampleId, status: res.status });
        if (res.status === 'acked' && !res.repeated) free(ledger, res.sampleId, 'consumed');
        if (msg.op === 'release') grantSoon(st, ledger, ctx);
        break;
      }
      case 'fail': {
        const res = ledger.fail(msg.leaseId, msg.epoch, msg.retryable, { key: msg.key, now, reason: msg.reason });
        wal.write(res.events);
        reply({ leaseId: res.leaseId, sampleId: res.sampleId, status: res.status });
        if (res.status === 'dead' && !res.repeated) free(ledger, res.sampleId, 'dead');
        grantSoon(st, ledger, ctx);
        break;
      }
      case 'renew': {
        const res = ledger.renew(msg.leaseId, msg.epoch, { key: msg.key, now });
        wal.write(res.events);
        reply({ leaseId: res.leaseId, deadline: res.deadline });
        break;
      }
      case 'epoch': {
        if (msg.epoch > ledger.currentEpoch()) {
          const res = ledger.setEpoch(msg.epoch, { num: msg.num, key: `epoch:${msg.epoch}`, now });
          wal.write(res.events);
          st.credits.clear(); // credits of the old epoch are void; ranks re-send under the new one
          ctx.log.info('epoch changed', { epoch: msg.epoch, num: msg.num });
        }
        reply({ epoch: ledger.currentEpoch(), num: ledger.currentNum() });
        break;
      }
      case 'tick': {
        const st0 = ledger.stats();
        st.window.push({ at: now, puts: st0.samples, acks: st0.acks });
        while (st.window.length > 2 && now - st.window[0]!.at > 10_000) st.window.shift();
        const res = ledger.expire(now);
        wal.write(res.events);
        for (const id of res.dead) free(ledger, id, 'dead');
        if (res.expired.length > 0) ctx.log.warn('leases expired', { count: res.expired.length, consumers: [...new Set(res.expired.map((e) => e.consumer))] });
        grantNow(st, ledger);
        break;
      }
      case 'grant': {
        st.grantDue = false;
        grantNow(st, ledger);
        break;
      }
      case 'revoke': {
        // The consumer's process is gone (its node saw it exit): its samples go back now.
        const res = ledger.revokeConsumer(msg.consumer, now, msg.beforeEpoch);
        wal.write(res.events);
        for (const id of res.dead) free(ledger, id, 'dead');
        st.credits.delete(msg.consumer);
        ctx.log.info('leases of a gone consumer revoked', { consumer: msg.consumer, count: res.expired.length });
        reply({ revoked: res.expired.length, dead: res.dead.length });
        grantSoon(st, ledger, ctx);
        break;
      }
      case 'status': {
        const w0 = st.window[0], w1 = st.window.at(-1);
        const secs = w0 && w1 && w1.at > w0.at ? (w1.at - w0.at) / 1000 : 0;
        const rates = { commitsPerSec: secs ? (w1!.puts - w0!.puts) / secs : 0, acksPerSec: secs ? (w1!.acks - w0!.acks) / secs : 0 };
        reply({
          ...ledger.stats(), ...rates, depth: ledger.depth(), inFlight: ledger.inFlight(), incarnation: ctx.incarnation, credits: [...st.credits.values()], leases: ledger.liveLeases(),
          budget: budget(ledger), input: input?.kind === 'external' ? ledger.inputState() : null,
          wal: { ...wal.stats }, rebuilds,
        });
        break;
      }
      case 'committed': {
        // Every sample the ledger knows (any state): a restarted rollout skips these.
        const snap = ledger.snapshot() as { samples: { sampleId: string }[] };
        const ids = snap.samples.map((x) => x.sampleId);
        reply({ sampleIds: msg.prefix ? ids.filter((id) => id.startsWith(msg.prefix!)) : ids });
        break;
      }
      case 'finished': {
        // A node asks which of its store's samples are done with (it missed their store.free
        // while cut off or frozen, or its copy lost to another node's). No copy of a finished
        // sample is read again, whatever its generation: an older one is stale, and the ledger
        // refuses a newer one (an orphan written after the finish by a rollout that had lost
        // its role).
        const finished: FinishedReply['finished'] = [];
        for (const x of msg.samples) {
          const e = ledger.state(x.sampleId);
          if (e && (e.state === 'consumed' || e.state === 'dead')) finished.push({ ...x, why: e.state });
        }
        reply({ finished });
        break;
      }
      case 'batch': {
        const results: ItemResult<unknown>[] = [];
        for (const item of msg.items) {
          let out: ItemResult<unknown> | null = null;
          try {
            apply(st, ledger, item, ctx, (v) => { out = { ok: v }; });
          } catch (e) {
            if (!isAnswer(e)) throw e;
            out = { error: errorToWire(e) };
          }
          results.push(out ?? { error: errorToWire(new UnavailableError(`queue: no answer for ${item.op}`)) });
        }
        reply({ results });
        break;
      }
      case 'input': {
        if (input?.kind !== 'external') throw new InvalidArgumentError(`producer "${msg.producer}": this job has its own rollout; external producers need a job started with --rollout external`, { detail: { field: 'producer' } });
        const res = ledger.input(msg.producer, msg.state, { key: msg.key, now, incarnation: msg.incarnation });
        const closing = msg.state === 'end' ? closeIfDue(ledger, now) : [];
        wal.write([...res.events, ...closing]);
        if (closing.length) ctx.log.info('the input closed: the job trains what was committed', ledger.inputState().closed ?? {});
        const stats = ledger.stats();
        reply({ producer: res.producer, state: res.state, closed: ledger.inputState().closed !== null, committed: stats.samples, budget: budget(ledger) });
        // An input that closed may end a partition's wait: the ranks learn it from their next credit.
        break;
      }
    }
  }
}

type Reply = (value: unknown) => void;

function isAnswer(e: unknown): e is DraftwireError {
  return e instanceof InvalidArgumentError || e instanceof DecodeError || e instanceof StaleEpochError || e instanceof AuthError
    || e instanceof LeaseExpiredError || e instanceof StaleGenerationError || e instanceof SchemaError || e instanceof InputClosedError
    || e instanceof BackpressureError;
}

/** Spawns the queue actor and routes the job's queue subjects to it. */
export function startQueue(system: ActorSystem, o: QueueActorOptions): { ref: ActorRef<QueueMsg>; stop(): Promise<void> } {
  const { bus } = o;
  const s = bus.subjects;
  const ref = system.spawn('queue', { ...queueActorSpec(o), mailboxLimit: 10_000 });
  const log = createLogger('queue');
  const ask = async (m: QueueMsg) => {
    let r: unknown;
    try {
      r = await system.query(ref, m, 15_000);
    } catch (e) {
      // The actor crashed (and is restarting) or timed out: retryable, so the caller's retry
      // (same idempotency key) is evaluated afresh by the rebuilt ledger.
      throw new UnavailableError(`queue actor unavailable: ${(e as Error).message}`, { cause: e });
    }
    if (isObj(r) && r.refused) throw r.refused;
    return r;
  };
  // Requests arrive parsed by the protocol table's parsers (a malformed one never gets here).
  const subs: BusSubscription[] = [
    serve(bus, 'queue.commit', (m, meta) => ask({ op: 'commit', ref: m.ref, key: meta.idempotencyKey ?? `commit:${m.ref.sampleId}:${m.ref.generation}` }) as Promise<CommitReply>),
    serve(bus, 'queue.commits', (m) => ask({ op: 'batch', items: m.refs.map((ref) => ({ op: 'commit' as const, ref, key: `commit:${ref.sampleId}:${ref.generation}` })) }) as Promise<BatchReply<CommitReply>>),
    serve(bus, 'queue.acks', (m) => ask({ op: 'batch', items: m.leases.map((l) => ({ op: 'ack' as const, ...l, key: `ack:${l.leaseId}` })) }) as Promise<BatchReply<LeaseReply>>),
    serve(bus, 'queue.credit', (m) => ask({ op: 'credit', ...m }) as Promise<CreditReply>),
    serve(bus, 'queue.ack', (m, meta) => ask({ op: 'ack', ...m, key: meta.idempotencyKey ?? `ack:${m.leaseId}` }) as Promise<LeaseReply>),
    serve(bus, 'queue.release', (m, meta) => ask({ op: 'release', ...m, key: meta.idempotencyKey ?? `release:${m.leaseId}` }) as Promise<LeaseReply>),
    serve(bus, 'queue.renew', (m, meta) => ask({ op: 'renew', ...m, key: meta.idempotencyKey ?? `renew:${m.leaseId}` }) as Promise<RenewReply>),
    serve(bus, 'queue.fail', (m, meta) => ask({ op: 'fail', ...m, key: meta.idempotencyKey ?? `fail:${m.leaseId}` }) as Promise<LeaseReply>),
    serve(bus, 'queue.revoke', (m) => ask({ op: 'revoke', ...m }) as Promise<RevokeReply>),
    serve(bus, 'queue.status', () => ask({ op: 'status' }) as Promise<QueueStatus>, { dedupe: false }),
    serve(bus, 'queue.committed', (m) => ask({ op: 'committed', ...m }) as Promise<CommittedReply>, { dedupe: false }),
    serve(bus, 'queue.finished', (m) => ask({ op: 'finished', samples: m.samples }) as Promise<FinishedReply>, { dedupe: false }),
    serve(bus, 'queue.input', (m, meta) => ask({ op: 'input', ...m, key: meta.idempotencyKey ?? `input:${m.producer}:${m.state}:${m.incarnation}` }) as Promise<InputReply>),
  ];
  const timer = setInterval(() => {
    try { system.dispatch(ref, { op: 'tick' }); } catch { /* mailbox full: the next tick will do */ }
  }, o.tickMs ?? 500);
  timer.unref();
  // The coordinator owns the epoch (KV); the queue follows it and logs every change. The watch
  // is restarted if it ends (a NATS restart) and a full mailbox is retried: a queue that stops
  // following the epoch would refuse every newer rank's credit for good.
  let watch: { stop(): void } | null = null;
  let stopped = false;
  const dispatchEpoch = async (epoch: number, num: number) => {
    for (let i = 0; !stopped; i++) {
      try { system.dispatch(ref, { op: 'epoch', epoch, num }); return; } catch (e) {
        if (i % 50 === 0) log.warn('epoch change not delivered yet (queue mailbox full); retrying', { epoch, error: (e as Error).message });
        await new Promise((r) => setTimeout(r, 100));
      }
    }
  };
  void (async () => {
    while (!stopped) {
      try {
        const kv = await bus.kv(s.kvBucket);
        if (stopped) return;
        const w = await kv.watch<unknown>({ key: STORAGE.epochKey });
        watch = w;
        for await (const ch of w) {
          if (ch.value === null) continue;
          let e: EpochInfo;
          try { e = parseEpochInfo(ch.value); } catch (err) { log.warn('malformed epoch record ignored', { error: (err as Error).message }); continue; }
          // Only a newer epoch changes the ledger (apply's 'epoch' case): a rolled-back record is ignored.
          await dispatchEpoch(e.epoch, e.partitions);
        }
      } catch (e) {
        if (!stopped) log.warn('epoch watch ended; restarting it', { error: (e as Error).message });
      }
      if (!stopped) await new Promise((r) => setTimeout(r, 500));
    }
  })();
  return {
    ref,
    async stop() {
      stopped = true;
      watch?.stop();
      clearInterval(timer);
      for (const sub of subs) sub.unsubscribe();
      await system.stop(ref);
    },
  };
}
