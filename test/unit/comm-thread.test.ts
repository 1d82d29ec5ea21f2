// ThreadComm (ranks as threads of this process) through the JS Communicator: exact results of
// every op, sub-groups, timeouts, mismatched calls and torn-down groups; plus the KV key
// encoding and the ShardLayout mirror.
import assert from 'node:assert/strict';
import { Communicator, ShardLayout, decodeKvKey, encodeKvKey } from '../../src/native/collectives.ts';
import { CollectiveError, InvalidArgumentError } from '../../src/errors.ts';

const range = (n: number) => Array.from({ length: n }, (_, i) => i);
const all = <T>(w: Communicator[], f: (c: Communicator) => Promise<T>) => Promise.all(w.map(f));

describe('ThreadComm (in-process world of 4 threads)', () => {
  const S = 4, n = 37;
  let w: Communicator[] = [];
  beforeEach(() => { w = Communicator.threadWorld(S, { timeoutMs: 5000 }); });
  afterEach(async () => { await Promise.all(w.map((c) => c.close())); });

  it('has ranks 0..3 of 4', () => {
    assert.deepEqual(w.map((c) => [c.rank, c.size]), range(S).map((r) => [r, S]));
  });

  it('all-reduce sum and max, float32 and float64, in place and bitwise equal on every rank', async () => {
    const f32 = await all(w, (c) => c.allReduce(Float32Array.from(range(n), (i) => c.rank * 1000 + i), 'sum'));
    const m32 = await all(w, (c) => c.allReduce(Float32Array.from(range(n), (i) => ((i + c.rank) % S) * 1.5 - i), 'max'));
    const f64 = await all(w, (c) => c.allReduce(Float64Array.from(range(n), (i) => i + c.rank * 2 ** -30), 'sum'));
    const m64 = await all(w, (c) => c.allReduce(Float64Array.from(range(n), (i) => (i % S === c.rank ? 1e300 : -1e300) * (i + 1)), 'max'));
    for (let r = 0; r < S; r++) {
      assert.ok(f32[r] instanceof Float32Array && f64[r] instanceof Float64Array);
      assert.deepEqual(Array.from(f32[r]!), range(n).map((i) => 1000 * (S * (S - 1)) / 2 + S * i));
      assert.deepEqual(Array.from(m32[r]!), range(n).map((i) => (S - 1) * 1.5 - i));
      assert.deepEqual(Array.from(f64[r]!), range(n).map((i) => S * i + (2 ** -30 * (S * (S - 1))) / 2));
      assert.deepEqual(Array.from(m64[r]!), range(n).map((i) => 1e300 * (i + 1)));
    }
    // Rounding: a non-exact float32 sum is the same bits everywhere (rank order 0..N-1).
    const odd = await all(w, (c) => c.allReduce(Float32Array.from(range(n), (i) => Math.fround(0.1 * (c.rank + 1) + i / 3)), 'sum'));
    for (let r = 1; r < S; r++) assert.deepEqual(odd[r], odd[0]);
    let expect = 0;
    for (let q = 0; q < S; q++) expect = Math.fround(expect + Math.fround(0.1 * (q + 1) + 5 / 3));
    assert.equal(odd[0]![5], expect);
  });

  it('all-gather, reduce-scatter, broadcast from a non-zero root, barrier', async () => {
    const g = await all(w, (c) => c.allGather(Float32Array.from(range(n), (i) => c.rank * 10 + i)));
    const rs = await all(w, (c) => c.reduceScatter(Float32Array.from(range(S * n), (k) => c.rank + k)));
    const b = await all(w, (c) => c.broadcast(c.rank === 2 ? Float32Array.from(range(n), (i) => 7 + i / 2) : new Float32Array(n).fill(-1), 2));
    for (let r = 0; r < S; r++) {
      assert.deepEqual(Array.from(g[r]!), range(S).flatMap((q) => range(n).map((i) => q * 10 + i)));
      assert.deepEqual(Array.from(rs[r]!), range(n).map((i) => (S * (S - 1)) / 2 + S * (r * n + i)));
      assert.deepEqual(Array.from(b[r]!), range(n).map((i) => 7 + i / 2));
    }
    const t0 = performance.now();
    const done: number[] = [];
    await all(w, async (c) => {
      if (c.rank === 3) await new Promise((ok) => setTimeout(ok, 200));
      await c.barrier();
      done.push(performance.now() - t0);
    });
    assert.ok(Math.min(...done) >= 180, `a barrier returned after ${Math.min(...done)} ms although rank 3 came 200 ms late`);
  });

  it('sub-groups (TP/SP/DP of a 2x2 world) reduce independently and concurrently', async () => {
    for (const [tp, sp, dp] of [[2, 2, 1], [2, 1, 2], [1, 2, 2]] as const) {
      const subs = await all(w, async (c) => {
        const L = ShardLayout.of(c.rank, tp, sp, dp);
        return { L, tp: await c.subgroup(L.tpGroup(), 'tp'), sp: await c.subgroup(L.spGroup(), 'sp'), dp: await c.subgroup(L.dpGroup(), 'dp') };
      });
      const sums = await all(w, async (c) => {
        const s = subs[c.rank]!;
        const [a, b, d] = await Promise.all([
          s.tp.allReduce(new Float32Array([c.rank + 1]), 'sum'),
          s.sp.allReduce(new Float32Array([10 * (c.rank + 1)]), 'sum'),
          s.dp.allReduce(new Float32Array([100 * (c.rank + 1)]), 'sum'),
        ]);
        return [a[0], b[0], d[0]];
      });
      for (const [r, s] of subs.entries()) {
        const sum = (g: number[]) => g.reduce((x, q) => x + q + 1, 0);
        assert.deepEqual(sums[r], [sum(s.L.tpGroup()), 10 * sum(s.L.spGroup()), 100 * sum(s.L.dpGroup())], `layout ${tp}x${sp}x${dp}, rank ${r}`);
        assert.deepEqual([s.tp.rank, s.tp.size], [s.L.tpGroup().indexOf(r), tp]);
        assert.deepEqual([s.dp.rank, s.dp.size], [s.L.dpGroup().indexOf(r), dp]);
        await Promise.all([s.tp.close(), s.sp.close(), s.dp.close()]);
      }
    }
  });

  it('a missing rank makes the others reject with CollectiveError after the timeout, and the group stays broken', async () => {
    const v = Communicator.threadWorld(3, { timeoutMs: 300 });
    try {
      const t0 = Date.now();
      const res = await Promise.allSettled(v.slice(0, 2).map((c) => c.allReduce(new Float32Array(4), 'sum')));
      const ms = Date.now() - t0;
      for (const r of res) {
        assert.equal(r.status, 'rejected');
        const e = (r as PromiseRejectedResult).reason;
        assert.ok(e instanceof CollectiveError, String(e));
        assert.match(e.message, /waited 300 ms in allReduce/);
        assert.match(e.stack ?? '', /comm-thread\.test\.ts/, 'the caller\'s stack');
      }
      assert.ok(ms >= 250 && ms < 3000, `rejected after ${ms} ms (timeout 300 ms)`);
      await assert.rejects(v[2]!.barrier(), CollectiveError);
    } finally {
      await Promise.all(v.map((c) => c.close()));
    }
  });

  it('mismatched collectives and an aborted group reject with CollectiveError', async () => {
    const res = await Promise.allSettled(w.map((c) => (c.rank === 1 ? c.barrier() : c.allReduce(new Float32Array(3), 'sum'))));
    for (const r of res) assert.ok(r.status === 'rejected' && r.reason instanceof CollectiveError && /mismatched/.test(r.reason.message), String((r as PromiseRejectedResult).reason));
    const v = Communicator.threadWorld(2, { timeoutMs: 10_000 });
    const pending = v[0]!.allReduce(new Float32Array(1), 'sum');
    await new Promise((ok) => setTimeout(ok, 50));
    assert.equal(v[1]!.abortForTest('torn down by the test'), true);
    await assert.rejects(pending, (e: unknown) => e instanceof CollectiveError && /torn down by the test/.test(e.message));
    await Promise.all(v.map((c) => c.close()));
  });

  it('bad arguments reject with InvalidArgumentError; a closed communicator with CollectiveError', async () => {
    const c = w[0]!;
    await assert.rejects(c.broadcast(new Float32Array(2), 4), InvalidArgumentError);
    await assert.rejects(c.reduceScatter(new Float32Array(6)), /not a multiple of the group size 4/);
    await assert.rejects(c.allReduce(new Float32Array(2), 'min' as 'sum'), InvalidArgumentError);
    await assert.rejects(c.allGather(new Float64Array(2) as unknown as Float32Array), InvalidArgumentError);
    await assert.rejects(c.subgroup([1, 2], 'x'), /must be a member/);
    await c.close();
    await assert.rejects(c.barrier(), CollectiveError);
    assert.throws(() => c.nativeHandle(), CollectiveError);
  });
});

