// The sample schema: the features a training sample carries, in one place. Names, the dtypes
// each may be stored in, and shapes in the job's terms (T = seqLen tokens, H = the draft's
// hidden size: aux is the target's three tapped layers side by side, last its final hidden
// state), derived from the job spec. The queue checks every committed ref against it (a bad
// sample is refused at the door, not found by a rank mid-step) and stackBatch every sample it
// stacks. Floats may be bf16 or f16 as SGLang and vLLM write them; the step upcasts them.
import { SchemaError } from '../errors.ts';
import type { SampleDtype, SampleRef } from './sampleref.ts';

export type FeatureName = 'ids' | 'aux' | 'last' | 'mask';
/** Every feature a training sample carries, in DraftBatch order. */
export const FEATURE_NAMES: readonly FeatureName[] = Object.freeze(['ids', 'aux', 'last', 'mask'] as const);
/** Dtypes a hidden-state feature (aux, last) may be stored in; the step consumes f32. */
export const FLOAT_FEATURE_DTYPES: readonly SampleDtype[] = Object.freeze(['f32', 'bf16', 'f16'] as const);

export interface FeatureRule {
  dtypes: readonly SampleDtype[];
  shape: readonly number[];
  /** The shape in the job's terms, for messages and docs: "[T, 3H]". */
  dims: string;
}

export interface SampleSchema {
  seqLen: number;
  hidden: number;
  features: Readonly<Record<FeatureName, FeatureRule>>;
}

/** The schema of a job's samples, from its spec (src/job/spec.ts: only seqLen and the draft's hidden size matter). */
export function sampleSchema(job: { seqLen: number; draft: { hidden: number } }): SampleSchema {
  const T = job.seqLen, H = job.draft.hidden;
  for (const [k, v] of [['seqLen', T], ['draft.hidden', H]] as const) {
    if (!Number.isSafeInteger(v) || v < 1) throw new SchemaError(`sample schema: ${k} must be a positive integer, got ${String(v)}`, { detail: { field: k } });
  }
  return Object.freeze({
    seqLen: T,
    hidden: H,
    features: Object.freeze({
      ids: Object.freeze({ dtypes: ['i32'] as const, shape: [T], dims: '[T]' }),
      aux: Object.freeze({ dtypes: FLOAT_FEATURE_DTYPES, shape: [T, 3 * H], dims: '[T, 3H]' }),
      last: Object.freeze({ dtypes: FLOAT_FEATURE_DTYPES, shape: [T, H], dims: '[T, H]' }),
      mask: Object.freeze({ dtypes: ['u8'] as const, shape: [T], dims: '[T]' }),
    }),
  });
}

const fmtShape = (s: readonly number[]): string => `[${s.join(', ')}]`;
const sameShape = (a: readonly number[], b: readonly number[]): boolean => a.length === b.length && a.every((d, i) => d === b[i]);

/**
 * Throws SchemaError unless `features` (name → {dtype, shape}) holds exactly the schema's
 * features, each in an allowed dtype and the job's shape. The message names the field, what
 * was found and what the job expects; detail carries the same as {field, found, expected}.
 */
export function checkFeatures(features: Readonly<Record<string, { dtype: string; shape: readonly number[] }>>, schema: SampleSchema, where = 'sample'): void {
  const terms = `T = ${schema.seqLen}, H = ${schema.hidden}`;
  for (const name of FEATURE_NAMES) {
    const rule = schema.features[name];
    const f = Object.prototype.hasOwnProperty.call(features, name) ? features[name] : undefined;
    if (!f) {
      throw new SchemaError(`${where}: feature "${name}" is missing (the job's samples carry ${FEATURE_NAMES.join(', ')}; ${name} is ${rule.dtypes.join('|')} ${fmtShape(rule.shape)})`,
        { detail: { field: name, found: null, expected: { dtypes: [...rule.dtypes], shape: [...rule.shape] } } });
    }
    if (!(rule.dtypes as readonly string[]).includes(f.dtype)) {
      throw new SchemaError(`${where}: feature "${name}" has dtype ${String(f.dtype)}, the job expects ${rule.dtypes.join(', ')}`,
        { detail: { field: name, found: { dtype: f.dtype }, expected: { dtypes: [...rule.dtypes] } } });
    }
    if (!Array.isArray(f.shape) || !sameShape(f.shape, rule.shape)) {
      throw new SchemaError(`${where}: feature "${name}" has shape ${Array.isArray(f.shape) ? fmtShape(f.shape) : String(f.shape)}, the job expects ${fmtShape(rule.shape)} (${rule.dims} with ${terms})`,
        { detail: { field: name, found: { shape: f.shape }, expected: { shape: [...rule.shape] } } });
    }
  }
  for (const name of Object.keys(features)) {
    if (!(FEATURE_NAMES as readonly string[]).includes(name)) {
      throw new SchemaError(`${where}: feature "${name.slice(0, 128)}" is not in the job's schema (${FEATURE_NAMES.join(', ')})`,
        { detail: { field: name.slice(0, 128), found: features[name], expected: null } });
    }
  }
}

/** Throws SchemaError unless a (decoded, valid) ref's features and numTokens fit the job's schema. */
export function checkSampleRef(ref: SampleRef, schema: SampleSchema): void {
  const where = `sample ${ref.sampleId}`;
  checkFeatures(ref.features, schema, where);
  if (ref.numTokens > schema.seqLen) {
    throw new SchemaError(`${where}: numTokens is ${ref.numTokens}, the job's samples hold at most seqLen = ${schema.seqLen}`,
      { detail: { field: 'numTokens', found: ref.numTokens, expected: { max: schema.seqLen } } });
  }
}
