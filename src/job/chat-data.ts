// A chat job's data: the conversations of a JSONL dataset rendered with the target's own chat
// template and tokenised (src/chat), the draft vocabulary counted over their supervised tokens,
// and the evaluation prompts of the held-out rows. `run` prepares it once and writes the
// vocabulary and the prompts into the run directory; a resumed run, the rollout and the ranks
// read those files back and never recompute them (a vocabulary recomputed on resume, or one
// that differs between training and serving, silently breaks the accept length).
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { DatasetRowError, InvalidArgumentError } from '../errors.ts';
import { writeFileAtomic } from '../files.ts';
import { loadTokenizer, type ChatTokenizer } from '../chat/tokenizer.ts';
import { renderPrompt } from '../chat/template.ts';
import { prepareChatDataset, type PreparedRow, type PrepareSummary } from '../chat/dataset.ts';
import { buildDraftVocab, countSupervisedTokens, readVocabFile, writeVocabFile, type DraftVocab } from '../chat/vocab.ts';

/** The chat part of a job spec. */
export interface ChatDataSpec {
  /** The JSONL file of conversations (ShareGPT, OpenAI/UltraChat or SpecForge form). */
  dataset: string;
  /** Tokens per conversation at most (longer ones are truncated). */
  maxLen: number;
  onBadRow: 'skip' | 'fail';
  /** The last this many valid rows are held out of training for the accept length. */
  evalRows: number;
  /** The target writes the assistant reply itself (greedy, or at the job's temperature). */
  regenerate: boolean;
  /** Training rows after preparation: one pass over them is `rows` samples. */
  rows: number;
  /** safetensors with d2t (I64 offsets) and t2d (BOOL), computed once when the job started. */
  vocabFile: string;
  /** JSON {prompts: number[][]}: the held-out rows' prompts with a generation prompt. */
  evalFile: string;
  /** Tokens the accept length decodes after each prompt. */
  evalMaxNew: number;
  /** The tokenizer's end-of-turn / end-of-sequence ids (a regenerated reply ends at the first). */
  eosTokenIds: number[];
}

export interface PreparedChat { chat: ChatDataSpec; summary: PrepareSummary; vocab: DraftVocab; evalOn: 'held-out' | 'training' }

/** One training sample's tokens: teacher forcing trains on ids/mask; --regenerate keeps only `prompt`. */
export interface ChatRow { id: string; ids: Int32Array; mask: Uint8Array; prompt: Int32Array | null }

export interface PrepareChatOptions {
  targetDir: string; dataset: string; maxLen: number; onBadRow: 'skip' | 'fail'; evalRows: number;
  regenerate: boolean; draftVocab: number; vocab: number; runDir: string; evalMaxNew: number; evalPrompts: number;
}

function tokenizerOf(dir: string, vocab: number): ChatTokenizer {
  const tok = loadTokenizer(dir);
  if (tok.vocabSize > vocab) {
    throw new InvalidArgumentError(`${dir}: the tokenizer has ${tok.vocabSize} ids but the model's vocab_size is ${vocab}; they must come from the same model`);
  }
  return tok;
}

/** Prompt ids of a conversation: everything before its first assistant turn, with the generation prompt. */
function promptIds(tok: ChatTokenizer, messages: Parameters<typeof renderPrompt>[1], maxLen: number): Int32Array {
  const ids = tok.encode(renderPrompt(tok, messages));
  return ids.length > maxLen ? ids.slice(0, maxLen) : ids;
}

