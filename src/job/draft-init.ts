// A new draft's trainable weights as SpecForge initialises them: every Linear as PyTorch's
// nn.Linear default (kaiming_uniform with a = √5: U(−1/√fan_in, 1/√fan_in)), every RMSNorm 1;
// the frozen embedding and head come from the target, the draft vocabulary from the job.
// Seeded (mulberry32), so every machine writes the same initial weights for a job.
import { draftParamShapes, initDraftWeights, TRAINABLE_NAMES, type DraftConfig, type FrozenTensors } from '../native/addon.ts';

const NORMS = new Set(['n_in', 'n_hid', 'n_post', 'n_final']);

/** mulberry32 uniforms in [0, 1): 32-bit, plenty for an initialisation, and fast in JS. */
function uniforms(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let z = s;
    z = Math.imul(z ^ (z >>> 15), z | 1);
    z ^= z + Math.imul(z ^ (z >>> 7), z | 61);
    return ((z ^ (z >>> 14)) >>> 0) / 4294967296;
  };
}

export function specForgeInit(c: DraftConfig, seed: number, frozen: FrozenTensors): Record<string, Float32Array | Int32Array> {
  const w = initDraftWeights(c, seed, frozen);
  const shapes = draftParamShapes(c);
  TRAINABLE_NAMES.forEach((name, i) => {
    const a = w[name] as Float32Array;
    if (NORMS.has(name)) { a.fill(1); return; }
    const bound = 1 / Math.sqrt(shapes[name]![1]!);
    const u = uniforms(Math.imul(seed + 1, 0x9e3779b1) + i + 1);
    for (let j = 0; j < a.length; j++) a[j] = (2 * u() - 1) * bound;
  });
  return w;
}
