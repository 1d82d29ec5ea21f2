// Chat datasets as JSONL, one conversation a row, in the three forms in use: ShareGPT
// ({conversations: [{from, value}]}), OpenAI/UltraChat ({messages: [{role, content}]}) and
// SpecForge ({conversations: [{role, content}]}). Read as a stream; every row is validated
// and a bad one is a DatasetRowError with its 1-based line number.
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { createInterface } from 'node:readline';
import { ChatTemplateError, DatasetRowError, InvalidArgumentError } from '../errors.ts';
import { maskConversation } from './mask.ts';
import type { ChatMessage, Role } from './template.ts';
import type { ChatTokenizer } from './tokenizer.ts';

export interface ChatRow { id: string; line: number; messages: ChatMessage[] }

const ROLES: Record<string, Role> = {
  system: 'system', human: 'user', user: 'user',
  gpt: 'assistant', assistant: 'assistant', chatgpt: 'assistant', bing: 'assistant', bard: 'assistant',
};
const ID = /^[A-Za-z0-9_-]{1,64}$/;

function bad(path: string, line: number, reason: string): DatasetRowError {
  return new DatasetRowError(`${path}:${line}: ${reason}`, { detail: { file: path, line, reason } });
}

/** A row's id, made safe for file names and refs: kept when it already is, else cleaned plus a hash of the original. */
export function sanitizeId(raw: string): string {
  if (ID.test(raw)) return raw;
  const hash = createHash('sha256').update(raw).digest('hex').slice(0, 8);
  return `${raw.replace(/[^A-Za-z0-9_-]/g, '_').slice(0, 55)}-${hash}`;
}

/** The conversation of one parsed row, or the reason it is not one. */
export function parseRow(row: unknown): ChatMessage[] | string {
  if (row === null || typeof row !== 'object' || Array.isArray(row)) return 'not a JSON object';
  const r = row as Record<string, unknown>;
  const turns = Array.isArray(r.messages) ? r.messages : Array.isArray(r.conversations) ? r.conversations : null;
  if (!turns) return 'unknown form: expected "conversations" or "messages" as a list';
  if (turns.length === 0) return 'empty conversation';
  const first = turns[0] as Record<string, unknown> | null;
  const shareGpt = !Array.isArray(r.messages) && first !== null && typeof first === 'object' && 'from' in first;
  const [roleKey, textKey] = shareGpt ? ['from', 'value'] : ['role', 'content'];
  const out: ChatMessage[] = [];
  for (let k = 0; k < turns.length; k++) {
    const t = turns[k] as Record<string, unknown> | null;
    if (t === null || typeof t !== 'object' || Array.isArray(t)) return `turn ${k}: not an object`;
    const who = t[roleKey];
    if (typeof who !== 'string') return `turn ${k}: no "${roleKey}" string (expected {${roleKey}, ${textKey}})`;
    const role = ROLES[who.toLowerCase()];
    if (!role) return `turn ${k}: unknown role ${JSON.stringify(who.slice(0, 32))}`;
    const content = t[textKey];
    if (typeof content !== 'string') return `turn ${k}: "${textKey}" is not a string`;
    out.push({ role, content });
  }
  if (!out.some((m) => m.role === 'assistant')) return 'no assistant turn';
  return out;
}

export interface ReadOptions {
  /** 'fail' (default) throws the first bad row; 'skip' passes each to onBad and goes on. */
  onBadRow?: 'fail' | 'skip';
  onBad?: (e: DatasetRowError) => void;
}

