// The coordinator: owns the job's epoch record in the KV bucket `dw_<job>` (key `epoch` =
// {epoch, num, members}), written only by compare-and-set, and announced on
// `dw.<job>.ctl.epoch`. It tracks rank heartbeats for membership; a rank silent for
// `deadAfterMs` is reported dead in status.
import type { ActorRef, ActorSystem } from '../src/actor-system.ts';
import type { Bus } from '../src/bus.ts';
import { ConflictError } from '../src/errors.ts';
import type { EpochInfo } from './rank.ts';

type CoordMsg = { op: 'hb'; hb: Record<string, unknown> } | { op: 'status' };
interface Member { rank: number; pid: number; step: number; state: string; lastSeen: number; held: number }
interface CoordState { members: Map<number, Member> }

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

export function startCoordinator(system: ActorSystem, o: { bus: Bus; dp: number; deadAfterMs?: number }): { ref: ActorRef<CoordMsg>; ready: Promise<EpochInfo>; stop(): Promise<void> } {
  const { bus } = o;
  const deadAfter = o.deadAfterMs ?? 5000;
  const ref = system.spawn<CoordState, CoordMsg>('coordinator', {
    init: () => ({ members: new Map() }),
    async handle(st, msg, ctx) {
      if (msg.op === 'hb') {
        const h = msg.hb;
        if (typeof h.rank === 'number') st.members.set(h.rank, { rank: h.rank, pid: Number(h.pid), step: Number(h.step), state: String(h.state), held: Number(h.held), lastSeen: Date.now() });
      } else {
        const kv = await bus.kv(bus.subjects.kvBucket);
        const epoch = (await kv.get<EpochInfo>('epoch'))?.value ?? null;
        const now = Date.now();
        ctx.reply({ epoch, members: [...st.members.values()].map((m) => ({ ...m, alive: now - m.lastSeen < deadAfter, silentMs: now - m.lastSeen })) });
      }
      return st;
    },
  });
  const hbSub = bus.subscribe<Record<string, unknown>>(bus.subjects.hbAll, (hb) => { if (hb && typeof hb === 'object') system.dispatch(ref, { op: 'hb', hb }); }, { dedupe: false });
  const statusSub = bus.subscribe(`dw.${bus.job}.coord.status`, () => system.query(ref, { op: 'status' }, 10_000), { dedupe: false });
  return {
    ref,
    ready: ensureEpoch(bus, o.dp),
    async stop() { hbSub.unsubscribe(); statusSub.unsubscribe(); await system.stop(ref); },
  };
}
