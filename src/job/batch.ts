// A training batch from the features of a step's samples, in either form the native step
// takes: stackBatch copies them into one DraftBatch (ids, aux, last, mask; `pad` fully-masked
// samples after them); batchOfSamples hands them over as they are (a SampleBatch), for the
// addon to stack off the event loop in the one copy between the store's read and the step.
// Samples keep their own lengths (≤ seq): a shorter one is zero-padded to seq and the batch
// carries `lengths`, so the step trains it as if alone (docs/model-math.md "Padding").
// Every sample is checked against the job's schema (src/wire/schema.ts); aux/last stored as
// bf16 or f16 are upcast natively as they are copied (no intermediate copy).
import { SchemaError } from '../errors.ts';
import { upcastToF32, type BatchSample, type DraftBatch, type SampleBatch } from '../native/addon.ts';
import { numel, type Tensor } from '../tensor.ts';
import { checkFeatures, FEATURE_NAMES, sampleSchema, sampleTokens, type SampleSchema } from '../wire/schema.ts';

export function stackBatch(samples: Record<string, Tensor>[], seq: number, hidden: number, pad = 0): DraftBatch {
  const schema = sampleSchema({ seqLen: seq, draft: { hidden } });
  const B = samples.length + pad;
  const ids = new Int32Array(B * seq), aux = new Float32Array(B * seq * 3 * hidden), last = new Float32Array(B * seq * hidden), mask = new Uint8Array(B * seq);
  const lengths = new Int32Array(B).fill(seq);
  samples.forEach((t, b) => {
    lengths[b] = checkSample(t, schema, b);
    ids.set(t.ids!.data as Int32Array, b * seq);
    mask.set(t.mask!.data as Uint8Array, b * seq);
    putFloats(t.aux!, aux, b * seq * 3 * hidden);
    putFloats(t.last!, last, b * seq * hidden);
  });
  return { ids, aux, last, mask, batch: B, seq, ...(lengths.some((n) => n < seq) ? { lengths } : {}) };
}

/** The same batch as stackBatch's, not copied: the samples' arrays must stay unwritten until the step settles. */
export function batchOfSamples(samples: Record<string, Tensor>[], seq: number, hidden: number, pad = 0): SampleBatch {
  const schema = sampleSchema({ seqLen: seq, draft: { hidden } });
  return {
    samples: samples.map((t, b): BatchSample => {
      checkSample(t, schema, b);
      return {
        ids: t.ids!.data as Int32Array, mask: t.mask!.data as Uint8Array,
        aux: t.aux!.data as Float32Array | Uint16Array, last: t.last!.data as Float32Array | Uint16Array,
        auxDtype: t.aux!.dtype as BatchSample['auxDtype'], lastDtype: t.last!.dtype as BatchSample['lastDtype'],
      };
    }),
    batch: samples.length + pad, seq,
  };
}

const ARRAY_OF = { i32: Int32Array, u8: Uint8Array, f32: Float32Array, bf16: Uint16Array, f16: Uint16Array } as const;

/** Checks sample `b` against the schema (its features, their dtypes and sizes); returns its tokens. */
function checkSample(t: Record<string, Tensor>, schema: SampleSchema, b: number): number {
  const where = `sample ${b}`;
  // Only the schema's features are used; a tensor store.get was not asked for is ignored.
  checkFeatures(Object.fromEntries(FEATURE_NAMES.filter((n) => t[n]).map((n) => [n, t[n]!])), schema, where);
  const T = sampleTokens(t);
  for (const name of FEATURE_NAMES) {
    const { dtype, data } = t[name]!;
    const n = numel(schema.features[name].shapeFor(T));
    if (!(data instanceof ARRAY_OF[dtype as keyof typeof ARRAY_OF]) || data.length !== n) {
      throw new SchemaError(`${where}: feature "${name}" (${dtype}) holds ${data.constructor.name}(${data.length}), its dtype and shape need ${ARRAY_OF[dtype as keyof typeof ARRAY_OF].name}(${n})`,
        { detail: { field: name, found: { elements: data.length }, expected: { elements: n } } });
    }
  }
  return T;
}

function putFloats(t: Tensor, dst: Float32Array, offset: number): void {
  if (t.dtype === 'f32') dst.set(t.data as Float32Array, offset);
  else upcastToF32(t.data as Uint16Array, t.dtype as 'bf16' | 'f16', dst, offset);
}