/** `run`: prepares the dataset, writes the vocabulary and the eval prompts into runDir. */
export async function prepareChatData(o: PrepareChatOptions): Promise<PreparedChat> {
  const tok = tokenizerOf(o.targetDir, o.vocab);
  const prep = await prepareChatDataset(tok, o.dataset, { maxLen: o.maxLen, onBadRow: o.onBadRow, evalRows: o.evalRows });
  if (prep.rows.length === 0) {
    throw new DatasetRowError(`${o.dataset}: no conversation to train on (${prep.summary.skippedBad} bad rows, ${prep.summary.skippedNoSupervised} without a supervised token, ${prep.held.length} held out for evaluation)`,
      { detail: { summary: prep.summary } });
  }
  const vocab = buildDraftVocab(countSupervisedTokens(prep.rows, o.vocab), Math.min(o.draftVocab, o.vocab));
  const chat: ChatDataSpec = {
    dataset: o.dataset, maxLen: o.maxLen, onBadRow: o.onBadRow, evalRows: o.evalRows, regenerate: o.regenerate, rows: prep.rows.length,
    vocabFile: join(o.runDir, 'vocab.safetensors'), evalFile: join(o.runDir, 'eval-prompts.json'), evalMaxNew: o.evalMaxNew,
    eosTokenIds: [...tok.eosTokenIds],
  };
  await writeVocabFile(chat.vocabFile, vocab, { dataset: o.dataset, rows: String(prep.rows.length) });
  // Held-out rows when there are any; else the first training rows (said in the summary).
  const room = Math.max(1, o.maxLen - o.evalMaxNew);
  const evalOn = prep.held.length > 0 ? 'held-out' : 'training';
  const prompts = prep.held.length > 0
    ? prep.held.map((h) => Array.from(promptIds(tok, h.messages, room)))
    : prep.rows.slice(0, o.evalPrompts).map((r) => Array.from(r.ids.subarray(0, Math.min(room, firstSupervised(r)))));
  await writeFileAtomic(chat.evalFile, JSON.stringify({ evalOn, prompts }));
  return { chat, summary: prep.summary, vocab, evalOn };
}

/** Where a training row's first supervised token is (its prompt ends there); at least 1. */
function firstSupervised(r: PreparedRow): number {
  const i = r.mask.indexOf(1);
  return Math.max(1, i < 0 ? r.ids.length : i);
}

/** The rollout: the same rows `run` prepared (the dataset must not have changed since). */
export async function loadChatRows(targetDir: string, vocab: number, chat: ChatDataSpec): Promise<ChatRow[]> {
  const tok = tokenizerOf(targetDir, vocab);
  const prep = await prepareChatDataset(tok, chat.dataset, { maxLen: chat.maxLen, onBadRow: chat.onBadRow, evalRows: chat.evalRows });
  if (prep.rows.length !== chat.rows) {
    throw new DatasetRowError(`${chat.dataset}: ${prep.rows.length} training rows now, ${chat.rows} when the job started (the dataset changed under the job)`,
      { detail: { now: prep.rows.length, started: chat.rows } });
  }
  return prep.rows.map((r) => ({
    id: r.id, ids: r.ids, mask: r.mask,
    prompt: chat.regenerate ? r.ids.slice(0, Math.min(firstSupervised(r), chat.maxLen - 1)) : null,
  }));
}

/** The sample id of budget row r: the dataset row's id, with the pass over the data after the first. */
export function chatSampleId(rows: readonly ChatRow[], r: number): string {
  const pass = Math.floor(r / rows.length), id = rows[r % rows.length]!.id;
  return pass === 0 ? id : `${id}.e${pass}`;
}

/** The job's vocabulary as written at the start; checked against the target's and draft's sizes. */
export async function readJobVocab(chat: ChatDataSpec, V: number, Vd: number): Promise<DraftVocab> {
  return readVocabFile(chat.vocabFile, { V, Vd });
}

/** The evaluation prompts written at the start. */
export function readEvalPrompts(chat: ChatDataSpec): Int32Array[] {
  let parsed: { prompts?: unknown };
  try { parsed = JSON.parse(readFileSync(chat.evalFile, 'utf8')) as { prompts?: unknown }; } catch (e) {
    throw new InvalidArgumentError(`${chat.evalFile}: cannot read the job's eval prompts (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
  }
  if (!Array.isArray(parsed.prompts) || parsed.prompts.length === 0) throw new InvalidArgumentError(`${chat.evalFile}: "prompts" must be a non-empty array of token id arrays`);
  return parsed.prompts.map((p) => Int32Array.from(p as number[]));
}