describe('rendezvous KV keys', () => {
  it('encode paths into valid NATS KV keys, injectively', () => {
    const valid = /^[-/=.\w]+$/;
    const paths = ['job/e1/0', 'job/e1/sub/tp/0-1/1', 'a b/ü/.x', 'a//b', '/lead', 'trail/', 'x=41', 'x.y', 'x/y'];
    const keys = paths.map(encodeKvKey);
    for (const [i, k] of keys.entries()) {
      assert.match(k, valid, k);
      assert.ok(!k.startsWith('.') && !k.endsWith('.') && !k.includes('..'), k);
      assert.equal(decodeKvKey(k), paths[i]);
    }
    assert.equal(new Set(keys).size, keys.length);
    assert.equal(encodeKvKey('job/e1/sub/tp/0-1/1'), 'job.e1.sub.tp.0-1.1');
    assert.equal(encodeKvKey('x.y'), 'x=2Ey');
  });
});

describe('ShardLayout mirror', () => {
  it('matches comm.h: TP peers adjacent, then SP, then DP', () => {
    const L = ShardLayout.of(5, 2, 2, 2); // rank 5 = ((1*2)+0)*2+1
    assert.deepEqual([L.tpIdx, L.spIdx, L.dpIdx, L.rank, L.world], [1, 0, 1, 5, 8]);
    assert.deepEqual(L.tpGroup(), [4, 5]);
    assert.deepEqual(L.spGroup(), [5, 7]);
    assert.deepEqual(L.dpGroup(), [1, 5]);
    for (let r = 0; r < 12; r++) assert.equal(ShardLayout.of(r, 3, 2, 2).rank, r);
    assert.throws(() => ShardLayout.of(8, 2, 2, 2), InvalidArgumentError);
  });
});
