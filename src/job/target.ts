// The job's target, in one place: the seeded synthetic model (a native TargetConfig in the
// spec) or a Hugging Face model directory (its config as read when the job started, aux layers
// included, so job.json says exactly which layers the draft was trained on). Every process of
// the job opens it here: the rollout, the ranks (accept length), `run` (initial weights).
import { ModelFormatError } from '../errors.ts';
import { readHfConfig, type HfTargetConfig } from '../hf/config.ts';
import { loadHfTarget } from '../hf/target.ts';
import { hfWeightsFingerprint } from '../hf/weights.ts';
import { TargetModel, type TargetConfig } from '../native/addon.ts';

/**
 * A Hugging Face target. auxLayers in `config` are output-convention ids (SpecForge, SGLang:
 * the output of decoder layer i, 0-based); `auxLayersInput` the same layers in the input
 * convention (vLLM, speculators: the input of layer j = i + 1), written out so neither reader
 * has to guess.
 */
export interface HfTargetSpec {
  kind: 'hf'; dir: string; config: HfTargetConfig; auxLayersInput: [number, number, number];
  /** hfWeightsFingerprint of the checkpoint when the job started. */
  weights: string;
}

export type JobTarget = TargetConfig | HfTargetSpec;

export function isHfTarget(t: JobTarget): t is HfTargetSpec {
  return (t as HfTargetSpec).kind === 'hf';
}

/** The target's vocabulary size. */
export function targetVocab(t: JobTarget): number {
  return isHfTarget(t) ? t.config.vocab : t.vocab;
}

export async function hfTargetSpec(dir: string, config: HfTargetConfig): Promise<HfTargetSpec> {
  const [a, b, c] = config.auxLayers;
  return { kind: 'hf', dir, config, auxLayersInput: [a + 1, b + 1, c + 1], weights: await hfWeightsFingerprint(dir) };
}

const same = (a: unknown, b: unknown) => JSON.stringify(a) === JSON.stringify(b);

/** Opens the job's target on `threads` BLAS threads. An HF directory whose config changed since the job started is refused. */
export async function openTarget(t: JobTarget, threads: number): Promise<TargetModel> {
  if (!isHfTarget(t)) return TargetModel.create(t, { threads });
  // The job's features and accept length must come from the target it started with.
  const now = await readHfConfig(t.dir, { convention: 'output', ids: t.config.auxLayers });
  for (const k of Object.keys(t.config) as (keyof HfTargetConfig)[]) {
    if (!same(now[k], t.config[k])) {
      throw new ModelFormatError(`${t.dir}/config.json: ${k} is ${JSON.stringify(now[k])}, the job was started with ${JSON.stringify(t.config[k])} (the model directory changed under the job)`, { detail: { field: k } });
    }
  }
  if (await hfWeightsFingerprint(t.dir) !== t.weights) {
    throw new ModelFormatError(`${t.dir}: the checkpoint's safetensors files are not the ones the job was started with (the model directory changed under the job)`, { detail: { field: 'weights' } });
  }
  const { model } = await loadHfTarget(t.dir, { threads, auxLayers: { convention: 'output', ids: t.config.auxLayers } });
  return model;
}
