// A training batch from the features of a step's samples: stacks each sample's ids, aux, last
// and mask into the DraftBatch the native step takes, `pad` fully-masked samples after them.
import { InvalidArgumentError } from '../errors.ts';
import type { Tensor } from '../tensor.ts';

export function stackBatch(samples: Record<string, Tensor>[], seq: number, hidden: number, pad = 0) {
  const B = samples.length + pad;
  const ids = new Int32Array(B * seq), aux = new Float32Array(B * seq * 3 * hidden), last = new Float32Array(B * seq * hidden), mask = new Uint8Array(B * seq);
  samples.forEach((t, b) => {
    const check = (name: string, n: number) => {
      if (!t[name] || t[name].data.length !== n) throw new InvalidArgumentError(`sample ${b}: feature "${name}" has ${t[name]?.data.length ?? 0} elements, the job needs ${n}`);
      return t[name].data;
    };
    ids.set(check('ids', seq) as Int32Array, b * seq);
    aux.set(check('aux', seq * 3 * hidden) as Float32Array, b * seq * 3 * hidden);
    last.set(check('last', seq * hidden) as Float32Array, b * seq * hidden);
    mask.set(check('mask', seq) as Uint8Array, b * seq);
  });
  return { ids, aux, last, mask, batch: B, seq };
}
