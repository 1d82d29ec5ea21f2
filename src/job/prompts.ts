// The prompts a job trains and evaluates on: a user's dataset file (text, one prompt per line,
// or JSONL {"text"} / {"ids"}), seeded synthetic prompts of a row, and the evaluation prompts
// (a seed stream disjoint from the rollout's rows). Same answer on every machine.
import { readFileSync } from 'node:fs';
import { InvalidArgumentError } from '../errors.ts';
import { readEvalPrompts } from './chat-data.ts';
import type { JobSpec } from './spec.ts';

/** Prompt token ids of every row of a text (one row per non-empty line) or JSONL file ({"text"} or {"ids"}). */
export function loadPrompts(path: string, vocab: number, promptLen: number): Int32Array[] {
  let text: string;
  try { text = readFileSync(path, 'utf8'); } catch (e) { throw new InvalidArgumentError(`cannot read dataset ${path}: ${(e as NodeJS.ErrnoException).code ?? e}`); }
  const lines = text.split('\n').map((l) => l.trim()).filter((l) => l.length > 0);
  const jsonl = path.endsWith('.jsonl');
  const rows = lines.map((line, i) => {
    let ids: number[];
    if (jsonl) {
      let o: unknown;
      try { o = JSON.parse(line); } catch { throw new InvalidArgumentError(`dataset ${path} line ${i + 1}: not valid JSON`); }
      const r = o as { text?: unknown; ids?: unknown };
      if (Array.isArray(r.ids)) {
        if (!r.ids.every((x) => Number.isInteger(x) && x >= 0 && x < vocab)) throw new InvalidArgumentError(`dataset ${path} line ${i + 1}: "ids" must be integers in [0, ${vocab})`);
        ids = r.ids as number[];
      } else if (typeof r.text === 'string') ids = [...Buffer.from(r.text, 'utf8')].map((b) => b % vocab);
      else throw new InvalidArgumentError(`dataset ${path} line ${i + 1}: needs "text" (string) or "ids" (array)`);
    } else ids = [...Buffer.from(line, 'utf8')].map((b) => b % vocab); // byte-level tokens
    const out = new Int32Array(promptLen);
    for (let t = 0; t < promptLen; t++) out[t] = ids.length > 0 ? ids[t % ids.length] : 0;
    return out;
  });
  if (rows.length === 0) throw new InvalidArgumentError(`dataset ${path} has no rows`);
  return rows;
}

/** Seeded synthetic prompt of a row (same on every machine). */
export function syntheticPrompt(seed: number, row: number, vocab: number, len: number): Int32Array {
  let s = (seed * 2654435761 + row * 40503 + 1) >>> 0;
  return Int32Array.from({ length: len }, () => { s ^= s << 13; s >>>= 0; s ^= s >>> 17; s ^= s << 5; s >>>= 0; return s % vocab; });
}

/**
 * The accept length's prompts: a chat job's held-out conversations (written at its start), or
 * deterministic synthetic prompts disjoint from the rollout's rows (another seed stream).
 */
export function evalPrompts(spec: JobSpec): Int32Array[] {
  if (spec.chat) return readEvalPrompts(spec.chat);
  let s = (spec.seed ^ 0x5eed) >>> 0;
  const next = () => { s = (Math.imul(s, 1664525) + 1013904223) >>> 0; return s; };
  return Array.from({ length: spec.evalPrompts }, () => Int32Array.from({ length: spec.promptLen }, () => next() % spec.draft.vocab));
}

/** Tokens the accept length decodes after each eval prompt. */
export function evalMaxNew(spec: JobSpec): number {
  return spec.chat ? spec.chat.evalMaxNew : spec.seqLen - spec.promptLen;
}

/** Stacks per-sample tensors into one batch, then `pad` fully-masked samples (zero features). */
