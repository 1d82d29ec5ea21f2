// Weight files of a job, all safetensors so they load elsewhere (PyTorch, `draftwire step`):
// - init weights: frozen target tensors (embed, target_head), the draft-vocab map d2t and
//   the seeded trainable tensors, written once by `draftwire run` and read by every rank;
// - the checkpoint: trainable tensors + d2t, the config and step in __metadata__, and the
//   AdamW moments beside it in <name>.optim.safetensors.
import { readDraftWeights, type DraftWeights } from './draft-io.ts';
import type { JobSpec } from './job.ts';
import { draftParamShapes, initDraftWeights, TargetModel, TRAINABLE_NAMES, type DraftConfig, type DraftModel } from './native.ts';
import { writeSafetensorsFile } from './safetensors.ts';
import { tensor, type Tensor } from './tensor.ts';
import { syntheticPrompt } from '../actors/rollout.ts';

export const CHECKPOINT_FORMAT = 'draftwire-eagle3/1';

export async function loadWeightsFile(path: string, c: DraftConfig): Promise<DraftWeights> {
  return readDraftWeights(path, c);
}

function f32(name: string, shape: number[], data: Float32Array): [string, Tensor] {
  return [name, tensor('f32', shape, data)];
}

/**
 * The draft vocabulary: the Vd target tokens the target itself generates most often over
 * calibration prompts (as EAGLE3 builds d2t from token frequencies), ties by lower id, padded
 * with the lowest unused ids. Sorted ascending so the map is stable.
 */
export async function calibrateD2t(target: TargetModel, spec: JobSpec, prompts = 16): Promise<Int32Array> {
  const V = spec.target.vocab, Vd = spec.draft.draftVocab;
  const counts = new Float64Array(V);
  for (let i = 0; i < prompts; i++) {
    const p = syntheticPrompt(spec.seed ^ 0xca11b, i, V, spec.promptLen);
    const ids = await target.generate(p, spec.seqLen - spec.promptLen, { temperature: spec.temperature, seed: 7919 * i + 1 });
    for (let t = spec.promptLen; t < ids.length; t++) counts[ids[t]!]!++;
  }
  const order = Array.from({ length: V }, (_, i) => i).sort((a, b) => counts[b]! - counts[a]! || a - b);
  return Int32Array.from(order.slice(0, Vd).sort((a, b) => a - b));
}

/** Writes the job's initial weights (frozen + d2t + seeded trainable) to spec.initWeights. */
export async function writeInitialWeights(spec: JobSpec): Promise<void> {
  const target = TargetModel.create(spec.target, { threads: spec.threads });
  try {
    const { embed, target_head } = target.frozen();
    const d2t = await calibrateD2t(target, spec);
    const w = initDraftWeights(spec.draft, spec.seed, { embed, target_head, d2t });
    const shapes = draftParamShapes(spec.draft);
    const tensors: Record<string, Tensor> = {};
    for (const [name, data] of Object.entries(w)) {
      tensors[name] = name === 'd2t' ? tensor('i32', shapes[name]!, data as Int32Array) : tensor('f32', shapes[name]!, data as Float32Array);
    }
    await writeSafetensorsFile(spec.initWeights, tensors, { format: CHECKPOINT_FORMAT, config: JSON.stringify(spec.draft), step: '0' });
  } finally {
    target.close();
  }
}

/** Writes the trained draft (and its optimizer state beside it). */
export async function writeCheckpoint(path: string, spec: JobSpec, model: DraftModel, d2t: Int32Array, step: number): Promise<void> {
  const shapes = draftParamShapes(spec.draft);
  const w = model.weights();
  const meta = { format: CHECKPOINT_FORMAT, config: JSON.stringify(spec.draft), step: String(step), job: spec.job };
  const tensors = Object.fromEntries(TRAINABLE_NAMES.map((n) => f32(n, shapes[n]!, w[n]!)));
  tensors.d2t = tensor('i32', [d2t.length], d2t);
  await writeSafetensorsFile(path, tensors, meta);
  const opt = model.optimizerState();
  const moments: Record<string, Tensor> = {};
  for (const n of TRAINABLE_NAMES) {
    moments[`m.${n}`] = tensor('f32', shapes[n]!, opt.m[n]!);
    moments[`v.${n}`] = tensor('f32', shapes[n]!, opt.v[n]!);
  }
  await writeSafetensorsFile(path.replace(/\.safetensors$/, '') + '.optim.safetensors', moments, { ...meta, adamStep: String(opt.step) });
}
