// Model sizes `draftwire run --size` offers. The target is the seeded synthetic Llama-style
// model; the draft shares its vocabulary, hidden size and heads. The target's shape knobs
// (logitScale, zipf, residualScale: docs/model-math.md "Synthetic target") are written into
// the job spec explicitly, so job.json says which target a run trained against.
import { TARGET_DEFAULTS, type DraftConfig, type TargetConfig } from '../src/native/addon.ts';

export interface SizePreset { draft: DraftConfig; targetLayers: number; seqLen: number; promptLen: number }

function preset(V: number, Vd: number, H: number, nh: number, nkv: number, I: number, K: number, L: number, seqLen: number, promptLen: number): SizePreset {
  return { draft: { vocab: V, draftVocab: Vd, hidden: H, heads: nh, kvHeads: nkv, intermediate: I, ttt: K, ropeTheta: 10000, rmsEps: 1e-6 }, targetLayers: L, seqLen, promptLen };
}

export const SIZES: Record<string, SizePreset> = {
  tiny: preset(256, 64, 32, 4, 2, 64, 3, 8, 32, 8),
  small: preset(1024, 256, 64, 4, 2, 172, 3, 8, 64, 8),
  demo: preset(8192, 2048, 256, 8, 4, 688, 3, 8, 512, 32),
};

export function targetConfig(p: SizePreset, seed: number): TargetConfig {
  const d = p.draft;
  return {
    vocab: d.vocab, hidden: d.hidden, heads: d.heads, kvHeads: d.kvHeads, intermediate: d.intermediate, layers: p.targetLayers, ropeTheta: d.ropeTheta, rmsEps: d.rmsEps, seed,
    ...TARGET_DEFAULTS,
  };
}
