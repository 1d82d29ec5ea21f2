import assert from 'node:assert/strict';
import { benchStem, Reporter } from '../../bench/support/report.ts';

describe('bench Reporter', () => {
  const make = (json: boolean) => {
    const lines: string[] = [];
    return { r: new Reporter('store', { json, write: (l) => { lines.push(l); } }), lines };
  };

  it('prints one JSON object per figure with --json: bench, name, value, unit, baseline, then context', () => {
    const { r, lines } = make(true);
    r.log('human text is dropped');
    r.table(['a'], [['1']]);
    r.markdown(['a', 'b'], [['x', '1']]);
    const raw = r.add({ name: 'raw read, 1 MiB', value: 1.5, unit: 'GB/s', sampleMiB: 1 });
    r.add({ name: 'store get, 1 MiB', value: 0.75, unit: 'GB/s', baseline: raw, sampleMiB: 1, verify: true });
    r.context({ dir: '/tmp', iters: 40 });
    assert.deepEqual(lines, []); // nothing before end()
    r.end();
    assert.equal(lines.length, 2);
    const [a, b] = lines.map((l) => JSON.parse(l) as Record<string, unknown>);
    assert.deepEqual(a, { bench: 'store', name: 'raw read, 1 MiB', value: 1.5, unit: 'GB/s', baseline: null, dir: '/tmp', iters: 40, sampleMiB: 1 });
    assert.deepEqual(b, {
      bench: 'store', name: 'store get, 1 MiB', value: 0.75, unit: 'GB/s',
      baseline: { name: 'raw read, 1 MiB', value: 1.5, unit: 'GB/s' }, dir: '/tmp', iters: 40, sampleMiB: 1, verify: true,
    });
    assert.deepEqual(Object.keys(b!).slice(0, 5), ['bench', 'name', 'value', 'unit', 'baseline']);
    assert.throws(() => r.add({ name: 'late', value: 1, unit: 'x' }), /after end/);
  });

  it('prints the human text as it comes without --json, and no JSON at the end', () => {
    const { r, lines } = make(false);
    r.log('header', 'second');
    r.add({ name: 'f', value: 1, unit: 'x' });
    r.table(['threads', 'ms'], [['1', '844'], ['2', '91']]);
    r.markdown(['layout', 'path', 'files/s'], [['capture', 'raw', '430.0']], 2);
    r.end();
    assert.deepEqual(lines, [
      'header', 'second',
      'threads   ms',
      '      1  844',
      '      2   91',
      '| layout | path | files/s |',
      '|---|---|---:|',
      '| capture | raw | 430.0 |',
    ]);
  });

  it('refuses duplicate names, non-numbers, reserved and nested fields; non-finite values fail the JSON', () => {
    const { r } = make(true);
    r.add({ name: 'a', value: 1, unit: 'x' });
    assert.throws(() => r.add({ name: 'a', value: 2, unit: 'x' }), /two figures named "a"/);
    assert.throws(() => r.add({ name: 'b', value: '3' as unknown as number, unit: 'x' }), /not a number/);
    assert.throws(() => r.add({ name: 'c', value: 1, unit: 'x', bench: 'other' }), /reserved/);
    assert.throws(() => r.add({ name: 'd', value: 1, unit: 'x', shape: [1, 2] }), /must be a string, a finite number/);
    assert.throws(() => r.context({ n: Infinity }), /finite number/);
    r.add({ name: 'e', value: NaN, unit: 'x' });
    assert.throws(() => r.end(), /figure "e": value NaN is not a finite number/);
    const { r: h } = make(false);
    h.add({ name: 'e', value: NaN, unit: 'x' });
    h.end(); // the human form prints what it printed before
  });

  it('names a bench by its file stem, and reads --json from argv', () => {
    assert.equal(benchStem('file:///repo/bench/draft-1b.bench.ts'), 'draft-1b');
    assert.equal(benchStem('/repo/bench/store.bench.ts'), 'store');
    assert.equal(Reporter.forBench('file:///repo/bench/lease.bench.ts', { argv: ['node', 'x', '--json'] }).bench, 'lease');
    assert.equal(Reporter.forBench('file:///repo/bench/lease.bench.ts', { argv: ['node', 'x', '--json'] }).json, true);
    assert.equal(new Reporter('x', { argv: ['node', 'x'] }).json, false);
  });
});
