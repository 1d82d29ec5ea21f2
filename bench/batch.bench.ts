// Handing a step's samples to the native step, as the rank does each step (the features as
// the store returned them, bf16 as a rollout writes them): stacked in JS (stackBatch, then
// the addon's copy of the stacked arrays when the step is called) against handed over as they
// are (batchOfSamples; the addon stacks them off the event loop). For each: the time the event
// loop is held (from the first sample to the step's promise in hand) and the whole step, at
// the demo size; baselines in the same run: a native memcpy of the batch's f32 bytes, and the
// step on a batch stacked once beforehand.
//   node --import tsx bench/batch.bench.ts [--batch 4] [--steps 5] [--json]
import { parseArgs } from 'node:util';
import { batchOfSamples, stackBatch } from '../src/job/batch.ts';
import { DraftModel, initDraftWeights, type DraftBatch, type SampleBatch } from '../src/native/addon.ts';
import { memcpyBandwidth } from '../src/native/collectives.ts';
import { tensor, type Tensor } from '../src/tensor.ts';
import { DEMO, DEMO_T } from './demo-batch.ts';
import { Reporter } from './support/report.ts';

const { values } = parseArgs({ options: { batch: { type: 'string', default: '4' }, steps: { type: 'string', default: '5' }, json: { type: 'boolean', default: false } } });
const B = Number(values.batch), STEPS = Number(values.steps), T = DEMO_T, H = DEMO.hidden;
const report = Reporter.forBench(import.meta.url);

// Samples as the store returns them: bf16 aux/last (random finite values), valid ids, full mask.
const bf16 = (n: number) => Uint16Array.from({ length: n }, () => 0x3c00 + Math.floor(Math.random() * 512));
const samples: Record<string, Tensor>[] = Array.from({ length: B }, () => ({
  ids: tensor('i32', [T], Int32Array.from({ length: T }, () => Math.floor(Math.random() * DEMO.vocab))),
  aux: tensor('bf16', [T, 3 * H], bf16(T * 3 * H)),
  last: tensor('bf16', [T, H], bf16(T * H)),
  mask: tensor('u8', [T], new Uint8Array(T).fill(1)),
}));
const f32Bytes = B * T * 4 * H * 4;

const model = DraftModel.create(DEMO, initDraftWeights(DEMO, 1), { threads: 1 });
const opts = { lr: 1e-4, clip: 1, weightDecay: 0, returnGrads: false };
/** Per step: ms the event loop was held handing the batch over, and ms of the whole step. */
async function measure(make: () => DraftBatch | SampleBatch): Promise<{ loopMs: number; stepMs: number }> {
  await model.step(make(), opts); // warm-up
  let loop = 0, step = 0;
  for (let i = 0; i < STEPS; i++) {
    const t0 = performance.now();
    const p = model.step(make(), opts);
    // The wrapper makes the native call (and its copy) from a microtask: setImmediate runs after them.
    await new Promise((r) => setImmediate(r));
    const t1 = performance.now();
    await p;
    loop += t1 - t0;
    step += performance.now() - t0;
  }
  return { loopMs: loop / STEPS, stepMs: step / STEPS };
}

const memcpyMs = f32Bytes / (memcpyBandwidth(f32Bytes, 20) * 1e9) * 1e3;
const once = stackBatch(samples, T, H);
const alone = await measure(() => once);
const stacked = await measure(() => stackBatch(samples, T, H));
const handed = await measure(() => batchOfSamples(samples, T, H));
model.close();

report.context({ batch: B, seq: T, hidden: H, f32Bytes, steps: STEPS });
const mem = report.add({ name: 'memcpy of the batch\'s f32 bytes', value: memcpyMs, unit: 'ms' });
const base = report.add({ name: 'step on a batch stacked beforehand', value: alone.stepMs, unit: 'ms' });
report.add({ name: 'event loop held: stacked in JS, then copied by the addon', value: stacked.loopMs, unit: 'ms', baseline: mem });
report.add({ name: 'event loop held: handed over as samples', value: handed.loopMs, unit: 'ms', baseline: mem });
report.add({ name: 'step: stacked in JS', value: stacked.stepMs, unit: 'ms', baseline: base });
report.add({ name: 'step: handed over as samples', value: handed.stepMs, unit: 'ms', baseline: base });
report.log(`demo size, B=${B}, T=${T}, H=${H}: bf16 features, ${(f32Bytes / 2 ** 20).toFixed(1)} MiB of f32 per batch; memcpy of those bytes ${memcpyMs.toFixed(2)} ms`);
report.table(['path', 'event loop held (ms)', 'whole step (ms)'], [
  ['step on a batch stacked beforehand (baseline)', (alone.loopMs).toFixed(2), alone.stepMs.toFixed(1)],
  ['stacked in JS (stackBatch), copied by the addon', stacked.loopMs.toFixed(2), stacked.stepMs.toFixed(1)],
  ['handed over as samples (batchOfSamples)', handed.loopMs.toFixed(2), handed.stepMs.toFixed(1)],
]);
report.end();
