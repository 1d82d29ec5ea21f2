// The coordinator: owns the job's epoch record in the KV bucket `dw_<job>` (key `epoch` =
// {epoch, num, members}), written only by compare-and-set, and announced on
// `dw.<job>.ctl.epoch`. It tracks rank heartbeats for membership: a rank silent for
// `deadAfterMs` is declared dead (even if its NATS connection lives, e.g. a SIGSTOPped
// process) on `dw.<job>.ctl.dead` {rank, pid}; the node agent that hosts it kills it and
// its failure policy replaces it. Status shows every member, alive or dead.
//
// Scaling (`dw.<job>.coord.scale` {dp}, `draftwire scale`): the coordinator bumps the epoch
// with a compare-and-set on the KV revision ({epoch+1, num: dp}); the queue follows the KV
// and stops granting under the old epoch; ranks get StaleEpochError on their next credit,
// checkpoint and ack what they trained, release the rest and re-join under the new
// partition count. This build trains with one rank only (the data-parallel step needs the
// native sharded step), so a dp other than 1 is refused with an error saying so; a scale to
// dp 1 still runs the whole epoch protocol (a reshard to a new epoch of the same width).
import type { ActorRef, ActorSystem } from '../src/actor-system.ts';
import type { Bus } from '../src/bus.ts';
import { ConflictError, InvalidArgumentError } from '../src/errors.ts';
import type { EpochInfo } from './rank.ts';

type CoordMsg = { op: 'hb'; hb: Record<string, unknown> } | { op: 'status' } | { op: 'check' };
interface Member { rank: number; pid: number; step: number; state: string; lastSeen: number; held: number; epoch: number; dead: boolean; deaths: number }
interface CoordState { members: Map<number, Member>; deaths: { rank: number; pid: number; at: number; silentMs: number }[] }

/** The widest data-parallel world this build can train (see the header). */
export const MAX_TRAINABLE_DP = 1;

/** Creates the epoch record if absent (epoch 1, num = dp); returns the current one. */
export async function ensureEpoch(bus: Bus, dp: number): Promise<EpochInfo> {
  const kv = await bus.kv(bus.subjects.kvBucket);
  for (;;) {
    const cur = await kv.get<EpochInfo>('epoch');
    if (cur) return cur.value;
    try {
      const info: EpochInfo = { epoch: 1, num: dp, members: [] };
      await kv.create('epoch', info);
      bus.publish(bus.subjects.ctlEpoch, info);
      return info;
    } catch (e) {
      if (!(e instanceof ConflictError)) throw e; // another coordinator won the race: read it
    }
  }
}

/** Bumps the epoch to {epoch + 1, num: dp} by compare-and-set on the KV revision; retries on a lost race. */
export async function bumpEpoch(bus: Bus, dp: number): Promise<{ from: EpochInfo; to: EpochInfo }> {
  if (!Number.isInteger(dp) || dp < 1) throw new InvalidArgumentError(`scale: dp must be an integer >= 1, got ${String(dp)}`);
  if (dp > MAX_TRAINABLE_DP) {
    throw new InvalidArgumentError(`scale: dp ${dp} refused: this build trains with one rank; a wider data-parallel world needs the native sharded step (gradient all-reduce over the collective group), which is not available yet, and ranks training independently would not be data-parallel training`);
  }
  const kv = await bus.kv(bus.subjects.kvBucket);
  for (let i = 0; i < 20; i++) {
    const cur = await kv.get<EpochInfo>('epoch');
    if (!cur) throw new InvalidArgumentError('scale: the job has no epoch record yet (is the coordinator running?)');
    const to: EpochInfo = { epoch: cur.value.epoch + 1, num: dp, members: [] };
    try {
      await kv.update('epoch', to, cur.revision);
      bus.publish(bus.subjects.ctlEpoch, to);
      return { from: cur.value, to };
    } catch (e) {
      if (!(e instanceof ConflictError)) throw e; // someone else bumped it: read again
    }
  }
  throw new ConflictError('scale: lost the epoch compare-and-set 20 times in a row');
}

export function startCoordinator(system: ActorSystem, o: { bus: Bus; dp: number; deadAfterMs?: number; checkEveryMs?: number }): { ref: ActorRef<CoordMsg>; ready: Promise<EpochInfo>; stop(): Promise<void> } {
  const { bus } = o;
  const deadAfter = o.deadAfterMs ?? 5000;
  const ref = system.spawn<CoordState, CoordMsg>('coordinator', {
    init: () => ({ members: new Map(), deaths: [] }),
    async handle(st, msg, ctx) {
      const now = Date.now();
      if (msg.op === 'hb') {
        const h = msg.hb;
        if (typeof h.rank === 'number') {
          const prev = st.members.get(h.rank);
          const pid = Number(h.pid);
          // A heartbeat from a declared-dead pid is a zombie's: it stays dead.
          if (prev?.dead && prev.pid === pid) return st;
          st.members.set(h.rank, { rank: h.rank, pid, step: Number(h.step), state: String(h.state), held: Number(h.held), epoch: Number(h.epoch), lastSeen: now, dead: false, deaths: prev?.deaths ?? 0 });
        }
      } else if (msg.op === 'check') {
        for (const m of st.members.values()) {
          if (m.dead || now - m.lastSeen <= deadAfter) continue;
          m.dead = true;
          m.deaths++;
          st.deaths.push({ rank: m.rank, pid: m.pid, at: now, silentMs: now - m.lastSeen });
          ctx.log.warn('rank declared dead: no heartbeat', { rank: m.rank, pid: m.pid, silentMs: now - m.lastSeen });
          bus.publish(`dw.${bus.job}.ctl.dead`, { rank: m.rank, pid: m.pid, silentMs: now - m.lastSeen });
        }
      } else {
        const kv = await bus.kv(bus.subjects.kvBucket);
        const epoch = (await kv.get<EpochInfo>('epoch'))?.value ?? null;
        ctx.reply({
          epoch, deadAfterMs: deadAfter, deaths: st.deaths,
          members: [...st.members.values()].map((m) => ({ ...m, alive: !m.dead && now - m.lastSeen < deadAfter, silentMs: now - m.lastSeen })),
        });
      }
      return st;
    },
  });
  const hbSub = bus.subscribe<Record<string, unknown>>(bus.subjects.hbAll, (hb) => { if (hb && typeof hb === 'object') system.dispatch(ref, { op: 'hb', hb }); }, { dedupe: false });
  const statusSub = bus.subscribe(`dw.${bus.job}.coord.status`, () => system.query(ref, { op: 'status' }, 10_000), { dedupe: false });
  const scaleSub = bus.subscribe<{ dp?: unknown }>(`dw.${bus.job}.coord.scale`, async (m) => {
    const dp = m?.dp;
    if (!Number.isInteger(dp)) throw new InvalidArgumentError('scale: needs dp (an integer >= 1)');
    return bumpEpoch(bus, dp as number); // KV compare-and-set: no actor state involved
  });
  const timer = setInterval(() => { try { system.dispatch(ref, { op: 'check' }); } catch { /* busy */ } }, o.checkEveryMs ?? Math.max(200, Math.min(1000, Math.floor(deadAfter / 4))));
  timer.unref();
  return {
    ref,
    ready: ensureEpoch(bus, o.dp),
    async stop() { clearInterval(timer); hbSub.unsubscribe(); statusSub.unsubscribe(); scaleSub.unsubscribe(); await system.stop(ref); },
  };
}
