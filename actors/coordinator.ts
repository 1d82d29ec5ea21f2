// The coordinator: owns the job's epoch record in the KV bucket `dw_<job>` (key `epoch` =
// {epoch, num, members, group}), written only by compare-and-set, and announced on
// `dw.<job>.ctl.epoch`. `members` lists the rank ids of the epoch's world in order:
// members[i] is world rank i. A data-parallel index is a group of `group` = tp·sp
// consecutive world ranks (one rank when the job has no TP/SP), and DP index d trains
// partition d of `dw.<job>.part.<num>.<d>`; num = members / group.
// Every change of the world is a new epoch, so a collective group is formed once per epoch
// (its rendezvous prefix is the epoch) and never reused after a failure.
//
// It tracks heartbeats: a rank silent for `deadAfterMs` is declared dead (even if its NATS
// connection lives, e.g. a SIGSTOPped process) on `dw.<job>.ctl.dead` {rank, pid}; the node
// agent that hosts it kills it. Status shows every member, alive or dead, and every node.
// A heartbeat not newer (by its sender's `at`, then `seq`) than the last one taken from the
// same sender and pid is ignored: a replayed beat cannot keep a silent process alive.
//
// A rank whose machine died has no node agent left to respawn it: a member of the epoch that
// is silent past `deadAfterMs` and that no live node agent lists among its ranks (a node's
// heartbeat lists the ranks it runs or is respawning) is an orphan. With the job's policy
// `replace` (and restarts left) the coordinator asks for a new epoch with the same members
// and spawns the rank on the live node hosting the fewest ranks; with `shrink` the epoch drops
// it. Either way its leases go back to pending at once. Orphans are judged only once this
// coordinator has heard the node agents for 3 s (it may have just taken the
// role over from a dead machine), and only while its leader lease is valid (`acting`).
//
// Requests (all compare-and-set on the KV revision, so concurrent callers make one change):
// - `coord.scale` {dp}: members become ranks 0..dp-1; ranks that are new are spawned on the
//   node agents (the one hosting the fewest ranks first), ranks dropped retire by themselves
//   when they see an epoch without them (after checkpointing and acking what they trained).
// - `coord.regroup` {fromEpoch?, rank?, remove?}: a rank's collective group failed, or a node
//   lost a rank process. A new epoch with the same members (policy `replace`: the node respawns
//   the rank) or without `remove` (policy `shrink`, or the rank's restarts are used up).
//   With fromEpoch, nothing happens if the epoch already moved past it.
import type { ActorRef, ActorSystem } from '../src/runtime/actor-system.ts';
import type { Bus } from '../src/bus/bus.ts';
import { ConflictError, InvalidArgumentError, UnavailableError } from '../src/errors.ts';
import { createLogger } from '../src/log.ts';
import { bumpEpoch, changeEpoch, ensureEpoch, cellSizeOf, epochMembers, withoutGroupOf, type EpochInfo } from '../src/job/epoch.ts';
import { STORAGE, type CoordStatus, type Heartbeat, type ScaleReply } from '../src/wire/protocol.ts';
import { LatestPerSender } from '../src/wire/freshness.ts';
import { NodeClient, QueueClient, listen, publish, serve } from '../src/bus/clients.ts';

type CoordMsg = { op: 'hb'; hb: Heartbeat } | { op: 'status' } | { op: 'check' } | { op: 'nodes' } | { op: 'orphaned'; rank: number; epoch: number };
interface Member { rank: number; pid: number; node: string | null; step: number; state: string; lastSeen: number; held: number; epoch: number; dead: boolean; deaths: number }
interface NodeSeen { node: string; pid: number; lastSeen: number; ranks: number[] }
interface CoordState {
  members: Map<number, Member>; nodes: Map<string, NodeSeen>; deaths: { rank: number; pid: number; at: number; silentMs: number }[];
  /** When this coordinator started, and the epoch at which each orphan was last reassigned (one reassignment per rank per epoch). */
  since: number; reassigned: Map<number, number>; reassignments: number;
}

