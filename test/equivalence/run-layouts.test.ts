// A whole job trained by rank processes in TP/SP cells follows the single-rank job: at one
// data-parallel index the samples come in the same order (one partition, commit order), so
// `draftwire run --tp 2` and `--sp 2` must reproduce the single-rank run's loss curve and
// final weights up to float rounding (the sharded step equals the single-rank step, here
// composed over a dozen AdamW steps with leases, checkpoints and acks in between).
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { TRAINABLE_NAMES } from '../../src/native/addon.ts';
import { readSafetensorsFile } from '../../src/store/safetensors.ts';

const STEPS = 8;

function run(workdir: string, job: string, layout: string[]): { lossCurve: number[]; checkpoint: string; audit: { ok: boolean }; steps: number } {
  const r = spawnSync(process.execPath, ['bin/draftwire.js', 'run', '--size', 'tiny', '--steps', String(STEPS), '--batch', '4', '--eval-every', '0',
    '--workdir', workdir, '--job', job, '--json', '--no-progress', '--log-level', 'warn', ...layout], { encoding: 'utf8', timeout: 120_000 });
  assert.equal(r.status, 0, `run ${layout.join(' ')} failed: ${r.stderr.slice(-2000)}`);
  return JSON.parse(r.stdout.trim().split('\n').at(-1)!);
}

describe('draftwire run in TP/SP cells equals the single-rank run (real rank processes, Gloo)', function () {
  this.timeout(300_000);
  const workdir = mkdtempSync(join(tmpdir(), 'draftwire-layouts-'));
  after(() => rmSync(workdir, { recursive: true, force: true }));
  let single: ReturnType<typeof run>;
  before(() => { single = run(workdir, 'single', []); });

  for (const layout of [['--tp', '2'], ['--sp', '2'], ['--tp', '2', '--sp', '2']]) {
    it(`${layout.join(' ')}: the same loss at every step and the same final weights`, async () => {
      const got = run(workdir, `l${layout.join('').replace(/-/g, '')}`, layout);
      assert.ok(got.audit.ok);
      assert.equal(got.steps, STEPS);
      assert.equal(got.lossCurve.length, single.lossCurve.length);
      got.lossCurve.forEach((l, i) => assert.ok(Math.abs(l - single.lossCurve[i]!) <= 1e-5 * Math.abs(single.lossCurve[i]!), `step ${i + 1}: loss ${l} vs ${single.lossCurve[i]}`));
      const a = await readSafetensorsFile(single.checkpoint), b = await readSafetensorsFile(got.checkpoint);
      let worst = 0;
      for (const n of TRAINABLE_NAMES) {
        const x = a.tensors[n]!.data as Float32Array, y = b.tensors[n]!.data as Float32Array;
        let d = 0, s = 0;
        for (let i = 0; i < x.length; i++) { d += (x[i]! - y[i]!) ** 2; s += x[i]! ** 2; }
        worst = Math.max(worst, Math.sqrt(d / s));
      }
      assert.ok(worst < 1e-4, `final weights differ by ${worst} (norm-wise, worst tensor)`);
      if (process.env.DRAFTWIRE_SHARD_REPORT) console.log(`${layout.join(' ')}: worst final-weight difference ${worst.toExponential(2)}`);
    });
  }
});
