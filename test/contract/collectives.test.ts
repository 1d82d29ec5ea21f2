// Collectives over Gloo between real processes (test/support/comm-child.ts), rendezvous
// through NATS KV on a real nats-server: exact results of every op for 2 and 4 ranks,
// TP/SP/DP sub-groups, a free event loop during a 64 MiB all-reduce, and dead or stuck peers.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import { Bus } from '../../src/bus/bus.ts';
import { Communicator, ShardLayout, encodeKvKey } from '../../src/native/collectives.ts';
import { CollectiveError } from '../../src/errors.ts';
import { withNats, type NatsFixture } from '../support/nats-server.ts';
import { killChild, spawnTs, type Child } from '../support/procs.ts';
import type { CommChildSpec } from '../support/comm-child.ts';

const CHILD = fileURLToPath(new URL('../support/comm-child.ts', import.meta.url));
const JOB = 'colltest';
const BUCKET = 'dw_colltest';

type Ev = Record<string, any> & { ev: string };

function events(c: Child): Ev[] {
  return c.output().split('\n').filter((l) => l.startsWith('{"ev"')).map((l) => JSON.parse(l) as Ev);
}

/** The first event of `kind` (rejects if the child exits first or after `ms`). */
async function waitEv(c: Child, kind: string, ms = 30_000): Promise<Ev> {
  const deadline = Date.now() + ms;
  for (;;) {
    const e = events(c).find((x) => x.ev === kind);
    if (e) return e;
    const fatal = events(c).find((x) => x.ev === 'fatal');
    if (fatal) throw new Error(`child failed: ${fatal.name}: ${fatal.message}\n${fatal.stack}\noutput:\n${c.output()}`);
    if (c.proc.exitCode !== null || c.proc.signalCode !== null) throw new Error(`child exited (${c.proc.exitCode ?? c.proc.signalCode}) before "${kind}"; output:\n${c.output()}`);
    if (Date.now() > deadline) throw new Error(`no "${kind}" within ${ms} ms; output:\n${c.output()}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

async function waitExit(c: Child, ms = 15_000): Promise<number | null> {
  let timer: NodeJS.Timeout | undefined;
  const t = new Promise<never>((_, rej) => { timer = setTimeout(() => rej(new Error(`child did not exit within ${ms} ms; output:\n${c.output()}`)), ms); });
  try { return await Promise.race([c.exited, t]); } finally { clearTimeout(timer); }
}

function spawnWorld(nats: NatsFixture, size: number, spec: Partial<CommChildSpec>, prefix = `t-${randomBytes(4).toString('hex')}`): Child[] {
  return Array.from({ length: size }, (_, rank) => spawnTs(CHILD, [JSON.stringify({
    servers: nats.url, job: JOB, bucket: BUCKET, prefix, rank, size, scenario: 'ops', ...spec,
  } satisfies Partial<CommChildSpec>)]));
}

const range = (n: number) => Array.from({ length: n }, (_, i) => i);

function checkOps(size: number, n: number, results: Ev[]): void {
  const S = size;
  for (const { rank: r, res } of results) {
    const at = (what: string) => `${what} on rank ${r} of ${S}`;
    assert.deepEqual(res.sumF32, range(n).map((i) => 1000 * (S * (S - 1)) / 2 + S * i), at('all-reduce sum f32'));
    assert.deepEqual(res.maxF32, range(n).map((i) => (S - 1) * 1.5 - i), at('all-reduce max f32'));
    // Exact in float64 but not in float32: the f64 path really is double.
    const sumF64 = range(n).map((i) => S * i + (2 ** -30 * (S * (S - 1))) / 2);
    assert.deepEqual(res.sumF64, sumF64, at('all-reduce sum f64'));
    assert.deepEqual(res.maxF64, range(n).map((i) => 1e300 * (i + 1)), at('all-reduce max f64'));
    assert.deepEqual(res.allGather, range(S).flatMap((q) => range(n).map((i) => q * 10 + i)), at('all-gather'));
    assert.deepEqual(res.reduceScatter, range(n).map((i) => (S * (S - 1)) / 2 + S * (r * n + i)), at('reduce-scatter'));
    assert.deepEqual(res.broadcast, range(n).map((i) => 7 + i * 0.5), at(`broadcast from rank ${S - 1}`));
    if (r !== 0) assert.ok(res.barrierMs >= 150, `${at('barrier')}: returned after ${res.barrierMs} ms although rank 0 arrived 300 ms late`);
    assert.equal(res.bigMismatches, 0, at('all-reduce of 1,000,003 floats'));
  }
}

describe('collectives over Gloo (processes, rendezvous through NATS KV)', function () {
  this.timeout(60_000);
  const nats = withNats();
  const live: Child[] = [];
  const world = (size: number, spec: Partial<CommChildSpec>, prefix?: string) => {
    const cs = spawnWorld(nats, size, spec, prefix);
    live.push(...cs);
    return cs;
  };
  afterEach(async () => { await Promise.all(live.splice(0).map((c) => killChild(c))); });

  for (const size of [2, 3, 4]) {
    it(`${size} ranks: all-reduce (sum/max, f32/f64), all-gather, reduce-scatter, broadcast, barrier are exact`, async () => {
      const n = 37;
      const prefix = `ops/${size}/${randomBytes(4).toString('hex')}`;
      const bus = await Bus.connect({ servers: nats.url, job: JOB, name: 'observer' });
      try {
        const kv = await bus.kv(BUCKET, { storage: 'memory' });
        const watch = await kv.watch({ key: `${encodeKvKey(prefix)}.>` });
        const seen: string[] = [];
        void (async () => { for await (const ch of watch) if (ch.op === 'PUT') seen.push(ch.key); })();
        const cs = world(size, { scenario: 'ops', n, timeoutMs: 10_000 }, prefix);
        const results = await Promise.all(cs.map((c) => waitEv(c, 'result')));
        checkOps(size, n, results.map((r) => ({ ...r, rank: r.rank as number })));
        for (const c of cs) assert.equal(await waitExit(c), 0, c.output());
        watch.stop();
        // Each rank published its address (Gloo key "<rank>"; Gloo 2022 also sets "rank_<rank>")
        // under the encoded prefix, and removed its keys once everyone connected.
        const p = encodeKvKey(prefix);
        for (const r of range(size)) assert.ok(seen.includes(`${p}.${r}`), `no address key for rank ${r} in ${JSON.stringify(seen)}`);
        for (const k of seen) assert.ok(k.startsWith(`${p}.`), `key ${k} is outside the world's prefix`);
        const left = (await kv.keys()).filter((k) => k.startsWith(encodeKvKey(prefix)));
        assert.deepEqual(left, [], 'rendezvous keys left in the bucket');
      } finally {
        await bus.close();
      }
    });
  }

  it('TP/SP/DP sub-groups of a 2x2 world each reduce correctly and independently', async () => {
    const cs = world(4, { scenario: 'groups', timeoutMs: 10_000 });
    const results = await Promise.all(cs.map((c) => waitEv(c, 'result')));
    for (const [rank, r] of results.entries()) {
      assert.deepEqual(r.world, [4], 'the world after its sub-groups closed');
      const layouts: [number, number, number][] = [[2, 2, 1], [2, 1, 2], [1, 2, 2]];
      for (const [li, [tp, sp, dp]] of layouts.entries()) {
        const L = ShardLayout.of(rank, tp, sp, dp);
        const got = r.res[li];
        const groups = { tp: L.tpGroup(), sp: L.spGroup(), dp: L.dpGroup() };
        const scale = { tp: 1, sp: 10, dp: 100 };
        for (const k of ['tp', 'sp', 'dp'] as const) {
          const g = groups[k];
          const what = `${k} group ${JSON.stringify(g)} of layout ${got.tag}, rank ${rank}`;
          assert.deepEqual(got.ranks[k], [g.indexOf(rank), g.length], what);
          assert.deepEqual(got.sums[k], [scale[k] * g.reduce((a, q) => a + q + 1, 0), g.length], what);
        }
        assert.deepEqual(got.tpGathered, groups.tp, `tp all-gather of layout ${got.tag}, rank ${rank}`);
      }
    }
    for (const c of cs) assert.equal(await waitExit(c), 0, c.output());
  });

  it('four 64 MiB all-reduces keep the event loop free (a 5 ms timer keeps ticking)', async () => {
    const elements = 16 << 20; // 64 MiB of float32
    const cs = world(2, { scenario: 'big', elements, timeoutMs: 30_000 });
    const results = await Promise.all(cs.map((c) => waitEv(c, 'result', 45_000)));
    for (const r of results) {
      assert.equal(r.mismatches, 0, 'the 64 MiB all-reduce result');
      assert.ok(r.ms > 50, `the all-reduces took ${r.ms} ms: too fast to say anything about the timer`);
      assert.ok(r.ticks >= r.ms / 50, `only ${r.ticks} timer ticks during a ${Math.round(r.ms)} ms all-reduce`);
      assert.ok(r.maxGap < 250, `the event loop stalled for ${Math.round(r.maxGap)} ms during the all-reduce`);
    }
    for (const c of cs) assert.equal(await waitExit(c), 0, c.output());
  });

  it('a SIGKILLed peer makes the pending all-reduce of the others reject with CollectiveError; they exit cleanly', async () => {
    const timeoutMs = 3000, victim = 2;
    const cs = world(4, { scenario: 'fault', victim, timeoutMs });
    await Promise.all(cs.map((c) => waitEv(c, 'warm')));
    const survivors = cs.filter((_, r) => r !== victim);
    await Promise.all(survivors.map((c) => waitEv(c, 'pending')));
    await new Promise((r) => setTimeout(r, 100)); // the survivors are inside the all-reduce
    const t0 = Date.now();
    await killChild(cs[victim]!, 'SIGKILL');
    for (const c of survivors) {
      const e = await waitEv(c, 'error', timeoutMs + 5000);
      const after = Date.now() - t0;
      assert.equal(e.name, 'CollectiveError', `${e.name}: ${e.message}`);
      assert.equal(e.code, 'COLLECTIVE');
      assert.ok(after < timeoutMs + 2000, `rejected ${after} ms after the kill (timeout ${timeoutMs} ms)`);
      assert.match(e.stack, /comm-child\.ts/, 'the error carries the caller\'s stack');
      const a = await waitEv(c, 'after');
      assert.equal(a.ok, false);
      assert.equal(a.name, 'CollectiveError');
      assert.match(a.message, /broken/);
    }
    for (const c of survivors) assert.equal(await waitExit(c), 0, c.output());
  });

  it('a stopped peer (SIGSTOP, sockets open): the others time out with CollectiveError after ~timeoutMs', async () => {
    const timeoutMs = 3000, victim = 1;
    const cs = world(3, { scenario: 'fault', victim, timeoutMs });
    await Promise.all(cs.map((c) => waitEv(c, 'warm')));
    const survivors = cs.filter((_, r) => r !== victim);
    await Promise.all(survivors.map((c) => waitEv(c, 'pending')));
    cs[victim]!.proc.kill('SIGSTOP');
    const t0 = Date.now();
    try {
      for (const c of survivors) {
        const e = await waitEv(c, 'error', timeoutMs + 5000);
        const after = Date.now() - t0;
        assert.equal(e.name, 'CollectiveError', `${e.name}: ${e.message}`);
        assert.ok(after < timeoutMs + 2500, `rejected ${after} ms after the stop (timeout ${timeoutMs} ms)`);
        assert.ok(e.ms >= timeoutMs - 500, `rejected after ${e.ms} ms, before the ${timeoutMs} ms timeout could pass`);
      }
      for (const c of survivors) assert.equal(await waitExit(c), 0, c.output());
    } finally {
      await killChild(cs[victim]!, 'SIGKILL');
    }
  });

  it('connect rejects with CollectiveError when a rank never shows up, or at once when cancelled', async () => {
    const bus = await Bus.connect({ servers: nats.url, job: JOB, name: 'lonely' });
    try {
      const kv = await bus.kv(BUCKET, { storage: 'memory' });
      const t0 = Date.now();
      await assert.rejects(
        Communicator.connect({ rank: 0, size: 2, kv, prefix: `lonely-${randomBytes(4).toString('hex')}`, timeoutMs: 1000, connectTimeoutMs: 1500 }),
        (e: unknown) => e instanceof CollectiveError && /rendezvous/.test(e.message) && /collectives\.test\.ts/.test(e.stack ?? ''),
      );
      const ms = Date.now() - t0;
      assert.ok(ms >= 1400 && ms < 8000, `rejected after ${ms} ms (connect timeout 1500 ms)`);
      // A cancelled rendezvous (the world was superseded) rejects at once, naming the reason.
      const ac = new AbortController();
      const t1 = Date.now();
      setTimeout(() => ac.abort('epoch 3 superseded this world'), 300);
      await assert.rejects(
        Communicator.connect({ rank: 0, size: 2, kv, prefix: `cancelled-${randomBytes(4).toString('hex')}`, connectTimeoutMs: 30_000, signal: ac.signal }),
        (e: unknown) => e instanceof CollectiveError && /rendezvous cancelled: epoch 3 superseded this world/.test(e.message),
      );
      assert.ok(Date.now() - t1 < 5000, `cancelled after ${Date.now() - t1} ms, not at the 30 s connect timeout`);
      await assert.rejects(
        Communicator.connect({ rank: 0, size: 2, kv, prefix: 'no-such-iface', iface: 'dw-no-such0', connectTimeoutMs: 1500 }),
        (e: unknown) => e instanceof CollectiveError && /dw-no-such0/.test(e.message),
      );
    } finally {
      await bus.close();
    }
  });
});
