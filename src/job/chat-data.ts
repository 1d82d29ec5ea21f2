// A chat job's data: the conversations of a JSONL dataset rendered with the target's own chat
// template and tokenised (src/chat), the draft vocabulary counted over their supervised tokens,
// and the evaluation prompts of the held-out rows. `run` prepares it once and writes the
// token rows, the vocabulary and the prompts into the run directory; a resumed run, the rollout
// and the ranks read those files back and never recompute them (a vocabulary recomputed on
// resume, or one that differs between training and serving, silently breaks the accept
// length), and the rollout never tokenises on its event loop.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { DatasetRowError, DecodeError, InvalidArgumentError } from '../errors.ts';
import { encodeSafetensorsBuffer, readSafetensorsFile } from '../store/safetensors.ts';
import { tensor } from '../tensor.ts';
import { createLogger } from '../log.ts';
import { loadHfTarget } from '../hf/target.ts';
import { promptLength, regenerateRows } from './regenerate.ts';

const log = createLogger('chat-data');
import { writeFileAtomic } from '../files.ts';
import { loadTokenizer, type ChatTokenizer } from '../chat/tokenizer.ts';
import { renderPrompt, strftime } from '../chat/template.ts';
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
  /** The replies are the target's own (written once when the job started; greedy, or at the job's temperature). */
  regenerate: boolean;
  /** Training rows after preparation: one pass over them is `rows` samples. */
  rows: number;
  /** safetensors with the rows' tokens: ids i32 [Σ T], mask u8 [Σ T], offsets i32 [rows + 1]; sample ids in the metadata. */
  rowsFile: string;
  /** safetensors with d2t (I64 offsets) and t2d (BOOL), computed once when the job started. */
  vocabFile: string;
  /** JSON {evalOn, prompts: number[][]}: the held-out rows' prompts with a generation prompt. */
  evalFile: string;
  /** Tokens the accept length decodes after each prompt. */
  evalMaxNew: number;
  /** The tokenizer's end-of-turn / end-of-sequence ids (a regenerated reply ends at the first). */
  eosTokenIds: number[];
  /**
   * Template variables fixed when the job started (date_string: Llama 3.x templates print
   * today's date), so a resumed rollout renders exactly the conversations `run` counted.
   */
  templateVars: Record<string, string>;
}

export interface PreparedChat { chat: ChatDataSpec; summary: PrepareSummary; vocab: DraftVocab; evalOn: 'held-out' | 'training'; evalPrompts: number }

/** One training sample's tokens (the dataset's reply, or with --regenerate the target's). */
export interface JobRow { id: string; ids: Int32Array; mask: Uint8Array }

export interface PrepareChatOptions {
  targetDir: string; dataset: string; maxLen: number; onBadRow: 'skip' | 'fail'; evalRows: number;
  regenerate: boolean; draftVocab: number; vocab: number; runDir: string; evalMaxNew: number; evalPrompts: number;
  /** --regenerate: sampling temperature (0 greedy), seed, and BLAS threads for the target. */
  temperature: number; seed: number; threads: number;
  /** The vocabulary of a draft the job starts from (--init-from): used as it is, not counted. */
  vocabOf?: DraftVocab;
}

/** The model directory's tokenizer, checked against the model's vocabulary. */
export function tokenizerOf(dir: string, vocab: number): ChatTokenizer {
  const tok = loadTokenizer(dir);
  if (tok.vocabSize > vocab) {
    throw new InvalidArgumentError(`${dir}: the tokenizer has ${tok.vocabSize} ids but the model's vocab_size is ${vocab}; they must come from the same model`);
  }
  return tok;
}

/** Prompt ids of a conversation: everything before its first assistant turn, with the generation prompt. */
function promptIds(tok: ChatTokenizer, messages: Parameters<typeof renderPrompt>[1], vars: Record<string, string>): Int32Array {
  return tok.encode(renderPrompt(tok, messages, { vars }));
}

