// A training batch from the features of a step's samples: stacks each sample's ids, aux, last
// and mask into the DraftBatch the native step takes, `pad` fully-masked samples after them.
// Samples keep their own lengths (≤ seq): a shorter one is zero-padded to seq and the batch
// carries `lengths`, so the step trains it as if alone (docs/model-math.md "Padding").
// Every sample is checked against the job's schema (src/wire/schema.ts); aux/last stored as
// bf16 or f16 are upcast natively straight into the batch buffer (no intermediate copy).
import { SchemaError } from '../errors.ts';
import { upcastToF32, type DraftBatch } from '../native/addon.ts';
import { numel, type Tensor } from '../tensor.ts';
import { checkFeatures, FEATURE_NAMES, sampleSchema, sampleTokens } from '../wire/schema.ts';

export function stackBatch(samples: Record<string, Tensor>[], seq: number, hidden: number, pad = 0): DraftBatch {
  const schema = sampleSchema({ seqLen: seq, draft: { hidden } });
  const B = samples.length + pad;
  const ids = new Int32Array(B * seq), aux = new Float32Array(B * seq * 3 * hidden), last = new Float32Array(B * seq * hidden), mask = new Uint8Array(B * seq);
  const lengths = new Int32Array(B).fill(seq);
  samples.forEach((t, b) => {
    const where = `sample ${b}`;
    // Only the schema's features are stacked; a tensor store.get was not asked for is ignored.
    checkFeatures(Object.fromEntries(FEATURE_NAMES.filter((n) => t[n]).map((n) => [n, t[n]!])), schema, where);
    const T = lengths[b] = sampleTokens(t);
    for (const name of FEATURE_NAMES) {
      const { dtype, data } = t[name]!;
      const n = numel(schema.features[name].shapeFor(T));
      if (!(data instanceof ARRAY_OF[dtype as keyof typeof ARRAY_OF]) || data.length !== n) {
        throw new SchemaError(`${where}: feature "${name}" (${dtype}) holds ${data.constructor.name}(${data.length}), its dtype and shape need ${ARRAY_OF[dtype as keyof typeof ARRAY_OF].name}(${n})`,
          { detail: { field: name, found: { elements: data.length }, expected: { elements: n } } });
      }
    }
    ids.set(t.ids!.data as Int32Array, b * seq);
    mask.set(t.mask!.data as Uint8Array, b * seq);
    putFloats(t.aux!, aux, b * seq * 3 * hidden);
    putFloats(t.last!, last, b * seq * hidden);
  });
  return { ids, aux, last, mask, batch: B, seq, ...(lengths.some((n) => n < seq) ? { lengths } : {}) };
}

const ARRAY_OF = { i32: Int32Array, u8: Uint8Array, f32: Float32Array, bf16: Uint16Array, f16: Uint16Array } as const;

function putFloats(t: Tensor, dst: Float32Array, offset: number): void {
  if (t.dtype === 'f32') dst.set(t.data as Float32Array, offset);
  else upcastToF32(t.data as Uint16Array, t.dtype as 'bf16' | 'f16', dst, offset);
}
