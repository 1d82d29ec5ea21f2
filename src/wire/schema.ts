// The sample schema: the features a training sample carries, in one place. Names, the dtypes
// each may be stored in, and shapes in the job's terms (T tokens, MIN_SAMPLE_TOKENS ≤ T ≤
// seqLen: a conversation keeps its own length and the batch pads it; H = the draft's
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

/** The shortest sample: one position to predict from and one to predict. */
export const MIN_SAMPLE_TOKENS = 2;

export interface FeatureRule {
  dtypes: readonly SampleDtype[];
  /** The shape of a sample of the longest length, T = seqLen. */
  shape: readonly number[];
  /** The shape of a sample of T tokens. */
  shapeFor(T: number): number[];
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
  const rule = (dtypes: readonly SampleDtype[], width: number | null, dims: string): FeatureRule => {
    const shapeFor = (t: number) => (width === null ? [t] : [t, width]);
    return Object.freeze({ dtypes, shape: shapeFor(T), shapeFor, dims });
  };
  return Object.freeze({
    seqLen: T,
    hidden: H,
    features: Object.freeze({
      ids: rule(['i32'] as const, null, '[T]'),
      aux: rule(FLOAT_FEATURE_DTYPES, 3 * H, '[T, 3H]'),
      last: rule(FLOAT_FEATURE_DTYPES, H, '[T, H]'),
      mask: rule(['u8'] as const, null, '[T]'),
    }),
  });
}

/** A sample's length: the first dimension of its ids (NaN when ids has no usable shape). */
export function sampleTokens(features: Readonly<Record<string, { shape: readonly number[] }>>): number {
  const s = Object.prototype.hasOwnProperty.call(features, 'ids') ? features.ids?.shape : undefined;
  return Array.isArray(s) && s.length === 1 && Number.isSafeInteger(s[0]) ? s[0]! : NaN;
}

const fmtShape = (s: readonly number[]): string => `[${s.join(', ')}]`;
const sameShape = (a: readonly number[], b: readonly number[]): boolean => a.length === b.length && a.every((d, i) => d === b[i]);

/**
 * Throws SchemaError unless `features` (name → {dtype, shape}) holds exactly the schema's
 * features, each in an allowed dtype and the job's shape. The message names the field, what
 * was found and what the job expects; detail carries the same as {field, found, expected}.
 */
export function checkFeatures(features: Readonly<Record<string, { dtype: string; shape: readonly number[] }>>, schema: SampleSchema, where = 'sample'): void {
  const n = sampleTokens(features);
  // T is the sample's own (from ids); out of range, the messages below name the longest shape
  const T = n >= MIN_SAMPLE_TOKENS && n <= schema.seqLen ? n : schema.seqLen;
  const terms = `T = ${T} (${MIN_SAMPLE_TOKENS} ≤ T ≤ seqLen = ${schema.seqLen}), H = ${schema.hidden}`;
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
    const want = rule.shapeFor(T);
    if (!Array.isArray(f.shape) || !sameShape(f.shape, want)) {
      throw new SchemaError(`${where}: feature "${name}" has shape ${Array.isArray(f.shape) ? fmtShape(f.shape) : String(f.shape)}, the job expects ${fmtShape(want)} (${rule.dims} with ${terms})`,
        { detail: { field: name, found: { shape: f.shape }, expected: { shape: want } } });
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
  const T = sampleTokens(ref.features);
  if (ref.numTokens > T) {
    throw new SchemaError(`${where}: numTokens is ${ref.numTokens}, the sample holds ${T} tokens (its ids shape)`,
      { detail: { field: 'numTokens', found: ref.numTokens, expected: { max: T } } });
  }
}
