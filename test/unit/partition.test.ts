import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { InvalidArgumentError } from '../../src/errors.ts';
import { MAX_PARTITIONS, dpPartition, hash64, jumpHash } from '../../src/ledger/partition.ts';

describe('partition: jump consistent hash', () => {
  it('matches the published jump-hash test vectors', () => {
    // From the Go/C/Elixir reference implementations of Lamping & Veach.
    const vectors: [bigint, number, number][] = [
      [1n, 1, 0], [42n, 57, 43], [0xdead10ccn, 1, 0], [0xdead10ccn, 666, 361], [256n, 1024, 520],
      [0n, 1, 0], [4n, 2, 1], [7n, 2, 0], [1n, 128, 55], [129n, 128, 120], [2n ** 64n - 1n, 128, 92],
    ];
    for (const [key, n, want] of vectors) assert.equal(jumpHash(key, n), want, `jump(${key}, ${n})`);
  });

  it('is stable: golden values of dpPartition (sha256-derived 64-bit key)', () => {
    assert.equal(hash64('row-0').toString(16), '3c831eb5a23962a5');
    assert.equal(hash64('ds.train:000123').toString(16), 'd10376ba6ee369b0');
    const golden: Record<string, number[]> = {
      'row-0': [0, 0, 0, 0, 0, 0, 10, 52, 632],
      'row-1': [0, 1, 1, 1, 4, 4, 4, 64, 297],
      'row-42': [0, 0, 2, 3, 5, 5, 5, 5, 521],
      'sample:abc': [0, 1, 1, 1, 1, 1, 1, 1, 612],
      'ds.train:000123': [0, 0, 2, 2, 2, 2, 15, 28, 852],
      'a-b_c.d': [0, 0, 2, 2, 5, 5, 5, 5, 5],
    };
    const nums = [1, 2, 3, 4, 7, 8, 16, 100, 1000];
    for (const [id, want] of Object.entries(golden)) assert.deepEqual(nums.map((n) => dpPartition(id, n)), want, id);
  });

  it('gives the same answer in another process', () => {
    const code = `import { dpPartition } from './src/ledger/partition.ts'; console.log(JSON.stringify(['row-0','row-1','x','ds.train:000123'].map((id) => dpPartition(id, 37))));`;
    const r = spawnSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', code], { encoding: 'utf8' });
    assert.equal(r.status, 0, r.stderr);
    assert.deepEqual(JSON.parse(r.stdout), ['row-0', 'row-1', 'x', 'ds.train:000123'].map((id) => dpPartition(id, 37)));
  });

  it('moves about 1/(n+1) of the keys when n -> n+1, all to the new index', () => {
    const ids = Array.from({ length: 20000 }, (_, i) => `sample-${i}`);
    const keys = ids.map(hash64);
    for (const n of [1, 2, 3, 7, 15]) {
      let moved = 0;
      for (const k of keys) {
        const a = jumpHash(k, n);
        const b = jumpHash(k, n + 1);
        if (a !== b) {
          moved++;
          assert.equal(b, n, 'a moved key goes to the new index');
        }
      }
      const expected = keys.length / (n + 1);
      assert.ok(Math.abs(moved - expected) < 5 * Math.sqrt(expected), `n=${n}: moved ${moved}, expected ~${expected.toFixed(0)}`);
    }
    // Shrinking moves only the keys of the removed index.
    for (const k of keys) {
      const a = jumpHash(k, 5);
      if (a !== 4) assert.equal(jumpHash(k, 4), a);
    }
  });

  it('spreads keys uniformly (chi-square)', () => {
    const N = 40000;
    for (const n of [2, 3, 8, 13]) {
      const counts = new Array(n).fill(0);
      for (let i = 0; i < N; i++) counts[dpPartition(`ds:${i}`, n)]++;
      const e = N / n;
      const chi2 = counts.reduce((s, c) => s + (c - e) ** 2 / e, 0);
      // 99.9th percentile of chi-square with n-1 degrees of freedom is < 3n + 10 for these n.
      assert.ok(chi2 < 3 * n + 10, `n=${n}: chi2 ${chi2.toFixed(1)} counts ${counts}`);
    }
  });

  it('validates its arguments', () => {
    for (const n of [0, -1, 1.5, Number.NaN, MAX_PARTITIONS + 1, '2' as unknown as number]) {
      assert.throws(() => dpPartition('x', n), InvalidArgumentError, String(n));
    }
    assert.throws(() => dpPartition(5 as unknown as string, 2), InvalidArgumentError);
    assert.equal(dpPartition('x', MAX_PARTITIONS) < MAX_PARTITIONS, true);
  });
});
