// The rollout's work on a Hugging Face target: tokens/s of the native target forward with
// capture (aux of 3 layers + the post-norm last hidden state, TargetModel.forward as
// `draftwire capture` calls it, one row at a time) against the same target's forward alone in
// transformers (bench/support/hf_forward.py: f32, torch.inference_mode, the same thread count,
// the same sequences), measured in the same run. Also the native load time and a check that
// both sides computed the same last hidden state.
// Without --target a seeded random Llama (bench/support/make_llama.py, bf16) is made in a
// temp dir and removed after.
//   node --import tsx bench/hf-rollout.bench.ts [--target DIR] [--threads 2] [--seq 512] [--rows 4] [--json]
// --json: one JSON line per figure (bench/support/report.ts): the native forward against
// transformers' (with the logits at every position, and with logits_to_keep=1), load against load.
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { loadHfTarget } from '../src/hf/target.ts';
import { blasInfo } from '../src/native/addon.ts';
import { Reporter } from './support/report.ts';

const { values } = parseArgs({ options: {
  target: { type: 'string' }, threads: { type: 'string', default: '2' }, seq: { type: 'string', default: '512' },
  rows: { type: 'string', default: '4' }, json: { type: 'boolean', default: false },
} });
const THREADS = Number(values.threads), T = Number(values.seq), ROWS = Number(values.rows);
for (const [k, v] of [['threads', THREADS], ['seq', T], ['rows', ROWS]] as const) {
  if (!Number.isInteger(v) || v < 1) throw new Error(`--${k} must be a positive integer`);
}
const report = Reporter.forBench(import.meta.url);
const support = new URL('./support/', import.meta.url).pathname;
const work = mkdtempSync(join(tmpdir(), 'draftwire-bench-hf-'));

/** Runs a python helper; its last stdout line is JSON. */
function python(script: string, args: string[]): Record<string, unknown> {
  // OMP_NUM_THREADS: torch.set_num_threads alone leaves other pools at the core count.
  // OMP_WAIT_POLICY=PASSIVE: on shared cores libgomp's spinning threads lose their core and
  // transformers runs 2-6x slower here; passive waiting is its best case (overridable).
  const env = { ...process.env, OMP_NUM_THREADS: String(THREADS), OMP_WAIT_POLICY: process.env.OMP_WAIT_POLICY ?? 'PASSIVE' };
  const r = spawnSync('python3', [join(support, script), ...args], { encoding: 'utf8', maxBuffer: 16 << 20, env });
  if (r.status !== 0) throw new Error(`${script} failed (${r.status}): ${r.stderr.slice(-2000)}`);
  return JSON.parse(r.stdout.trim().split('\n').pop()!) as Record<string, unknown>;
}

/** Seeded token ids in [0, vocab) (splitmix-style integer hash; no Math.random). */
function seededIds(n: number, vocab: number, seed: number): Int32Array {
  const out = new Int32Array(n);
  let s = BigInt(seed);
  for (let i = 0; i < n; i++) {
    s = (s + 0x9e3779b97f4a7c15n) & 0xffffffffffffffffn;
    let z = s;
    z = ((z ^ (z >> 30n)) * 0xbf58476d1ce4e5b9n) & 0xffffffffffffffffn;
    z = ((z ^ (z >> 27n)) * 0x94d049bb133111ebn) & 0xffffffffffffffffn;
    out[i] = Number((z ^ (z >> 31n)) % BigInt(vocab));
  }
  return out;
}

