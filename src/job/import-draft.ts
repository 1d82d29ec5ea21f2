// An existing EAGLE3 draft directory (what `draftwire export`, SpecForge and the engines use:
// config.json + model.safetensors with fc, midlayer.* (or speculators' layers.0.*), norm,
// lm_head, d2t offsets, t2d; the config flat or in vLLM's speculators layout, ./speculators.ts)
// as a job's starting point: its trainable weights and its draft vocabulary, refused with
// MODEL_FORMAT when its shapes, its layer's math or its vocabulary mapping do not fit the job.
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { ModelFormatError } from '../errors.ts';
import { vocabOfTensors, type DraftVocab } from '../chat/vocab.ts';
import { draftParamShapes, headDimOf, upcastToF32, type DraftConfig } from '../native/addon.ts';
import { readSafetensorsFile } from '../store/safetensors.ts';
import type { Tensor } from '../tensor.ts';
import { ENGINE_NAMES } from './export.ts';
import { flattenSpeculatorsConfig, isSpeculatorsConfig, speculatorsName } from './speculators.ts';

export interface ImportedDraft { weights: Record<string, Float32Array>; vocab: DraftVocab; draftVocab: number }

function f32(t: Tensor): Float32Array {
  if (t.dtype === 'f32') return t.data as Float32Array;
  const out = new Float32Array(t.data.length);
  upcastToF32(t.data as Uint16Array, t.dtype as 'bf16' | 'f16', out);
  return out;
}

/**
 * The draft's config.json sizes must be the job's (the target's shape) and its layer Draftwire's
 * (one layer, the residual taken before hidden_norm, no norm before fc); its draft vocabulary
 * may differ from --draft-vocab and wins.
 */
function checkConfig(dir: string, raw: Record<string, unknown>, c: DraftConfig): number {
  const where = join(dir, 'config.json');
  const { flat: cj, field } = isSpeculatorsConfig(raw) ? flattenSpeculatorsConfig(raw, where) : { flat: raw, field: (k: string) => k };
  const bad = (k: string, why: string) => new ModelFormatError(`${where}: ${field(k)} ${why}`, { detail: { field: field(k) } });
  const arch = cj.architectures;
  if (!Array.isArray(arch) || !arch.some((a) => /Eagle3/i.test(String(a)))) throw new ModelFormatError(`${where}: architectures ${JSON.stringify(arch)} is not an EAGLE3 draft (LlamaForCausalLMEagle3, Eagle3Speculator)`);
  const want: [string, number][] = [['hidden_size', c.hidden], ['intermediate_size', c.intermediate], ['num_attention_heads', c.heads],
    ['num_key_value_heads', c.kvHeads], ['head_dim', headDimOf(c)], ['vocab_size', c.vocab], ['num_hidden_layers', 1], ['target_hidden_size', c.hidden]];
  for (const [k, v] of want) {
    if ((k === 'head_dim' || k === 'num_hidden_layers' || k === 'target_hidden_size') && (cj[k] === undefined || cj[k] === null)) continue;
    if (cj[k] !== v) throw bad(k, `is ${JSON.stringify(cj[k])}, ${k === 'num_hidden_layers' ? 'Draftwire\'s draft has one decoder layer' : `the job's target needs ${v}`}`);
  }
  // vLLM (and speculators' layer) take the residual after hidden_norm when this is true; a speculators config without it is read as true.
  if (cj.norm_before_residual === true) throw bad('norm_before_residual', `is true${raw.norm_before_residual === undefined ? ' (missing, as vLLM reads a speculators config)' : ''}: Draftwire's layer keeps the residual before hidden_norm`);
  if (cj.norm_before_fc === true) throw bad('norm_before_fc', 'is true: Draftwire\'s draft has no norm before fc');
  const Vd = cj.draft_vocab_size;
  if (!Number.isSafeInteger(Vd) || (Vd as number) < 1 || (Vd as number) > c.vocab) throw bad('draft_vocab_size', `${JSON.stringify(Vd)} must be an integer in [1, ${c.vocab}]`);
  return Vd as number;
}

/** Reads `dir` against the job's draft config (its draftVocab is replaced by the directory's). */
export async function importDraft(dir: string, c: DraftConfig): Promise<ImportedDraft> {
  let cj: Record<string, unknown>;
  try { cj = JSON.parse(await readFile(join(dir, 'config.json'), 'utf8')) as Record<string, unknown>; } catch (e) {
    throw new ModelFormatError(`${join(dir, 'config.json')}: cannot read the draft's config (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`, { cause: e });
  }
  const draftVocab = checkConfig(dir, cj, c);
  const cfg = { ...c, draftVocab }, shapes = draftParamShapes(cfg), file = join(dir, 'model.safetensors');
  let tensors: Record<string, Tensor>;
  try { tensors = (await readSafetensorsFile(file, { allowBool: true })).tensors; } catch (e) {
    throw new ModelFormatError(`${file}: cannot read the draft's weights (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`, { cause: e });
  }
  const weights: Record<string, Float32Array> = {};
  for (const [name, engine] of Object.entries(ENGINE_NAMES)) {
    const t = tensors[engine] ?? tensors[speculatorsName(engine)];
    if (!t) throw new ModelFormatError(`${file}: tensor ${engine}${engine === speculatorsName(engine) ? '' : ` (or ${speculatorsName(engine)})`} is missing`);
    if (t.dtype !== 'f32' && t.dtype !== 'bf16' && t.dtype !== 'f16') throw new ModelFormatError(`${file}: tensor ${engine} is ${t.dtype}; expected f32, bf16 or f16`);
    const want = shapes[name]!;
    if (t.shape.join() !== want.join()) throw new ModelFormatError(`${file}: tensor ${engine} has shape [${t.shape}], the job's target needs [${want}]`);
    const x = f32(t), bad = x.findIndex((v) => !Number.isFinite(v));
    if (bad >= 0) throw new ModelFormatError(`${file}: tensor ${engine}[${bad}] is not finite`);
    weights[name] = x;
  }
  try {
    return { weights, vocab: vocabOfTensors(tensors, file, { V: c.vocab, Vd: draftVocab }), draftVocab };
  } catch (e) { // the draft's mapping does not fit the target: its directory is what is wrong
    throw new ModelFormatError((e as Error).message, { cause: e });
  }
}