/** `run`: prepares the dataset, writes the vocabulary and the eval prompts into runDir. */
export async function prepareChatData(o: PrepareChatOptions): Promise<PreparedChat> {
  const tok = tokenizerOf(o.targetDir, o.vocab);
  const templateVars = { date_string: strftime(new Date(), '%d %b %Y') };
  const prep = await prepareChatDataset(tok, o.dataset, { maxLen: o.maxLen, onBadRow: o.onBadRow, evalRows: o.evalRows, vars: templateVars });
  if (o.regenerate && prep.rows.length > 0) {
    const { model } = await loadHfTarget(o.targetDir, { threads: o.threads });
    try {
      log.info('the target writes the replies (--regenerate)', { rows: prep.rows.length });
      const before = prep.rows.length;
      prep.rows = await regenerateRows(model, prep.rows, {
        maxLen: o.maxLen, temperature: o.temperature, seed: o.seed, eosTokenIds: tok.eosTokenIds,
        onProgress: (done, total) => { if (done === total || done % 256 === 0) log.info(`regenerated ${done}/${total} replies`); },
      });
      prep.summary.skippedNoSupervised += before - prep.rows.length;
      prep.summary.rows = prep.rows.length;
      prep.summary.truncated = prep.rows.filter((r) => r.truncated).length; // now of the target's replies
    } finally { model.close(); }
  }
  if (prep.rows.length === 0) {
    throw new DatasetRowError(`${o.dataset}: no conversation to train on (${prep.summary.skippedBad} bad rows, ${prep.summary.skippedNoSupervised} without a supervised token, ${prep.held.length} held out for evaluation)`,
      { detail: { summary: prep.summary } });
  }
  const vocab = o.vocabOf ?? draftVocabOf(prep.rows, o.vocab, o.draftVocab);
  const chat: ChatDataSpec = {
    dataset: o.dataset, maxLen: o.maxLen, onBadRow: o.onBadRow, evalRows: o.evalRows, regenerate: o.regenerate, rows: prep.rows.length,
    rowsFile: join(o.runDir, 'rows.safetensors'),
    vocabFile: join(o.runDir, 'vocab.safetensors'), evalFile: join(o.runDir, 'eval-prompts.json'), evalMaxNew: o.evalMaxNew,
    eosTokenIds: [...tok.eosTokenIds], templateVars,
  };
  await writeVocabFile(chat.vocabFile, vocab, { dataset: o.dataset, rows: String(prep.rows.length) });
  await writeRowsFile(chat.rowsFile, prep.rows);
  // Held-out rows when there are any; else the first training rows (said in the summary).
  const room = Math.max(1, o.maxLen - o.evalMaxNew);
  // A held-out prompt longer than `room` is left out (cut, it would lose its generation prompt).
  const held = prep.held.map((h) => Array.from(promptIds(tok, h.messages, templateVars))).filter((p) => p.length <= room);
  const evalOn = held.length > 0 ? 'held-out' : 'training';
  const prompts = held.length > 0 ? held
    : prep.rows.slice(0, o.evalPrompts).map((r) => Array.from(r.ids.subarray(0, Math.min(room, promptLength(r, o.maxLen)))));
  await writeFileAtomic(chat.evalFile, JSON.stringify({ evalOn, prompts }));
  return { chat, summary: prep.summary, vocab, evalOn, evalPrompts: prompts.length };
}

/** The draft vocabulary of prepared rows: the min(Vd, V) tokens supervised most often. */
export function draftVocabOf(rows: readonly PreparedRow[], V: number, Vd: number): DraftVocab {
  return buildDraftVocab(countSupervisedTokens(rows, V), Math.min(Vd, V));
}

/** The job's rows file (read back by loadJobRows): every row's ids and mask, the sample ids in the metadata. */
export async function writeRowsFile(path: string, rows: readonly Pick<JobRow, 'id' | 'ids' | 'mask'>[]): Promise<void> {
  const offsets = new Int32Array(rows.length + 1);
  rows.forEach((r, i) => { offsets[i + 1] = offsets[i]! + r.ids.length; });
  const n = offsets[rows.length]!, ids = new Int32Array(n), mask = new Uint8Array(n);
  rows.forEach((r, i) => { ids.set(r.ids, offsets[i]); mask.set(r.mask, offsets[i]); });
  const bytes = encodeSafetensorsBuffer({ ids: tensor('i32', [n], ids), mask: tensor('u8', [n], mask), offsets: tensor('i32', [rows.length + 1], offsets) },
    { format: 'draftwire-chat-rows/1', sampleIds: JSON.stringify(rows.map((r) => r.id)) });
  await writeFileAtomic(path, bytes, { fsync: true });
}

/** The rollout: the rows `run` prepared, as it wrote them (no tokenizer, no template). */
export async function loadJobRows(chat: ChatDataSpec): Promise<JobRow[]> {
  const where = `${chat.rowsFile} (the job's prepared conversations)`;
  const { tensors, metadata } = await readJobFile(chat.rowsFile, () => readSafetensorsFile(chat.rowsFile));
  const ids = tensors.ids?.data, mask = tensors.mask?.data, off = tensors.offsets?.data;
  let sampleIds: unknown;
  try { sampleIds = JSON.parse(metadata.sampleIds ?? ''); } catch { sampleIds = null; }
  if (!(ids instanceof Int32Array) || !(mask instanceof Uint8Array) || !(off instanceof Int32Array) || !Array.isArray(sampleIds)
    || off.length !== chat.rows + 1 || sampleIds.length !== chat.rows || off[chat.rows] !== ids.length || mask.length !== ids.length) {
    throw new DecodeError(`${where}: not the ${chat.rows} rows the job was started with`);
  }
  return sampleIds.map((id, i) => ({ id: String(id), ids: ids.subarray(off[i], off[i + 1]), mask: mask.subarray(off[i], off[i + 1]) }));
}

/** The sample id of budget row r: the dataset row's id, with the pass over the data after the first. */
export function chatSampleId(rows: readonly JobRow[], r: number): string {
  const pass = Math.floor(r / rows.length), id = rows[r % rows.length]!.id;
  return pass === 0 ? id : `${id}.e${pass}`;
}

/** The job's vocabulary as written at the start; checked against the target's and draft's sizes. */
export async function readJobVocab(chat: ChatDataSpec, V: number, Vd: number): Promise<DraftVocab> {
  return readJobFile(chat.vocabFile, () => readVocabFile(chat.vocabFile, { V, Vd }));
}

/** A file the job wrote when it started: one gone is a DecodeError naming it (a resume cannot recompute it). */
async function readJobFile<T>(path: string, read: () => Promise<T>): Promise<T> {
  try { return await read(); } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'EACCES') throw new DecodeError(`${path}: the job's file cannot be read (${code}); it was written when the job started and is never recomputed`, { cause: e });
    throw e;
  }
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
