// The node agent: one per machine. It connects to NATS, hosts the actors its roles name
// (queue, coordinator, janitor, rollout) in one actor system, and spawns one OS process per
// rank, on start or on request (`dw.<job>.node.<nodeId>.spawn`), so a native crash takes
// down one rank, not the node. Rank processes hold an IPC channel to the node and exit when
// it closes: a dead node leaves no orphan rank.
//
// Failure policy (the job's onRankLoss): a rank process that dies (non-zero exit, signal)
// makes the node ask the coordinator for a new epoch (`coord.regroup`): with `replace` (the
// default) the same members, and the rank is respawned to join that epoch, up to the job's
// maxRankRestarts times (the replacement resumes from the latest checkpoint and gets the
// world's state by broadcast); with `shrink`, or once the restarts are used up, the epoch
// drops the rank and the job goes on at the smaller width. A rank the coordinator declares
// dead (silent past rankDeadAfterMs although its process may live, e.g. SIGSTOP) is
// SIGKILLed here, which the same policy then handles. A rank that exits 0 finished (or was
// retired by a scale-down) and is not respawned. The node heartbeats on `dw.<job>.hb.node-<id>`
// so the coordinator knows where to spawn ranks for a scale-up (`node.<id>.spawn`).
//
// Data plane (`--listen`): the node serves its own store over HTTP (src/store/http-server.ts;
// HTTPS with the node's TLS files), the refs its producers write carry its advertised address
// (`http(s)://host:port/…`), and it frees its own samples when the queue announces them
// consumed or dead on `store.free`, and those it missed at its store reconcile.
import { fork, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { setTimeout as sleep } from 'node:timers/promises';
import { appendStream } from '../src/files.ts';
import { readTlsFiles, type TlsFiles } from '../src/tls.ts';
import { COMM_HOST_ENV, entryPoint } from './entry.ts';
import { startCoordinator } from '../actors/coordinator.ts';
import { startJanitor } from '../actors/janitor.ts';
import { startQueue } from '../actors/queue.ts';
import type { QueueInput } from '../src/ledger/input.ts';
import { rolloutActorSpec } from '../actors/rollout.ts';
import { ActorSystem, type ActorRef } from '../src/runtime/actor-system.ts';
import { AuthPolicy } from '../src/wire/auth.ts';
import { Bus } from '../src/bus/bus.ts';
import { InvalidArgumentError } from '../src/errors.ts';
import { isExternal, jobFile, jobRows, maxRankRestarts, rankDeadAfterMs, rankLossPolicy, type JobSpec } from '../src/job/spec.ts';
import { createLogger } from '../src/log.ts';
import { SharedDirFeatureStore } from '../src/store/shared-dir.ts';
import { StoreHttpServer } from '../src/store/http-server.ts';
import { CoordinatorClient, HeartbeatPublisher, QueueClient, listen, serve } from '../src/bus/clients.ts';
import { sampleSchema } from '../src/wire/schema.ts';
import { FINISHED_MAX, ROLES, type Role, type StoreFree } from '../src/wire/protocol.ts';
import { RoleHost, type RoleStarter } from './role-host.ts';
import { NodeMetrics } from './node-metrics.ts';
import { startOps } from './node-ops.ts';
import type { OpsServer } from './ops-server.ts';

export { ROLES, type Role } from '../src/wire/protocol.ts';

export interface NodeOptions {
  spec: JobSpec;
  nats: string;
  nodeId: string;
  roles: readonly Role[];
  auth: AuthPolicy;
  /** Where rank logs go (default the run directory). */
  logDir?: string;
  /** This node's store directory (default the job's storeDir); its rank processes read it too. */
  storeDir?: string;
  /** Serve this node's store over HTTP here (port 0: any free port). */
  listen?: { host: string; port: number };
  /** The address refs carry (default the listening address). */
  advertise?: { host: string; port: number };
  /** Serve the data plane over TLS with these files (the certificate and key; with the CA, clients must present one it signed). */
  tls?: TlsFiles | null;
  /** The address this machine's ranks run their collectives on (default 127.0.0.1: one machine). */
  commHost?: string;
  /** The roles' leader lease time to live (default 4000 ms): how long a dead holder's role waits for another node. */
  roleTtlMs?: number;
  /** Serve Prometheus metrics (/metrics) and the live page (/) here (port 0: any free port). */
  metrics?: { host: string; port: number };
}

export interface RankProcess { rank: number; proc: ChildProcess; exited: Promise<number | null>; spawnedAt: number }

/** How a rank ended for good: exit code 0, or the last failure once restarts are used up, or retired. */
export interface RankOutcome { rank: number; code: number | null; restarts: number; retired: boolean }

const RANK_MAIN = entryPoint('rank-main');
/** A rank that lived this long before dying is respawned at once; one that dies sooner is crash-looping. */
const RESPAWN_HEALTHY_MS = 30_000;
/**
 * How long the node waits before respawning a rank that died after `restarts` earlier
 * respawns, having lived `livedMs`: at once after a healthy run, else 1 s, 4 s, 16 s (at
 * most). A start that fails on a passing condition (a NATS server restarting, a role
 * changing hands) then outlasts it instead of spending every restart within a second.
 */
function respawnDelayMs(restarts: number, livedMs: number): number {
  return livedMs >= RESPAWN_HEALTHY_MS ? 0 : Math.min(16_000, 1000 * 4 ** restarts);
}
/** A log line at level error, in text or JSON form (src/log.ts). */
const RANK_ERROR_LINE = /^\S+ ERROR |"level":"error"/;

export function parseRoles(s: string): Role[] {
  const roles = s.split(',').map((r) => r.trim()).filter(Boolean);
  for (const r of roles) if (!(ROLES as readonly string[]).includes(r)) throw new InvalidArgumentError(`unknown role "${r}" (roles: ${ROLES.join(', ')})`);
  return roles as Role[];
}

export class NodeAgent {
  readonly ranks = new Map<number, RankProcess>();
  /** Respawns per rank so far. */
  readonly restarts = new Map<number, number>();
  /** The epoch each running rank process last reported in its heartbeat. */
  readonly lastEpoch = new Map<number, number>();
  private readonly outcomes = new Map<number, RankOutcome>();
  private readonly retired = new Set<number>();
  /** Ranks that died and are being respawned (after their regroup). */
  readonly respawning = new Set<number>();
  private settleWaiters: Array<() => void> = [];
  private stopping = false;
  /** One heartbeat sequence for everything this process sends (its own beats, first beats for its ranks). */
  private readonly beats: HeartbeatPublisher;
  private readonly stops: Array<() => Promise<void>> = [];
  private readonly log = createLogger('node');
  rollout: ActorRef | null = null;
  /** The data plane server, when the node listens. */
  dataPlane: StoreHttpServer | null = null;
  /** Its Prometheus metrics and the live page's series (served with `metrics`). */
  readonly metrics: NodeMetrics;
  /** The operator endpoint, when the node serves one. */
  ops: OpsServer | null = null;
  private roleHost: RoleHost | null = null;
  private storeReconciling = false;

  private constructor(readonly o: NodeOptions, readonly bus: Bus, readonly system: ActorSystem, readonly store: SharedDirFeatureStore) {
    this.beats = new HeartbeatPublisher(bus);
    this.metrics = new NodeMetrics(o.nodeId, o.spec.job, {
      storeUsage: () => store.usage(),
      servedBytes: () => this.dataPlane?.stats.bytesServed ?? null,
      queueStatus: () => (this.roleHost?.held().some((r) => r.role === 'queue') ? new QueueClient(bus).status({ timeoutMs: 2000, retries: 0 }) : Promise.resolve(null)),
      heldRoles: () => this.roleHost?.held() ?? [],
    });
  }

  static async start(o: NodeOptions): Promise<NodeAgent> {
    const bus = await Bus.connect({ servers: o.nats, job: o.spec.job, auth: o.auth, name: `node-${o.nodeId}` });
    const store = await SharedDirFeatureStore.attach({
      dir: o.storeDir ?? o.spec.storeDir, storeId: o.spec.storeId, job: o.spec.job, auth: o.auth,
      producer: { node: o.nodeId, actor: 'node', incarnation: process.pid },
      highWatermarkBytes: o.spec.storeHighBytes, lowWatermarkBytes: o.spec.storeLowBytes,
    });
    const node = new NodeAgent(o, bus, new ActorSystem(`node-${o.nodeId}`), store);
    if (o.listen) await node.startDataPlane(o.listen, o.advertise, o.tls?.cert && o.tls.key ? o.tls : null);
    await node.startRoles();
    if (o.metrics) {
      const ops = await startOps({ bus, node: o.nodeId, metrics: node.metrics, at: o.metrics });
      node.ops = ops.server;
      node.stops.push(() => ops.stop());
    }
    const spawnSub = serve(bus, 'node.spawn', (m) => ({ pid: node.spawnRank(m.rank, m.minEpoch).proc.pid ?? null }), {}, o.nodeId);
    node.stops.push(async () => spawnSub.unsubscribe());
    const stopSub = serve(bus, 'node.stop', async (m) => ({ stopped: await node.retireRank(m.rank) }), {}, o.nodeId);
    node.stops.push(async () => stopSub.unsubscribe());
    // The coordinator's verdict: a rank silent past the deadline is killed and replaced.
    const deadSub = listen(bus, 'ctl.dead', (m) => {
      const r = node.ranks.get(m.rank);
      if (!r || r.proc.pid !== m.pid || r.proc.exitCode !== null || r.proc.signalCode !== null) return;
      node.log.warn('rank declared dead by the coordinator (no heartbeat); killing it for a replacement', { rank: r.rank, pid: r.proc.pid });
      r.proc.kill('SIGKILL'); // also ends a stopped process, without letting it run first
    });
    node.stops.push(async () => deadSub.unsubscribe());
    // The epoch each of its rank processes last reported: a death regroups from that epoch only.
    const hbSub = listen(bus, 'hb', (h) => {
      if (h.kind !== 'node') node.metrics.heartbeat(h);
      const r = h.kind === 'node' ? undefined : node.ranks.get(h.rank);
      if (r && h.kind !== 'node' && r.proc.pid === h.pid && Number.isInteger(h.epoch)) node.lastEpoch.set(r.rank, h.epoch);
    }, { subject: bus.subjects.hbAll });
    node.stops.push(async () => hbSub.unsubscribe());
    // The ranks it answers for (running, or between a death and the respawn): the coordinator reassigns only ranks no live node lists.
    const beat = () => node.beats.node(o.nodeId, { pid: process.pid, ranks: [...new Set([...node.running(), ...node.respawning])] });
    beat();
    let lastBeat = Date.now(), beats = 0;
    const hb = setInterval(() => {
      beat();
      // Every 5 s, and at once after a beat far later than due (this process was frozen, or
      // starved): ranks here that the coordinator replaced meanwhile are killed.
      const late = Date.now() - lastBeat > 5000;
      if (late || ++beats % 5 === 0) { void node.reconcile(late ? Date.now() - lastBeat : 0); void node.reconcileStore(); }
      lastBeat = Date.now();
    }, 1000);
    node.stops.push(async () => clearInterval(hb));
    return node;
  }

  /** Serves the store over HTTP; refs put from now on carry the advertised address. */
  private async startDataPlane(at: { host: string; port: number }, advertise: { host: string; port: number } | undefined, tls: TlsFiles | null): Promise<void> {
    const { store, bus } = this;
    const pem = tls ? readTlsFiles(tls, 'data plane TLS') : null;
    const srv = await StoreHttpServer.start({
      store, auth: this.o.auth, host: at.host, port: at.port, tls: pem ? { cert: pem.cert!, key: pem.key!, ca: pem.ca ?? null } : null,
      onError: (e, req) => this.log.warn('data plane request failed', { method: req.method, path: req.target.split('?')[0], error: (e as Error).message }),
    });
    this.dataPlane = srv;
    this.stops.push(() => srv.close());
    store.advertiseAt(advertise?.host ?? srv.host, advertise?.port ?? srv.port, { tls: !!pem });
    this.log.info('data plane listening', { listen: srv.address, advertise: store.advertisedAt, tls: !!pem, clientCerts: !!pem?.ca });
    // The node that wrote a sample frees it when the queue announces it consumed or dead,
    // whichever node holds the janitor role meanwhile (the janitor frees only its own
    // store's samples; freeing twice is a no-op).
    const sub = listen(bus, 'store.free', (m) => { void this.free(m); });
    this.stops.push(async () => sub.unsubscribe());
  }

  /** Frees a sample of this node's store that the queue finished (consumed or dead-lettered). */
  private async free(m: StoreFree): Promise<boolean> {
    const { store } = this;
    if (!store.owns(m.ref)) return false;
    try {
      return await (m.why === 'dead' ? store.abort(m.ref.sampleId, 'dead-lettered', { generation: m.ref.generation }) : store.release(m.ref));
    } catch (e) {
      this.log.warn('freeing a consumed sample failed', { sampleId: m.ref.sampleId, error: (e as Error).message });
      return false;
    }
  }

  /**
   * Frees what this node's store still holds of samples the ledger finished: their
   * `store.free` (a core NATS message, kept for no absent subscriber) was missed while this
   * node was cut off, frozen, or between two NATS servers; or the copy is an orphan (written
   * by a rollout that lost its role before committing it, the ledger took another node's).
   * Runs with the reconcile.
   */
  async reconcileStore(): Promise<number> {
    if (this.storeReconciling) return 0;
    this.storeReconciling = true;
    let freed = 0;
    try {
      const held = await this.store.held();
      const queue = new QueueClient(this.bus);
      for (let i = 0; i < held.length; i += FINISHED_MAX) {
        const r = await queue.finished({ samples: held.slice(i, i + FINISHED_MAX) }, { timeoutMs: 5000, retries: 0 });
        for (const f of r.finished) if (await this.store.releaseGeneration(f.sampleId, f.generation).catch(() => false)) freed++;
      }
      if (freed > 0) this.log.info('freed finished samples whose store.free this node missed', { freed });
    } catch (e) {
      this.log.debug('store reconcile skipped: the queue did not answer', { error: (e as Error).message });
    } finally {
      this.storeReconciling = false;
    }
    return freed;
  }

  /**
   * Campaigns for each role this node may hold (RoleHost): a role runs here only under its
   * leader lease, so several nodes may list the same role and one of them runs it; when that
   * one's machine dies, another takes the role within about a lease ttl.
   */
  private async startRoles(): Promise<void> {
    const { spec, roles } = this.o;
    const { bus, system, store } = this;
    const host = new RoleHost(bus, this.o.nodeId, this.o.roleTtlMs ?? spec.roleTtlMs);
    this.roleHost = host;
    this.stops.push(() => host.stop());
    const starters: Record<Role, RoleStarter> = {
      coordinator: async (_term, lease) => {
        const c = startCoordinator(system, {
          bus, dp: spec.dp, cellSize: spec.tp * spec.sp, deadAfterMs: rankDeadAfterMs(spec), acting: () => lease.valid(),
          onRankLoss: { policy: rankLossPolicy(spec), maxRestarts: maxRankRestarts(spec) },
          ...((spec.backend ?? 'cpu') !== 'cpu' ? { maxDp: 1 } : {}),
        });
        await c.ready;
        return c.stop;
      },
      queue: async () => {
        const input: QueueInput = spec.input?.kind === 'external'
          ? { kind: 'external', samples: spec.input.samples, producers: spec.input.producers, highBytes: spec.storeHighBytes, lowBytes: spec.storeLowBytes }
          : { kind: 'fixed', samples: jobRows(spec) };
        return startQueue(system, {
          bus, ledger: { leaseMs: spec.leaseMs, maxDeliveries: spec.maxDeliveries }, schema: sampleSchema(spec), input, onWalAppend: (sec) => this.metrics.observeWalAppend(sec),
        }).stop;
      },
      janitor: async () => startJanitor(system, { bus, store }).stop,
      rollout: async () => {
        const ref = system.spawn('rollout', rolloutActorSpec({ spec, bus, store }));
        this.rollout = ref;
        return async () => { if (this.rollout === ref) this.rollout = null; await system.stop(ref); };
      },
    };
    for (const role of ROLES) {
      if (!roles.includes(role)) continue;
      // An external job's samples come from producers of their own: it has no rollout to run.
      if (role === 'rollout' && isExternal(spec)) { this.log.info('no rollout: this job\'s samples come from external producers (--rollout external)'); continue; }
      await host.campaign(role, starters[role]);
    }
  }

  /**
   * While this node was unreachable (frozen, cut off the network) the coordinator may have
   * declared its ranks dead and respawned them elsewhere, and its kill verdicts were lost. A
   * rank process here (running for 10 s at least, so its own heartbeats had time to count)
   * whose pid the coordinator declared dead, or which the coordinator now hears as another
   * live pid, is killed before it can meet its replacement in a collective group.
   */
  async reconcile(frozenMs: number): Promise<void> {
    if (this.running().length === 0) return;
    let st;
    try { st = await new CoordinatorClient(this.bus).status({ timeoutMs: 5000, retries: 0 }); } catch (e) {
      if (frozenMs > 0) this.log.warn('after a freeze: the coordinator did not answer; ranks left as they are', { frozenMs, error: (e as Error).message });
      return;
    }
    for (const r of this.ranks.values()) {
      if (r.proc.exitCode !== null || r.proc.signalCode !== null || Date.now() - r.spawnedAt < 10_000) continue;
      const m = st.members.find((x) => x.rank === r.rank);
      if (m && ((m.dead && m.pid === r.proc.pid) || (m.alive && m.pid !== r.proc.pid))) {
        this.log.warn('the coordinator replaced this rank while this node was unreachable; killing the stale process', { rank: r.rank, pid: r.proc.pid, frozenMs, coordinatorPid: m.pid, declaredDead: m.dead });
        r.proc.kill('SIGKILL');
      }
    }
  }

  /** Ranks whose process runs now. */
  running(): number[] {
    return [...this.ranks.values()].filter((r) => r.proc.exitCode === null && r.proc.signalCode === null).map((r) => r.rank);
  }

  /** Starts rank `rank` as its own OS process (logs to <logDir>/rank-<rank>.log), joining no epoch before minEpoch. */
  spawnRank(rank: number, minEpoch = 0): RankProcess {
    const { spec, nats, nodeId } = this.o;
    const prev = this.ranks.get(rank);
    if (prev && prev.proc.exitCode === null && prev.proc.signalCode === null) throw new InvalidArgumentError(`rank ${rank} is already running (pid ${prev.proc.pid})`);
    const log = appendStream(join(this.o.logDir ?? spec.runDir, `rank-${rank}.log`));
    const args = ['--job-file', jobFile(spec.runDir), '--rank', String(rank), '--nats', nats, '--node', nodeId, '--min-epoch', String(minEpoch)];
    if (this.o.storeDir) args.push('--store-dir', this.o.storeDir);
    const proc = fork(RANK_MAIN.path, args, {
      execArgv: RANK_MAIN.execArgv,
      stdio: ['ignore', 'pipe', 'pipe', 'ipc'],
      env: this.o.commHost ? { ...process.env, [COMM_HOST_ENV]: this.o.commHost } : process.env,
    });
    proc.stdout?.pipe(log, { end: false });
    proc.stderr?.pipe(log, { end: false });
    // The rank's last error line, so that a rank that dies says why in its node's own log.
    let lastError: string | null = null;
    if (proc.stderr) createInterface({ input: proc.stderr }).on('line', (line) => { if (RANK_ERROR_LINE.test(line)) lastError = line.slice(0, 1000); });
    const exited = new Promise<number | null>((resolve) => proc.on('exit', (code, sig) => {
      this.log.info('rank exited', { rank, pid: proc.pid, code, signal: sig, ...(code !== 0 && lastError ? { lastError } : {}) });
      log.end();
      const c = code ?? (sig ? 128 : null);
      resolve(c);
      this.onRankExit(rank, proc, c);
    }));
    const rp = { rank, proc, exited, spawnedAt: Date.now() };
    this.ranks.set(rank, rp);
    this.outcomes.delete(rank);
    this.retired.delete(rank);
    this.log.info('rank spawned', { rank, pid: proc.pid, restarts: this.restarts.get(rank) ?? 0, minEpoch });
    // A first heartbeat on the rank's behalf: a process that never gets to send its own
    // (frozen or hung while starting) is still declared dead after rankDeadAfterMs.
    if (proc.pid !== undefined) this.beats.rank(rank, { pid: proc.pid, step: -1, state: 'spawned', held: 0, epoch: 0 });
    return rp;
  }

  private onRankExit(rank: number, proc: ChildProcess, code: number | null): void {
    if (this.ranks.get(rank)?.proc !== proc) return;
    const restarts = this.restarts.get(rank) ?? 0;
    const retired = this.retired.has(rank);
    if (code !== 0 && !retired && !this.stopping) {
      const replace = rankLossPolicy(this.o.spec) === 'replace' && restarts < maxRankRestarts(this.o.spec);
      if (replace) this.restarts.set(rank, restarts + 1);
      // A new epoch first (its world forms afresh, with the replacement or without the rank), then the respawn joins it.
      // Replace: a new epoch after the one the rank died in (a no-op if its world's survivors
      // asked first); the replacement joins it. Shrink: the epoch drops the rank's cell.
      const from = this.lastEpoch.get(rank);
      const ask = replace ? { rank, by: 'node' as const, ...(from !== undefined ? { fromEpoch: from } : {}) } : { rank, remove: rank, by: 'node' as const };
      // `reassigned` naming this node: the coordinator moved the rank here (its node died) and it
      // died here before it joined; that is no reason not to respawn it here.
      const regroup = new CoordinatorClient(this.bus).regroup(ask, { timeoutMs: 10_000, retries: 3 })
        .then((r) => ({ epoch: r.to.epoch, movedTo: r.reassigned && r.reassigned.node !== this.o.nodeId ? r.reassigned.node : null }), (e: unknown) => { this.log.error('regroup request failed', { rank, error: (e as Error).message }); return { epoch: 0, movedTo: null }; })
        // The dead process's leases (granted before the new epoch; a replacement only holds
        // leases of that epoch or later) go back to pending now, not at their deadline.
        .then(async (r) => {
          if (r.epoch > 0 && !r.movedTo) {
            await new QueueClient(this.bus).revoke({ consumer: `rank-${rank}`, beforeEpoch: r.epoch })
              .catch((e: unknown) => this.log.warn('revoking the dead rank\'s leases failed; they expire at their deadline', { rank, error: (e as Error).message }));
          }
          return r;
        });
      if (replace) {
        const delayMs = respawnDelayMs(restarts, Date.now() - (this.ranks.get(rank)?.spawnedAt ?? 0));
        this.log.warn('rank died; respawning it (it resumes from the latest checkpoint)', { rank, code, restart: restarts + 1, of: maxRankRestarts(this.o.spec), inMs: delayMs });
        this.respawning.add(rank);
        void regroup.then(async ({ epoch, movedTo }) => {
          if (delayMs > 0 && !movedTo && !this.stopping) await sleep(delayMs, undefined, { ref: false });
          this.respawning.delete(rank);
          if (this.stopping) return;
          // While this node was unreachable (frozen, cut off) the coordinator gave the rank to another node.
          if (movedTo) {
            this.log.warn('rank not respawned here: the coordinator moved it to another node while this one was unreachable', { rank, node: movedTo });
            this.outcomes.set(rank, { rank, code, restarts, retired: true });
            for (const w of this.settleWaiters.splice(0)) w();
            return;
          }
          this.spawnRank(rank, epoch);
        });
        return;
      }
      this.log.warn('rank lost for good; the job goes on without it', { rank, code, restarts, policy: rankLossPolicy(this.o.spec) });
    }
    this.outcomes.set(rank, { rank, code, restarts, retired });
    for (const w of this.settleWaiters.splice(0)) w();
  }

  /** Resolves once every rank in `ranks` ended for good (see RankOutcome). */
  async settled(ranks: number[]): Promise<RankOutcome[]> {
    while (!ranks.every((r) => this.outcomes.has(r))) await new Promise<void>((r) => this.settleWaiters.push(r));
    return ranks.map((r) => this.outcomes.get(r)!);
  }

  /** Resolves once every rank this node ever spawned (including scale-ups) ended for good. */
  async allSettled(): Promise<RankOutcome[]> {
    for (;;) {
      const ranks = [...this.ranks.keys()];
      const out = await this.settled(ranks);
      if (this.ranks.size === ranks.length && this.running().length === 0) return out;
    }
  }

  /** Stops a rank for good (scale down): SIGTERM, SIGKILL after 5 s; no respawn. */
  async retireRank(rank: number): Promise<boolean> {
    const r = this.ranks.get(rank);
    this.retired.add(rank);
    if (!r || r.proc.exitCode !== null || r.proc.signalCode !== null) return false;
    r.proc.kill('SIGTERM');
    const t = setTimeout(() => r.proc.kill('SIGKILL'), 5000);
    await r.exited;
    clearTimeout(t);
    return true;
  }

  /** Stops rank processes (SIGTERM, then SIGKILL), actors, store and bus. */
  async stop(): Promise<void> {
    this.stopping = true;
    await Promise.all([...this.ranks.values()].map(async (r) => {
      if (r.proc.exitCode !== null || r.proc.signalCode !== null) return;
      r.proc.kill('SIGTERM');
      const t = setTimeout(() => r.proc.kill('SIGKILL'), 5000);
      await r.exited;
      clearTimeout(t);
    }));
    for (const s of this.stops.reverse()) await s().catch((e: unknown) => this.log.warn('stop failed', { error: (e as Error).message }));
    await this.system.shutdown();
    await this.store.close();
    await this.bus.close();
  }
}
