// The demo size both step benchmarks measure, and one batch of it written by the synthetic
// target (greedy continuations, so d2t covers nearly every target token and nearly every
// row carries loss weight, as in real training).
import { TargetModel, type DraftBatch, type DraftConfig, type FrozenTensors } from '../src/native/addon.ts';

export const DEMO: DraftConfig = { vocab: 8192, draftVocab: 2048, hidden: 256, heads: 8, kvHeads: 4, intermediate: 688, ttt: 3, ropeTheta: 10000, rmsEps: 1e-6 };
export const DEMO_T = 512;

export async function makeDemoBatch(cfg: DraftConfig, B: number, T: number): Promise<{ batch: DraftBatch; frozen: FrozenTensors }> {
  const target = TargetModel.create({ vocab: cfg.vocab, hidden: cfg.hidden, heads: cfg.heads, kvHeads: cfg.kvHeads, intermediate: cfg.intermediate, layers: 8, ropeTheta: 10000, rmsEps: 1e-6, seed: 42 });
  const ids = new Int32Array(B * T);
  for (let b = 0; b < B; b++) ids.set(await target.generate(Int32Array.from([1 + b, 100 + 7 * b, 2000 + b]), T - 3), b * T);
  const { aux, last } = await target.forward(ids, B, T);
  // d2t: the draftVocab most frequent tokens of the batch, then the lowest unused ids
  const count = new Map<number, number>();
  for (const t of ids) count.set(t, (count.get(t) ?? 0) + 1);
  const top = [...count.entries()].sort((a, b) => b[1] - a[1] || a[0] - b[0]).slice(0, cfg.draftVocab).map((e) => e[0]);
  const used = new Set(top);
  for (let t = 0; top.length < cfg.draftVocab; t++) if (!used.has(t)) top.push(t);
  const frozen = { ...target.frozen(), d2t: Int32Array.from(top) };
  target.close();
  return { batch: { ids, aux, last, mask: new Uint8Array(B * T).fill(1), batch: B, seq: T }, frozen };
}
