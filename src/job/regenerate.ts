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
  /** Row i samples with seed·1_000_003 + i (the rollout's row seeds). */
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

/** The rows with the target's replies; rows left with nothing supervised are dropped (counted by the caller). */
export async function regenerateRows(target: TargetModel, rows: readonly PreparedRow[], o: RegenerateOptions): Promise<PreparedRow[]> {
  const eos = new Set(o.eosTokenIds), chunk = o.chunk ?? 8, out: PreparedRow[] = [];
  for (let c = 0; c < rows.length; c += chunk) {
    const part = rows.slice(c, c + chunk);
    const prompts = part.map((r) => r.ids.slice(0, promptLength(r, o.maxLen)));
    const maxNew = o.maxLen - Math.min(...prompts.map((p) => p.length));
    const seqs = await target.generateBatch(prompts, maxNew, { temperature: o.temperature, seeds: part.map((_, i) => o.seed * 1_000_003 + c + i) });
    seqs.forEach((seq, i) => {
      const P = prompts[i]!.length;
      let T = Math.min(seq.length, o.maxLen);
      for (let t = P; t < T; t++) if (eos.has(seq[t]!)) { T = t + 1; break; }
      const mask = new Uint8Array(T);
      mask.fill(1, P, T - 1);
      if (T - 1 > P) out.push({ id: part[i]!.id, line: part[i]!.line, ids: seq.slice(0, T), mask, truncated: false });
    });
    o.onProgress?.(Math.min(c + chunk, rows.length), rows.length);
  }
  return out;
}
