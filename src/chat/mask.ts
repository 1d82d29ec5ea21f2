// The loss mask of a conversation, for any chat template, by prefix rendering:
//
//   text   = render(all messages)
//   head_i = render(messages[0..i), add_generation_prompt) — the text before assistant turn i
//   turn_i = render(messages[0..i])                          — the text through assistant turn i
//
// render(messages[0..i)) must be a prefix of text (else the turn cannot be placed safely).
// Turn i starts where head_i and text part (head_i.length when head_i is a prefix of text; a
// template that rewrites earlier turns, like Qwen3 dropping their <think> block, parts inside
// its generation prompt, and the turn starts there). It ends at the first special token
// (role marker, end-of-turn, eos) at or after its start, included: `<|eot_id|>`, `<|im_end|>`.
// That token is searched for up to turn_i.length when turn_i is a prefix of text, else up to
// the next assistant turn (or the end): the turn as `text` renders it is what is trained on,
// even when rendering it last (turn_i) rewrites it. Char positions become token positions by
// tokenizing the text piece by piece between the positions: when the pieces' ids concatenate
// to the whole text's ids the positions are token boundaries; otherwise (a merge across one)
// each position is the number of leading ids its prefix's tokenization shares with the text's.
import { ChatTemplateError, InvalidArgumentError } from '../errors.ts';
import { renderChat, type ChatMessage } from './template.ts';
import type { ChatTokenizer } from './tokenizer.ts';

export interface MaskedConversation {
  ids: Int32Array;
  /** 1 on the assistant turns' tokens (content and end-of-turn), 0 elsewhere and on the last position. */
  mask: Uint8Array;
  truncated: boolean;
  /** Number of ones in `mask`. */
  supervised: number;
}

export interface MaskOptions {
  /** Keep at most this many tokens (the rest is cut, `truncated` says so). */
  maxLen?: number;
  /** Extra template variables (date_string, ...). */
  vars?: Record<string, unknown>;
}

function commonPrefix(a: string, b: string): number {
  const n = Math.min(a.length, b.length);
  let i = 0;
  while (i < n && a.charCodeAt(i) === b.charCodeAt(i)) i++;
  return i;
}

function commonIds(a: Int32Array, b: Int32Array): number {
  const n = Math.min(a.length, b.length);
  let i = 0;
  while (i < n && a[i] === b[i]) i++;
  return i;
}

/** Token index of each char position (sorted, distinct, within text). */
function tokenPositions(tok: ChatTokenizer, text: string, ids: Int32Array, chars: number[]): Map<number, number> {
  const out = new Map<number, number>();
  const cuts = [...new Set([0, ...chars, text.length])].sort((a, b) => a - b);
  const pieces: Int32Array[] = [];
  let n = 0;
  let aligned = true;
  for (let k = 0; k + 1 < cuts.length && aligned; k++) {
    out.set(cuts[k]!, n);
    const p = tok.encode(text.slice(cuts[k], cuts[k + 1]));
    for (let j = 0; j < p.length; j++) if (ids[n + j] !== p[j]) { aligned = false; break; }
    pieces.push(p);
    n += p.length;
  }
  if (aligned && n === ids.length) { out.set(text.length, n); return out; }
  out.clear();
  for (const c of cuts) out.set(c, c === text.length ? ids.length : commonIds(tok.encode(text.slice(0, c)), ids));
  return out;
}

/** Token ids of the rendered conversation and the loss mask of its assistant turns. */
export function maskConversation(tok: ChatTokenizer, messages: readonly ChatMessage[], opts: MaskOptions = {}): MaskedConversation {
  const { maxLen } = opts;
  if (maxLen !== undefined && (!Number.isSafeInteger(maxLen) || maxLen < 1)) throw new InvalidArgumentError(`maxLen must be a positive integer, got ${maxLen}`);
  const vars = opts.vars;
  const text = renderChat(tok, messages, { vars });
  const ids = tok.encode(text);

  const turns: { index: number; start: number; bound: number; exact: boolean }[] = [];
  let prevEnd = 0;
  for (let i = 0; i < messages.length; i++) {
    if (messages[i]!.role !== 'assistant') continue;
    // The conversation before the turn must render as it does in the whole, so that no
    // earlier text can be taken for the turn.
    const base = renderChat(tok, messages.slice(0, i), { vars });
    if (!text.startsWith(base)) {
      throw new ChatTemplateError(`assistant turn ${i}: the conversation before it renders differently on its own than in the whole conversation`, { detail: { turn: i, reason: 'prefix' } });
    }
    const head = renderChat(tok, messages.slice(0, i), { addGenerationPrompt: true, vars });
    const start = Math.max(commonPrefix(head, text), base.length);
    if (start < prevEnd || start >= text.length) {
      throw new ChatTemplateError(`assistant turn ${i}: cannot find where it starts in the rendered conversation`, { detail: { turn: i, reason: 'turn start' } });
    }
    const turn = renderChat(tok, messages.slice(0, i + 1), { vars });
    const exact = turn.length > start && text.startsWith(turn);
    turns.push({ index: i, start, bound: exact ? turn.length : text.length, exact });
    prevEnd = start;
  }
  for (let k = 0; k + 1 < turns.length; k++) if (!turns[k]!.exact) turns[k]!.bound = turns[k + 1]!.start;

  const at = tokenPositions(tok, text, ids, turns.flatMap((t) => [t.start, t.bound]));
  const mask = new Uint8Array(ids.length);
  for (const t of turns) {
    const s = at.get(t.start)!;
    const b = at.get(t.bound)!;
    let e = s;
    while (e < b && !tok.specialIds.has(ids[e]!)) e++;
    if (e < b) e++; // the end-of-turn token itself
    else if (!t.exact) {
      throw new ChatTemplateError(`assistant turn ${t.index}: no end-of-turn token after it in the rendered conversation`, { detail: { turn: t.index, reason: 'turn end' } });
    }
    mask.fill(1, s, e);
  }

  const n = maxLen === undefined ? ids.length : Math.min(ids.length, maxLen);
  const outIds = n === ids.length ? ids : ids.slice(0, n);
  const outMask = n === ids.length ? mask : mask.slice(0, n);
  if (n > 0) outMask[n - 1] = 0; // the last position has no next token to predict
  let supervised = 0;
  for (let i = 0; i < n; i++) supervised += outMask[i]!;
  return { ids: outIds, mask: outMask, truncated: n < ids.length, supervised };
}
