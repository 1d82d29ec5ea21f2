// A Hugging Face Llama / Qwen2 / Qwen3 checkpoint as a native TargetModel: config.json parsed,
// every tensor checked from the headers, then the weights copied in one layer at a time (file
// reads are async; each copy is a memcpy), so the peak is about one f32 copy of the model.
import { InvalidArgumentError } from '../errors.ts';
import { TargetModel } from '../native/addon.ts';
import { nativeTargetConfig, readHfConfig, type AuxLayerSpec, type HfTargetConfig } from './config.ts';
import { hfWeightParts, locateHfTensors } from './weights.ts';

export interface LoadHfTargetOptions {
  threads?: number;
  /** Which layers feed aux (default: output convention, [1, L/2−1, L−4]). */
  auxLayers?: AuxLayerSpec;
}

/** Loads dir (config.json + safetensors). Bad directories are ModelFormatError, bad options InvalidArgumentError. */
export async function loadHfTarget(dir: string, opts: LoadHfTargetOptions = {}): Promise<{ model: TargetModel; config: HfTargetConfig }> {
  if (typeof dir !== 'string' || dir === '') throw new InvalidArgumentError('loadHfTarget: dir must be a non-empty string');
  if (typeof opts !== 'object' || opts === null) throw new InvalidArgumentError('loadHfTarget: options must be an object');
  const config = await readHfConfig(dir, opts.auxLayers);
  await locateHfTensors(dir, config); // fails before any native allocation
  const model = await TargetModel.fromWeightParts(nativeTargetConfig(config), hfWeightParts(dir, config), { threads: opts.threads });
  return { model, config };
}
