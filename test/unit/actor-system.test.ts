import assert from 'node:assert/strict';
import { ActorSystem, type ActorRef, type ActorSpec } from '../../src/runtime/actor-system.ts';
import { ActorStoppedError, BackpressureError, TimeoutError, DraftwireError } from '../../src/errors.ts';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
async function until(pred: () => boolean, ms = 2000): Promise<void> {
  const end = Date.now() + ms;
  while (!pred()) { if (Date.now() > end) throw new Error('condition not reached in time'); await sleep(5); }
}

type CounterMsg = { t: 'inc' } | { t: 'get' } | { t: 'boom' } | { t: 'slow'; ms: number };
function counter(log: string[] = [], extra: Partial<ActorSpec<number, CounterMsg>> = {}): ActorSpec<number, CounterMsg> {
  return {
    init: () => { log.push('init'); return 0; },
    async handle(n, m, ctx) {
      if (m.t === 'inc') return n + 1;
      if (m.t === 'get') { ctx.reply(n); return n; }
      if (m.t === 'slow') { await sleep(m.ms); return n + 1; }
      throw new Error('boom');
    },
    afterStop: (n) => { log.push(`afterStop:${n}`); },
    ...extra,
  };
}

describe('ActorSystem (nact wrapper)', () => {
  let sys: ActorSystem;
  beforeEach(() => { sys = new ActorSystem('t'); });
  afterEach(async () => { await sys.shutdown(); });

  it('processes messages in order, one at a time, and answers queries', async () => {
    const seen: number[] = [];
    let concurrent = 0, maxConcurrent = 0;
    const ref = sys.spawn('serial', {
      init: () => [] as number[],
      async handle(s, m: number, ctx) {
        concurrent++; maxConcurrent = Math.max(maxConcurrent, concurrent);
        await sleep(m % 3);
        seen.push(m); concurrent--;
        if (m === -1) ctx.reply(seen.length - 1);
        return s;
      },
    });
    for (let i = 0; i < 20; i++) assert.equal(sys.dispatch(ref, i), true);
    assert.equal(await sys.query(ref, -1, 2000), 20);
    assert.deepEqual(seen.slice(0, 20), Array.from({ length: 20 }, (_, i) => i));
    assert.equal(maxConcurrent, 1);
  });

  it('restarts a crashed actor with fresh state from init, after afterStop, and counts it', async () => {
    const log: string[] = [];
    const ref = sys.spawn('c', counter(log, { backoffInitialMs: 5 }));
    sys.dispatch(ref, { t: 'inc' });
    sys.dispatch(ref, { t: 'inc' });
    assert.equal(await sys.query(ref, { t: 'get' }, 1000), 2);
    await assert.rejects(sys.query(ref, { t: 'boom' }, 1000), /boom/);
    // Messages sent while it restarts reach the new incarnation (same ref).
    sys.dispatch(ref, { t: 'inc' });
    assert.equal(await sys.query(ref, { t: 'get' }, 2000), 1);
    assert.deepEqual(log, ['init', 'afterStop:2', 'init']);
    assert.equal(sys.restartCount(ref), 1);
    assert.equal(sys.stats().restarts, 1);
    assert.equal(sys.stats().crashes, 1);
    assert.equal(sys.isAlive(ref), true);
  });

  it('keeps the messages queued behind the crashing one for the next incarnation', async () => {
    const ref = sys.spawn('q', counter([], { backoffInitialMs: 1 }));
    sys.dispatch(ref, { t: 'slow', ms: 20 });
    sys.dispatch(ref, { t: 'boom' });
    sys.dispatch(ref, { t: 'inc' });
    sys.dispatch(ref, { t: 'inc' });
    assert.equal(await sys.query(ref, { t: 'get' }, 2000), 2);
  });

  it("onCrash 'stop' stops the actor; later messages are dead letters", async () => {
    const log: string[] = [];
    const ref = sys.spawn('s', counter(log, { onCrash: 'stop' }));
    sys.dispatch(ref, { t: 'inc' });
    sys.dispatch(ref, { t: 'boom' });
    const q = sys.query(ref, { t: 'get' }, 1000); // queued behind the crash
    await assert.rejects(q, ActorStoppedError);
    await until(() => !sys.isAlive(ref));
    assert.deepEqual(log, ['init', 'afterStop:1']);
    const before = sys.stats().deadLetters;
    assert.equal(sys.dispatch(ref, { t: 'inc' }), false);
    assert.equal(sys.stats().deadLetters, before + 1);
    await assert.rejects(sys.query(ref, { t: 'get' }, 100), (e: unknown) => e instanceof ActorStoppedError && (e as DraftwireError).code === 'ACTOR_STOPPED');
  });

  it('gives up after maxRestarts within the window, with growing backoff', async () => {
    let inits = 0;
    const times: number[] = [];
    const ref = sys.spawn('flaky', {
      init: () => { inits++; times.push(Date.now()); return null; },
      handle: () => { throw new Error('always'); },
      maxRestarts: 3, backoffInitialMs: 10, backoffMaxMs: 1000,
    });
    for (let i = 0; i < 5; i++) { sys.dispatch(ref, i); await sleep(1); }
    await until(() => !sys.isAlive(ref), 3000);
    assert.equal(inits, 4); // first + 3 restarts
    assert.equal(sys.restartCount(ref), 3);
    const gaps = times.slice(1).map((t, i) => t - times[i]);
    assert.ok(gaps[2] >= 35, `third backoff should be ~40 ms, gaps ${gaps}`);
  });

  it('counts a dead letter for dispatch to a stopped actor and returns false', async () => {
    const ref = sys.spawn('d', counter());
    await sys.stop(ref);
    assert.equal(sys.isAlive(ref), false);
    assert.equal(sys.dispatch(ref, { t: 'inc' }), false);
    assert.equal(sys.dispatch(ref, { t: 'inc' }), false);
    assert.equal(sys.stats().deadLetters, 2);
    const ghost: ActorRef<unknown> = { name: 'ghost', path: '/ghost' };
    assert.equal(sys.dispatch(ghost, 1), false);
    assert.equal(sys.stats().deadLetters, 3);
  });

  it('bounds the mailbox: BackpressureError when full, room again after draining', async () => {
    let release!: () => void;
    const gate = new Promise<void>((r) => { release = r; });
    const ref = sys.spawn('b', {
      init: () => 0,
      async handle(n, m: string, ctx) { if (m === 'block') await gate; if (m === 'get') ctx.reply(n); return n + 1; },
      mailboxLimit: 3,
    });
    assert.equal(sys.dispatch(ref, 'block'), true);
    assert.equal(sys.dispatch(ref, 'a'), true);
    assert.equal(sys.dispatch(ref, 'b'), true);
    assert.equal(sys.stats().mailboxDepths['/b'], 3);
    assert.throws(() => sys.dispatch(ref, 'c'), (e: unknown) => e instanceof BackpressureError && (e as BackpressureError).retryable);
    await assert.rejects(sys.query(ref, 'get', 100), BackpressureError);
    release();
    await until(() => sys.stats().mailboxDepths['/b'] === 0);
    assert.equal(await sys.query(ref, 'get', 1000), 3);
  });

  it('stopping a parent stops its children (grandchildren first) and runs every afterStop once', async () => {
    const order: string[] = [];
    const leaf = (name: string): ActorSpec<null, unknown> => ({
      init: () => null, handle: (s) => s, afterStop: () => { order.push(name); },
    });
    const parent = sys.spawn('p', {
      init: (ctx) => { const c = ctx.spawn('c', { ...leaf('c'), init: (cctx) => { cctx.spawn('g', leaf('g')); return null; } }); return { c }; },
      handle: (s, _m, ctx) => { ctx.reply(ctx.children().map((r) => r.path)); return s; },
      afterStop: () => { order.push('p'); },
    });
    assert.deepEqual(await sys.query(parent, 'kids', 1000), ['/p/c']);
    assert.deepEqual(sys.children(sys.lookup('/p/c')!).map((r) => r.path), ['/p/c/g']);
    assert.equal(sys.stats().actors, 3);
    await sys.stop(parent);
    assert.deepEqual(order, ['g', 'c', 'p']);
    assert.equal(sys.stats().actors, 0);
    assert.equal(sys.lookup('/p/c/g'), null);
    assert.equal(sys.dispatch({ name: 'g', path: '/p/c/g' }, 1), false);
  });

  it('restarting a parent stops its children; init re-creates them', async () => {
    const stopped: string[] = [];
    let childInits = 0;
    const parent = sys.spawn('rp', {
      init: (ctx) => { ctx.spawn('kid', { init: () => { childInits++; return 0; }, handle: (s) => s, afterStop: () => { stopped.push('kid'); } }); return 0; },
      handle: (s, m: string, ctx) => { if (m === 'boom') throw new Error('x'); ctx.reply(ctx.children().length); return s; },
      backoffInitialMs: 1,
    });
    const firstKid = sys.lookup('/rp/kid')!;
    sys.dispatch(parent, 'boom');
    assert.equal(await sys.query(parent, 'n', 2000), 1);
    assert.deepEqual(stopped, ['kid']);
    assert.equal(childInits, 2);
    // A child of the new incarnation is a new actor: the old ref is dead, the path lives.
    assert.equal(sys.isAlive(firstKid), false);
    const kid = sys.lookup('/rp/kid');
    assert.ok(kid && kid !== firstKid && sys.isAlive(kid));
    assert.equal(sys.dispatch(firstKid, 1), false);
  });

  it('query times out with TimeoutError; stop waits for the message in flight', async () => {
    const log: string[] = [];
    const ref = sys.spawn('t', counter(log));
    await assert.rejects(sys.query(ref, { t: 'slow', ms: 200 }, 20), TimeoutError);
    sys.dispatch(ref, { t: 'inc' }); // queued behind the slow one: dead letter on stop
    const dl = sys.stats().deadLetters;
    await sys.stop(ref);
    assert.deepEqual(log, ['init', 'afterStop:1']); // the in-flight slow message completed
    assert.equal(sys.stats().deadLetters, dl + 1);
  });

  it('a late ctx.reply answers its own query only (never the next one)', async () => {
    const ref = sys.spawn('late', {
      init: () => 0,
      handle(n, m: string, ctx) {
        if (m === 'late') setTimeout(() => ctx.reply('late reply'), 30);
        else ctx.reply(`now:${m}`);
        return n + 1;
      },
    });
    assert.equal(await sys.query(ref, 'late', 1000), undefined); // handler ended without replying
    const second = sys.query(ref, 'b', 1000);
    await sleep(60);
    assert.equal(await second, 'now:b');
  });

  it('rejects bad names and duplicate siblings', () => {
    sys.spawn('x', counter());
    assert.throws(() => sys.spawn('x', counter()), /already exists/);
    assert.throws(() => sys.spawn('a/b', counter()), /must match/);
  });
});