try {
  let dir = values.target;
  let made: Record<string, unknown> | null = null;
  if (!dir) {
    dir = join(work, 'llama');
    made = python('make_llama.py', [dir, 'bf16']);
  }

  // Native: load, one warm-up forward (scratch for this shape), then every row once, before
  // and after transformers runs (so load drifting on shared cores biases neither side).
  const l0 = performance.now();
  const { model, config } = await loadHfTarget(dir, { threads: THREADS });
  const loadSeconds = (performance.now() - l0) / 1000;
  const ids = seededIds(ROWS * T, config.vocab, 1);
  const row = (i: number) => ids.subarray(i * T, (i + 1) * T);
  const nativePass = async (): Promise<number> => {
    const t0 = performance.now();
    for (let i = 0; i < ROWS; i++) await model.forward(row(i), 1, T);
    return (performance.now() - t0) / 1000;
  };
  let last0: Float32Array, passes: number[], hf: Record<string, unknown>;
  const idsFile = join(work, 'ids.bin'), lastFile = join(work, 'last.bin');
  try {
    last0 = (await model.forward(row(0), 1, T)).last.slice();
    const before = await nativePass();
    // transformers on the same ids and threads.
    writeFileSync(idsFile, new Uint8Array(ids.buffer, ids.byteOffset, ids.byteLength));
    hf = python('hf_forward.py', [dir, idsFile, String(ROWS), String(T), String(THREADS), lastFile]);
    passes = [before, await nativePass()];
  } finally {
    model.close();
  }
  const nativeSeconds = (passes[0]! + passes[1]!) / 2;
  const b = readFileSync(lastFile);
  const hfLast = new Float32Array(b.buffer, b.byteOffset, b.byteLength / 4);
  if (hfLast.length !== last0.length) throw new Error(`last hidden state sizes differ: ${hfLast.length} vs ${last0.length}`);
  let diff = 0, norm = 0;
  for (let i = 0; i < hfLast.length; i++) { diff = Math.max(diff, Math.abs(hfLast[i]! - last0[i]!)); norm = Math.max(norm, Math.abs(hfLast[i]!)); }

  const nativeTps = ROWS * T / nativeSeconds, hfTps = hf.tokensPerSec as number, hfTps1 = hf.tokensPerSecHead1 as number;
  const blas = blasInfo().config, ompWaitPolicy = process.env.OMP_WAIT_POLICY ?? 'PASSIVE';
  const c = config, f = (x: number, d = 0) => x.toLocaleString('en-US', { maximumFractionDigits: d, minimumFractionDigits: d });
  report.context({
    threads: THREADS, seq: T, rows: ROWS, target: values.target ?? 'random Llama (bench/support/make_llama.py)', hidden: c.hidden, layers: c.layers,
    heads: c.heads, kvHeads: c.kvHeads, intermediate: c.intermediate, vocab: c.vocab, dtype: c.dtype, auxLayers: c.auxLayers.join(','),
    blas, torch: String(hf.torch), transformers: String(hf.transformers), ompWaitPolicy,
  });
  const full = report.add({ name: 'transformers forward, output_hidden_states (logits at every position)', value: hfTps, unit: 'tokens/s' });
  const head1 = report.add({ name: 'transformers forward, output_hidden_states, logits_to_keep=1', value: hfTps1, unit: 'tokens/s' });
  report.add({ name: 'native forward with capture (aux + last)', value: nativeTps, unit: 'tokens/s', baseline: full });
  report.add({ name: 'native forward with capture (aux + last), against logits_to_keep=1', value: nativeTps, unit: 'tokens/s', baseline: head1 });
  const hfLoad = report.add({ name: 'load: transformers', value: hf.loadSeconds as number, unit: 's' });
  report.add({ name: 'load: native', value: loadSeconds, unit: 's', baseline: hfLoad });
  report.add({ name: 'row 0 last hidden state: max |native − transformers|', value: diff, unit: 'abs', maxAbs: norm });
  report.log(`target: ${values.target ?? `random Llama (${String(made?.params)} params, ${String(made?.dtype)})`}: H=${c.hidden} L=${c.layers} heads=${c.heads}/${c.kvHeads} I=${c.intermediate} V=${c.vocab}`);
  report.log(`threads ${THREADS}, ${ROWS} rows × ${T} tokens (batch 1 per forward, one warm-up first; native: mean of a pass before and after transformers), aux layers ${config.auxLayers.join(',')}; ${blas}`);
  report.markdown(['what', 'tokens/s', 'of native'], [
    ['native forward with capture (aux + last)', f(nativeTps), '100%'],
    ['transformers forward, output_hidden_states (logits at every position)', f(hfTps), `${f(100 * hfTps / nativeTps)}%`],
    ['transformers forward, output_hidden_states, logits_to_keep=1', f(hfTps1), `${f(100 * hfTps1 / nativeTps)}%`],
  ]);
  report.log(`native / transformers: ${f(nativeTps / hfTps, 2)}× (${f(nativeTps / hfTps1, 2)}× against logits_to_keep=1)`);
  report.log(`load: native ${f(loadSeconds, 2)} s, transformers ${f(hf.loadSeconds as number, 2)} s`);
  report.log(`row 0 last hidden state: max |native − transformers| ${diff.toExponential(2)} (max |x| ${f(norm, 2)})`);
  report.end();
} finally {
  rmSync(work, { recursive: true, force: true });
}
