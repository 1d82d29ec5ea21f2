// --regenerate: the target writes each conversation's reply itself (as SpecForge recommends:
// a draft learns the target's own continuations better than the dataset's), once, when the
// job starts, so the draft vocabulary is counted over what is trained on and the rollout only
// runs teacher forcing over the stored rows. Each reply is cut after its first end-of-turn /
// end-of-sequence token, or at maxLen; its tokens are masked in, the prompt's out, and the
// last position never (as a dataset's assistant turn).
import type { PreparedRow } from '../chat/dataset.ts';
import type { TargetModel } from '../native/addon.ts';

export interface RegenerateOptions {
  maxLen: number;
  /** 0: greedy. */
  temperature: number;
  /** Row i (of `rows`) samples with seed·1_000_003 + i. */
  seed: number;
  eosTokenIds: readonly number[];
  /** Rows decoded together (they share every matrix product). */
  chunk?: number;
  onProgress?: (done: number, total: number) => void;
}

/** Where a row's first supervised token is: its prompt ends there (at least 1, below maxLen). */
export function promptLength(r: { ids: ArrayLike<number>; mask: Uint8Array }, maxLen: number): number {
  const i = r.mask.indexOf(1);
  return Math.min(maxLen - 1, Math.max(1, i < 0 ? r.ids.length : i));
}

/**
 * The rows with the target's replies, in the rows' order; rows left with nothing supervised are
 * dropped (counted by the caller). A reply that reaches maxLen before an end token is truncated.
 */
export async function regenerateRows(target: TargetModel, rows: readonly PreparedRow[], o: RegenerateOptions): Promise<PreparedRow[]> {
  const eos = new Set(o.eosTokenIds), chunk = o.chunk ?? 8;
  const done: (PreparedRow | null)[] = new Array(rows.length).fill(null);
  // Rows of similar prompt lengths decode together: a chunk decodes maxLen − its shortest prompt.
  const order = rows.map((r, i) => ({ i, P: promptLength(r, o.maxLen) })).sort((a, b) => a.P - b.P || a.i - b.i);
  for (let c = 0; c < order.length; c += chunk) {
    const part = order.slice(c, c + chunk);
    const prompts = part.map(({ i, P }) => rows[i]!.ids.slice(0, P));
    const maxNew = o.maxLen - part[0]!.P;
    const seqs = await target.generateBatch(prompts, maxNew, { temperature: o.temperature, seeds: part.map(({ i }) => o.seed * 1_000_003 + i) });
    seqs.forEach((seq, k) => {
      const { i, P } = part[k]!;
      let T = Math.min(seq.length, o.maxLen), ended = false;
      for (let t = P; t < T; t++) if (eos.has(seq[t]!)) { T = t + 1; ended = true; break; }
      const mask = new Uint8Array(T);
      mask.fill(1, P, T - 1);
      if (T - 1 > P) done[i] = { id: rows[i]!.id, line: rows[i]!.line, ids: seq.slice(0, T), mask, truncated: !ended };
    });
    o.onProgress?.(Math.min(c + chunk, rows.length), rows.length);
  }
  return done.filter((r): r is PreparedRow => r !== null);
}