/** Streams the rows of a JSONL chat dataset (blank lines are not rows). */
export async function* readChatDataset(path: string, opts: ReadOptions = {}): AsyncGenerator<ChatRow> {
  const seen = new Set<string>();
  const lines = createInterface({ input: createReadStream(path, { encoding: 'utf8' }), crlfDelay: Infinity });
  let line = 0;
  try {
    for await (const text of lines) {
      line++;
      if (text.trim() === '') continue;
      let row: unknown;
      let result: ChatRow | DatasetRowError;
      try { row = JSON.parse(text); } catch { row = undefined; }
      if (row === undefined) result = bad(path, line, 'not valid JSON');
      else {
        const messages = parseRow(row);
        const rawId = typeof row === 'object' && row !== null ? (row as Record<string, unknown>).id : undefined;
        if (typeof messages === 'string') result = bad(path, line, messages);
        else if (rawId !== undefined && rawId !== null && typeof rawId !== 'string' && typeof rawId !== 'number') result = bad(path, line, '"id" must be a string or a number');
        else {
          const id = rawId === undefined || rawId === null ? `line-${String(line).padStart(8, '0')}` : sanitizeId(String(rawId));
          if (seen.has(id)) result = bad(path, line, `duplicate id ${JSON.stringify(id)}`);
          else { seen.add(id); result = { id, line, messages }; }
        }
      }
      if (!(result instanceof DatasetRowError)) yield result;
      else if ((opts.onBadRow ?? 'fail') === 'fail') throw result;
      else opts.onBad?.(result);
    }
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT' || (e as NodeJS.ErrnoException).code === 'EISDIR') {
      throw new InvalidArgumentError(`${path}: cannot read the dataset (${(e as NodeJS.ErrnoException).code})`, { detail: { file: path } });
    }
    throw e;
  } finally {
    lines.close();
  }
}

export interface PreparedRow { id: string; line: number; ids: Int32Array; mask: Uint8Array; truncated: boolean }
export interface HeldRow { id: string; line: number; messages: ChatMessage[] }
export interface PrepareSummary {
  /** Rows prepared for training. */
  rows: number;
  held: number;
  skippedBad: number;
  /** Rows with no supervised token left (after truncation). */
  skippedNoSupervised: number;
  /** Training rows cut to maxLen. */
  truncated: number;
  /** The first 20 bad rows. */
  badLines: { line: number; reason: string }[];
}
export interface PrepareOptions {
  maxLen: number;
  onBadRow?: 'fail' | 'skip';
  /** Hold the last this many valid rows out of training, for eval prompts. */
  evalRows?: number;
  /** Extra template variables (date_string, ...). */
  vars?: Record<string, unknown>;
}

/** Tokenizes and masks every row of a dataset; the last `evalRows` valid rows are held out. */
export async function prepareChatDataset(tok: ChatTokenizer, path: string, opts: PrepareOptions): Promise<{ rows: PreparedRow[]; held: HeldRow[]; summary: PrepareSummary }> {
  const { maxLen, onBadRow = 'fail', evalRows = 0 } = opts;
  if (!Number.isSafeInteger(maxLen) || maxLen < 2) throw new InvalidArgumentError(`maxLen must be an integer >= 2, got ${maxLen}`);
  if (!Number.isSafeInteger(evalRows) || evalRows < 0) throw new InvalidArgumentError(`evalRows must be a non-negative integer, got ${evalRows}`);
  if (onBadRow !== 'fail' && onBadRow !== 'skip') throw new InvalidArgumentError(`onBadRow must be "fail" or "skip", got ${String(onBadRow)}`);
  const summary: PrepareSummary = { rows: 0, held: 0, skippedBad: 0, skippedNoSupervised: 0, truncated: 0, badLines: [] };
  const onBad = (e: DatasetRowError) => {
    summary.skippedBad++;
    if (summary.badLines.length < 20) summary.badLines.push({ line: e.detail!.line as number, reason: e.detail!.reason as string });
  };
  const rows: PreparedRow[] = [];
  const ring: { row: ChatRow; prepared: PreparedRow & { supervised: number } }[] = [];
  const train = (p: PreparedRow & { supervised: number }) => {
    if (p.supervised === 0) { summary.skippedNoSupervised++; return; }
    if (p.truncated) summary.truncated++;
    rows.push({ id: p.id, line: p.line, ids: p.ids, mask: p.mask, truncated: p.truncated });
  };
  for await (const row of readChatDataset(path, { onBadRow, onBad })) {
    let m;
    try { m = maskConversation(tok, row.messages, { maxLen, vars: opts.vars }); } catch (e) {
      if (!(e instanceof ChatTemplateError)) throw e;
      const err = bad(path, row.line, `chat template: ${e.message}`);
      if (onBadRow === 'fail') throw err;
      onBad(err);
      continue;
    }
    ring.push({ row, prepared: { id: row.id, line: row.line, ...m } });
    if (ring.length > evalRows) train(ring.shift()!.prepared);
  }
  summary.rows = rows.length;
  summary.held = ring.length;
  return { rows, held: ring.map(({ row }) => ({ id: row.id, line: row.line, messages: row.messages })), summary };
}
