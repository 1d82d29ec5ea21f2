// The store janitor: frees the bytes of consumed and dead-lettered samples when the queue
// announces them on `dw.<job>.store.free`, and sweeps abandoned temp files, stale locks and
// old tombstones on a timer. Freeing is idempotent (a repeated announcement is harmless).
import type { ActorRef, ActorSystem } from '../src/runtime/actor-system.ts';
import type { Bus } from '../src/bus/bus.ts';
import type { GcStats } from '../src/store/feature-store.ts';
import type { FeatureStore } from '../src/store/feature-store.ts';
import type { SampleRef } from '../src/wire/sampleref.ts';
import type { JanitorStatus } from '../src/wire/protocol.ts';
import { listen, serve } from '../src/bus/clients.ts';

type JanitorMsg = { op: 'free'; ref: SampleRef; why: 'consumed' | 'dead' } | { op: 'gc' } | { op: 'status' };
interface JanitorState { freed: number; aborted: number; lastGc: GcStats | null; sweeps: number }

export function startJanitor(system: ActorSystem, o: { bus: Bus; store: FeatureStore; gcEveryMs?: number }): { ref: ActorRef<JanitorMsg>; stop(): Promise<void> } {
  const { bus, store } = o;
  const ref = system.spawn<JanitorState, JanitorMsg>('janitor', {
    init: () => ({ freed: 0, aborted: 0, lastGc: null, sweeps: 0 }),
    async handle(st, msg, ctx) {
      if (msg.op === 'free') {
        // A repeated announcement (a replay, or the queue's own resend) frees nothing twice:
        // release and abort report false for bytes already gone, and never free a newer generation.
        const r = msg.ref;
        // Another node's sample (machines that share no directory): its own node frees it.
        if (!store.owns(r)) return st;
        if (msg.why === 'dead') { if (await store.abort(r.sampleId, 'dead-lettered', { generation: r.generation })) st.aborted++; } else if (await store.release(r)) st.freed++;
      } else if (msg.op === 'gc') {
        st.lastGc = await store.gc(Date.now());
        st.sweeps++;
      } else ctx.reply({ ...st, usage: await store.usage() });
      return st;
    },
    mailboxLimit: 100_000,
  });
  const sub = listen(bus, 'store.free', (m) => { system.dispatch(ref, { op: 'free', ref: m.ref, why: m.why }); });
  const statusSub = serve(bus, 'janitor.status', () => system.query<JanitorStatus>(ref, { op: 'status' }, 10_000), { dedupe: false });
  const timer = setInterval(() => { try { system.dispatch(ref, { op: 'gc' }); } catch { /* busy */ } }, o.gcEveryMs ?? 5000);
  timer.unref();
  return {
    ref,
    async stop() { clearInterval(timer); sub.unsubscribe(); statusSub.unsubscribe(); await system.stop(ref); },
  };
}
