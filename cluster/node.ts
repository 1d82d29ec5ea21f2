// The node agent: one per machine. It connects to NATS, hosts the actors its roles name
// (queue, coordinator, janitor, rollout) in one actor system, and spawns one OS process per
// rank, on start or on request (`dw.<job>.node.<nodeId>.spawn`), so a native crash takes
// down one rank, not the node. Rank processes hold an IPC channel to the node and exit when
// it closes: a dead node leaves no orphan rank.
import { fork, type ChildProcess } from 'node:child_process';
import { createWriteStream } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { startCoordinator } from '../actors/coordinator.ts';
import { startJanitor } from '../actors/janitor.ts';
import { startQueue } from '../actors/queue.ts';
import { rolloutActorSpec } from '../actors/rollout.ts';
import { ActorSystem, type ActorRef } from '../src/actor-system.ts';
import { AuthPolicy } from '../src/auth.ts';
import { Bus } from '../src/bus.ts';
import { InvalidArgumentError } from '../src/errors.ts';
import { jobFile, type JobSpec } from '../src/job.ts';
import { createLogger } from '../src/log.ts';
import { SharedDirFeatureStore } from '../src/store/shared-dir.ts';

export const ROLES = ['coordinator', 'queue', 'janitor', 'rollout'] as const;
export type Role = (typeof ROLES)[number];

export interface NodeOptions {
  spec: JobSpec;
  nats: string;
  nodeId: string;
  roles: readonly Role[];
  auth: AuthPolicy;
  /** Where rank logs go (default the run directory). */
  logDir?: string;
}

export interface RankProcess { rank: number; proc: ChildProcess; exited: Promise<number | null> }

const RANK_MAIN = join(dirname(fileURLToPath(import.meta.url)), 'rank-main.ts');

export function parseRoles(s: string): Role[] {
  const roles = s.split(',').map((r) => r.trim()).filter(Boolean);
  for (const r of roles) if (!(ROLES as readonly string[]).includes(r)) throw new InvalidArgumentError(`unknown role "${r}" (roles: ${ROLES.join(', ')})`);
  return roles as Role[];
}

export class NodeAgent {
  readonly ranks = new Map<number, RankProcess>();
  private readonly stops: Array<() => Promise<void>> = [];
  private readonly log = createLogger('node');
  rollout: ActorRef | null = null;

  private constructor(readonly o: NodeOptions, readonly bus: Bus, readonly system: ActorSystem, readonly store: SharedDirFeatureStore) {}

  static async start(o: NodeOptions): Promise<NodeAgent> {
    const bus = await Bus.connect({ servers: o.nats, job: o.spec.job, auth: o.auth, name: `node-${o.nodeId}` });
    const store = await SharedDirFeatureStore.attach({
      dir: o.spec.storeDir, storeId: o.spec.storeId, job: o.spec.job, auth: o.auth,
      producer: { node: o.nodeId, actor: 'node', incarnation: process.pid },
      highWatermarkBytes: o.spec.storeHighBytes, lowWatermarkBytes: o.spec.storeLowBytes,
    });
    const node = new NodeAgent(o, bus, new ActorSystem(`node-${o.nodeId}`), store);
    await node.startRoles();
    const spawnSub = bus.subscribe<{ rank?: unknown }>(bus.subjects.nodeSpawn(o.nodeId), (m) => {
      const rank = m?.rank;
      if (!Number.isInteger(rank) || (rank as number) < 0) throw new InvalidArgumentError('spawn: needs a rank (integer >= 0)');
      return { pid: node.spawnRank(rank as number).proc.pid ?? null };
    });
    node.stops.push(async () => spawnSub.unsubscribe());
    return node;
  }

  private async startRoles(): Promise<void> {
    const { spec, roles } = this.o;
    const { bus, system, store } = this;
    if (roles.includes('coordinator')) {
      const c = startCoordinator(system, { bus, dp: spec.dp });
      await c.ready;
      this.stops.push(c.stop);
    }
    if (roles.includes('queue')) {
      const q = startQueue(system, { bus, ledger: { leaseMs: spec.leaseMs, maxDeliveries: spec.maxDeliveries } });
      this.stops.push(q.stop);
    }
    if (roles.includes('janitor')) this.stops.push(startJanitor(system, { bus, store }).stop);
    if (roles.includes('rollout')) {
      const ref = system.spawn('rollout', rolloutActorSpec({ spec, bus, store }));
      this.rollout = ref;
      this.stops.push(() => system.stop(ref));
    }
  }

  /** Starts rank `rank` as its own OS process (logs to <logDir>/rank-<rank>.log). */
  spawnRank(rank: number): RankProcess {
    const { spec, nats, nodeId } = this.o;
    const prev = this.ranks.get(rank);
    if (prev && prev.proc.exitCode === null && prev.proc.signalCode === null) throw new InvalidArgumentError(`rank ${rank} is already running (pid ${prev.proc.pid})`);
    const log = createWriteStream(join(this.o.logDir ?? spec.runDir, `rank-${rank}.log`), { flags: 'a' });
    const proc = fork(RANK_MAIN, ['--job-file', jobFile(spec.runDir), '--rank', String(rank), '--nats', nats, '--node', nodeId], {
      execArgv: ['--import', 'tsx'],
      stdio: ['ignore', 'pipe', 'pipe', 'ipc'],
      env: process.env,
    });
    proc.stdout?.pipe(log, { end: false });
    proc.stderr?.pipe(log, { end: false });
    const exited = new Promise<number | null>((resolve) => proc.on('exit', (code, sig) => {
      this.log.info('rank exited', { rank, pid: proc.pid, code, signal: sig });
      log.end();
      resolve(code ?? (sig ? 128 : null));
    }));
    const rp = { rank, proc, exited };
    this.ranks.set(rank, rp);
    this.log.info('rank spawned', { rank, pid: proc.pid });
    return rp;
  }

  /** Stops rank processes (SIGTERM, then SIGKILL), actors, store and bus. */
  async stop(): Promise<void> {
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