export interface CoordinatorOptions {
  bus: Bus; dp: number; cellSize?: number; deadAfterMs?: number; checkEveryMs?: number;
  /** Whether this coordinator may act now (its role lease is valid); default always. */
  acting?: () => boolean;
  /** What to do with an orphaned rank (default replace, 3 restarts). */
  onRankLoss?: { policy: 'replace' | 'shrink'; maxRestarts: number };
  /** The widest data parallelism the job's backend trains (scale refuses more; default MAX_DP). */
  maxDp?: number;
}


export function startCoordinator(system: ActorSystem, o: CoordinatorOptions): { ref: ActorRef<CoordMsg>; ready: Promise<EpochInfo>; stop(): Promise<void> } {
  const { bus } = o;
  const job = bus.job;
  const deadAfter = o.deadAfterMs ?? 5000;
  const log = createLogger('coordinator');
  const beats = new LatestPerSender();
  const nodes_ = new NodeClient(bus);
  const ref = system.spawn<CoordState, CoordMsg>('coordinator', {
    init: () => ({ members: new Map(), nodes: new Map(), deaths: [], since: Date.now(), reassigned: new Map(), reassignments: 0 }),
    async handle(st, msg, ctx) {
      const now = Date.now();
      if (msg.op === 'hb') {
        const h = msg.hb;
        // A heartbeat not newer than the last one from its sender (a replay, or one overtaken
        // by a later beat) would keep a silent process alive: ignored.
        if (!beats.accept(h.kind === 'node' ? `node:${h.node}:${h.pid}` : `rank:${h.rank}:${h.pid}`, h.at, h.seq)) return st;
        if (h.kind === 'node') {
          st.nodes.set(h.node, { node: h.node, pid: h.pid, lastSeen: now, ranks: h.ranks });
        } else {
          const prev = st.members.get(h.rank);
          const pid = Number(h.pid);
          // A heartbeat from a declared-dead pid is a zombie's: it stays dead.
          if (prev?.dead && prev.pid === pid) return st;
          st.members.set(h.rank, {
            rank: h.rank, pid, node: h.node ?? prev?.node ?? null, step: Number(h.step), state: String(h.state),
            held: Number(h.held), epoch: Number(h.epoch), lastSeen: now, dead: false, deaths: prev?.deaths ?? 0,
          });
        }
      } else if (msg.op === 'check') {
        // An old holder of the role (frozen past its lease, say) judges no one.
        if (o.acting && !o.acting()) return st;
        await checkOrphans(st, now);
        for (const m of st.members.values()) {
          if (m.dead || m.state === 'retired' || m.state === 'done' || now - m.lastSeen <= deadAfter) continue;
          m.dead = true;
          m.deaths++;
          st.deaths.push({ rank: m.rank, pid: m.pid, at: now, silentMs: now - m.lastSeen });
          ctx.log.warn('rank declared dead: no heartbeat', { rank: m.rank, pid: m.pid, silentMs: now - m.lastSeen });
          publish.dead(bus, { rank: m.rank, pid: m.pid, silentMs: now - m.lastSeen });
        }
      } else if (msg.op === 'orphaned') {
        st.reassigned.set(msg.rank, msg.epoch);
        st.reassignments++;
      } else if (msg.op === 'nodes') {
        ctx.reply([...st.nodes.values()].filter((n) => now - n.lastSeen < Math.max(5000, deadAfter)));
      } else {
        const kv = await bus.kv(bus.subjects.kvBucket);
        const epoch = (await kv.get<EpochInfo>(STORAGE.epochKey))?.value ?? null;
        const status: CoordStatus = {
          epoch, deadAfterMs: deadAfter, deaths: st.deaths, reassigned: st.reassignments,
          nodes: [...st.nodes.values()].map((n) => ({ ...n, alive: now - n.lastSeen < Math.max(5000, deadAfter) })),
          members: [...st.members.values()].map((m) => ({
            ...m, alive: !m.dead && now - m.lastSeen < deadAfter, silentMs: now - m.lastSeen,
            member: epoch ? epochMembers(epoch).includes(m.rank) : false,
          })),
        };
        ctx.reply(status);
      }
      return st;
    },
  });

  const nodeWindow = Math.max(5000, deadAfter);
  const loss = o.onRankLoss ?? { policy: 'replace' as const, maxRestarts: 3 };
  const restarts = new Map<number, number>();
  /** Where each orphan went: a node that comes back and asks to respawn it is told (see coord.regroup). */
  const movedTo = new Map<number, { node: string; epoch: number }>();
  const firstSeen = new Map<number, number>();
  let reassigning = false;

  /** Finds the current epoch's orphans (see the header) and reassigns them, one pass at a time, off the actor's turn. */
  async function checkOrphans(st: CoordState, now: number): Promise<void> {
    // Node agents beat every second: three beats heard from every live one before anyone is judged.
    if (reassigning || now - st.since < Math.min(nodeWindow, 3000)) return;
    const epoch = (await (await bus.kv(bus.subjects.kvBucket)).get<EpochInfo>(STORAGE.epochKey))?.value;
    if (!epoch) return;
    const live = [...st.nodes.values()].filter((n) => now - n.lastSeen < nodeWindow);
    if (live.length === 0) return; // nobody to spawn on, and maybe our own view is cut off
    const hosted = new Set(live.flatMap((n) => n.ranks));
    // A member not heard yet (just spawned by a scale-up, say) counts as silent only from when this coordinator first saw it in the epoch.
    for (const r of epochMembers(epoch)) if (!firstSeen.has(r)) firstSeen.set(r, now);
    const orphans = epochMembers(epoch).filter((r) => {
      const m = st.members.get(r);
      if (hosted.has(r) || (st.reassigned.get(r) ?? -1) >= epoch.epoch) return false;
      if (m && (m.state === 'done' || m.state === 'retired')) return false;
      return now - (m?.lastSeen ?? firstSeen.get(r)!) > deadAfter;
    });
    if (orphans.length === 0) return;
    reassigning = true;
    void reassign(orphans, epoch.epoch).finally(() => { reassigning = false; });
  }

  async function reassign(orphans: number[], fromEpoch: number): Promise<void> {
    const load = new Map<string, number>();
    for (const rank of orphans) {
      const used = restarts.get(rank) ?? 0;
      const replace = loss.policy === 'replace' && used < loss.maxRestarts;
      try {
        const r = await changeEpoch(bus, (cur) => {
          if (cur.epoch > fromEpoch && replace) return null; // the world re-formed already: join it
          if (!epochMembers(cur).includes(rank)) return null;
          const members = replace ? epochMembers(cur) : withoutGroupOf(cur, rank);
          return members.length ? members : null;
        });
        await new QueueClient(bus).revoke({ consumer: `rank-${rank}`, beforeEpoch: r.to.epoch })
          .catch((e: unknown) => log.warn('revoking an orphaned rank\'s leases failed; they expire at their deadline', { rank, error: (e as Error).message }));
        if (replace) {
          restarts.set(rank, used + 1);
          const node = await spawnRank(rank, r.to.epoch, load);
          movedTo.set(rank, { node, epoch: r.to.epoch });
          log.warn('rank orphaned (its node is gone): respawned on another node', { rank, node, epoch: r.to.epoch, restart: used + 1, of: loss.maxRestarts });
        } else {
          log.warn('rank orphaned (its node is gone): the job goes on without it', { rank, epoch: r.to.epoch, policy: loss.policy, restarts: used });
        }
        system.dispatch(ref, { op: 'orphaned', rank, epoch: r.to.epoch });
      } catch (e) {
        log.error('reassigning an orphaned rank failed; retrying at the next check', { rank, error: (e as Error).message });
      }
    }
  }

  const liveNodes = async (): Promise<NodeSeen[]> => {
    const nodes = await system.query<NodeSeen[]>(ref, { op: 'nodes' }, 10_000);
    if (nodes.length === 0) throw new UnavailableError(`scale: no node agent of job ${job} is alive to spawn ranks on`);
    return nodes;
  };

  /** Asks the node agent hosting the fewest ranks (counting `load`, this scale's spawns) to spawn `rank`. */
  async function spawnRank(rank: number, minEpoch: number, load: Map<string, number>): Promise<string> {
    const nodes = (await liveNodes()).map((n) => ({ node: n.node, ranks: n.ranks.length + (load.get(n.node) ?? 0) }));
    const node = nodes.sort((a, b) => a.ranks - b.ranks || a.node.localeCompare(b.node))[0]!.node;
    await nodes_.spawn(node, { rank, minEpoch });
    load.set(node, (load.get(node) ?? 0) + 1);
    return node;
  }

  const hbSub = listen(bus, 'hb', (hb) => { system.dispatch(ref, { op: 'hb', hb }); }, { subject: bus.subjects.hbAll });
  const statusSub = serve(bus, 'coord.status', () => system.query<CoordStatus>(ref, { op: 'status' }, 10_000), { dedupe: false });
  const scaleSub = serve(bus, 'coord.scale', async (m): Promise<ScaleReply> => {
    const dp = m.dp;
    if (o.maxDp !== undefined && dp > o.maxDp) throw new InvalidArgumentError(`scale: this job's backend trains at most dp ${o.maxDp} (one unsharded rank), got dp ${dp}`);
    const cur = (await (await bus.kv(bus.subjects.kvBucket)).get<EpochInfo>(STORAGE.epochKey))?.value;
    if (!cur || dp > cur.partitions) await liveNodes(); // refuse before any change when nobody can spawn the ranks
    const r = await bumpEpoch(bus, dp);
    const before = new Set(epochMembers(r.from));
    const spawned: { rank: number; node: string }[] = [];
    const failed: { rank: number; error: string }[] = [];
    const load = new Map<string, number>();
    for (const rank of epochMembers(r.to)) {
      if (before.has(rank)) continue;
      try { spawned.push({ rank, node: await spawnRank(rank, r.to.epoch, load) }); } catch (e) { failed.push({ rank, error: (e as Error).message }); }
    }
    if (failed.length) {
      // A member that never comes would stall the world's rendezvous: drop it again.
      await changeEpoch(bus, (c) => failed.reduce((m, f) => withoutGroupOf({ ...c, members: m, partitions: m.length / cellSizeOf(c) }, f.rank), epochMembers(c)));
      throw new UnavailableError(`scale: could not spawn ranks ${failed.map((f) => `${f.rank} (${f.error})`).join(', ')}; the job goes on without them`);
    }
    return { ...r, spawned, retiring: [...before].filter((x) => !epochMembers(r.to).includes(x)) };
  });
  const regroupSub = serve(bus, 'coord.regroup', async (m) => {
    const from = m.fromEpoch, remove = m.remove;
    const moved = m.by === 'node' && m.rank !== undefined ? movedTo.get(m.rank) : undefined;
    if (moved && moved.epoch > (from ?? -1)) {
      const cur = (await (await bus.kv(bus.subjects.kvBucket)).get<EpochInfo>(STORAGE.epochKey))!.value;
      return { from: cur, to: cur, changed: false, reassigned: moved };
    }
    const r = await changeEpoch(bus, (cur) => {
      if (from !== undefined && cur.epoch > from) return null; // someone regrouped already
      const members = remove === undefined ? epochMembers(cur) : withoutGroupOf(cur, remove);
      return members.length ? members : null;
    });
    if (r.changed) log.warn('regroup: new epoch', { from: r.from.epoch, to: r.to.epoch, members: r.to.members, removed: remove ?? null, rank: m.rank ?? null, by: m.by ?? 'rank' });
    return r;
  });
  const timer = setInterval(() => { try { system.dispatch(ref, { op: 'check' }); } catch { /* busy */ } }, o.checkEveryMs ?? Math.max(200, Math.min(1000, Math.floor(deadAfter / 4))));
  timer.unref();
  return {
    ref,
    ready: ensureEpoch(bus, o.dp, o.cellSize ?? 1),
    async stop() { clearInterval(timer); for (const s of [hbSub, statusSub, scaleSub, regroupSub]) s.unsubscribe(); await system.stop(ref); },
  };
}
