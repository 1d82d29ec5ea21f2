// `run --target DIR --features DIR`: a directory of offline features prepared once, as a chat
// job's dataset is (src/job/chat-data.ts). Every file is read and checked when the job starts
// (src/job/features.ts), so the job's sample budget counts only files it can train on: a bad
// one is dead-lettered with its reason (logged at warn, runDir/dead-letter.jsonl, the summary)
// and never trained on. The usable files' ids and masks become the job's rows (rows.safetensors,
// sample id = file stem), the draft vocabulary is the capture's own or counted over the
// supervised tokens, and the last --eval-rows usable files are held out as eval prompts. The
// rollout then reads each row's file again (featureReader), checks it the same way and that it
// still holds the ids the job validated, and stores its features in their own dtype: the
// target runs no forward pass for training data.
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { ChatTemplateError, DatasetRowError, FeaturesError, InvalidArgumentError, ModelFormatError } from '../errors.ts';
import { writeFileAtomic } from '../files.ts';
import { createLogger } from '../log.ts';
import { readChatDataset } from '../chat/dataset.ts';
import { maskConversation } from '../chat/mask.ts';
import { strftime } from '../chat/template.ts';
import { buildDraftVocab, countSupervisedTokens, readVocabFile, writeVocabFile, type DraftVocab } from '../chat/vocab.ts';
import type { HfTargetConfig } from '../hf/config.ts';
import { hfWeightsFingerprint, readHfTensor } from '../hf/weights.ts';
import { tensor, type Tensor } from '../tensor.ts';
import { tokenizerOf, writeRowsFile, type ChatDataSpec, type JobRow } from './chat-data.ts';
import {
  CAPTURE_VOCAB, detectLayout, featureEntries, idsMismatch, readFeatureFile, trainingMask,
  type FeatureFile, type FeatureLimits, type FeaturesLayout, type FeaturesSpec,
} from './features.ts';
import { promptLength } from './regenerate.ts';
import type { HfTargetSpec } from './target.ts';

const log = createLogger('features');

/** Dead letters logged one by one; past this many only counted (all of them are in dead-letter.jsonl). */
const LOGGED_DEAD = 20;
/** Files read at once when the job starts (reads overlap the checks). */
const SCAN_CONCURRENCY = 4;

export interface DeadLetter { file: string; reason: string }

/** What the job made of the directory (runDir/features-summary.json, and the run summary's "features"). */
export interface FeaturesSummary {
  dir: string; layout: FeaturesLayout;
  /** Sample files found (those rejected by name included). */
  files: number;
  /** Trained on, held out for the accept length, dead-lettered, cut to --max-len (of the usable ones). */
  trained: number; held: number; deadLettered: number; truncated: number;
  deadLetterFile: string;
  /** The first 20 dead letters. */
  deadLetters: DeadLetter[];
  /** Float dtypes of the usable files' aux and last, as stored. */
  dtypes: string[];
  /** Where the draft vocabulary came from. */
  vocab: 'capture' | 'counted' | 'init-from';
  evalOn: 'held-out' | 'training'; evalPrompts: number;
}

/** The layout of a directory (FeaturesError naming it when it cannot be read or has none). */
export async function featuresLayout(dir: string): Promise<FeaturesLayout> {
  const layout = detectLayout(await listDir(dir));
  if (!layout) throw new FeaturesError(`${dir}: no offline features: neither a draftwire capture (vocab.safetensors, capture.json) nor speculators files (hs_<i>.safetensors)`, { detail: { dir } });
  return layout;
}

async function listDir(dir: string): Promise<string[]> {
  try { return await readdir(dir); } catch (e) {
    throw new FeaturesError(`${dir}: cannot read the features directory (${(e as NodeJS.ErrnoException).code ?? String(e)})`, { detail: { dir }, cause: e });
  }
}

/** A capture's aux layers (output convention) as capture.json records them, or null. */
export async function captureAuxLayers(dir: string): Promise<number[] | null> {
  let j: { auxLayers?: unknown };
  try { j = JSON.parse(await readFile(join(dir, 'capture.json'), 'utf8')) as { auxLayers?: unknown }; } catch { return null; }
  const a = j.auxLayers;
  return Array.isArray(a) && a.length === 3 && a.every((x) => Number.isSafeInteger(x) && (x as number) >= 0) ? a as number[] : null;
}

/** A capture's draft vocabulary (vocab.safetensors), checked against the target's V. */
export async function captureVocab(dir: string, V: number): Promise<DraftVocab> {
  return readVocabFile(join(dir, CAPTURE_VOCAB), { V });
}

/** The target's final norm, which turns a speculators file's pre-norm slot into `last`. */
export async function finalNorm(targetDir: string, c: HfTargetConfig): Promise<{ weight: Float32Array; eps: number }> {
  return { weight: await readHfTensor(targetDir, c, 'model.norm.weight'), eps: c.rmsEps };
}

export interface PrepareFeaturesOptions {
  dir: string; layout: FeaturesLayout; targetDir: string; config: HfTargetConfig;
  /** speculators: the JSONL whose row i gives hs_i its loss mask (and must tokenise to its ids). */
  dataset?: string;
  maxLen: number; onBadRow: 'skip' | 'fail'; evalRows: number; evalMaxNew: number; evalPrompts: number; runDir: string;
  /** The job's vocabulary when it is given (the capture's, or --init-from's); else the draftVocab most supervised ids. */
  vocab?: { vocab: DraftVocab; from: 'capture' | 'init-from' };
  draftVocab: number;
}

export interface PreparedFeatures { chat: ChatDataSpec; features: FeaturesSpec; summary: FeaturesSummary; vocab: DraftVocab }

/** A dataset row by position (0-based over its non-blank lines), tokenised whole; or why it is bad. */
type GoodRow = { line: number; ids: Int32Array; mask: Uint8Array };
type DatasetRow = GoodRow | { line: number; bad: string };

interface Usable { id: string; ids: Int32Array; mask: Uint8Array; truncated: boolean; dtypes: string[] }

/** `run`: checks every file, writes the rows, vocabulary, eval prompts, dead letters and summary into runDir. */
export async function prepareFeatures(o: PrepareFeaturesOptions): Promise<PreparedFeatures> {
  const c = o.config;
  const { entries, rejected } = featureEntries(await listDir(o.dir), o.layout);
  const dead: DeadLetter[] = rejected.map((r) => ({ file: join(o.dir, r.file), reason: r.reason }));
  const lim: FeatureLimits = {
    hidden: c.hidden, vocab: c.vocab, maxLen: o.maxLen, auxLayers: c.auxLayers,
    ...(o.layout === 'speculators' ? { norm: await finalNorm(o.targetDir, c) } : {}),
  };
  const vars = { date_string: strftime(new Date(), '%d %b %Y') }; // as a chat job renders (Llama 3.x prints the date)
  const rows = o.layout === 'speculators' && o.dataset ? await datasetRows(o.targetDir, c.vocab, o.dataset, o.onBadRow, vars) : null;
  log.info(`features: checking ${entries.length + rejected.length} files`, { dir: o.dir, dataset: rows ? o.dataset : null });
  const results = await mapLimit(entries, SCAN_CONCURRENCY, async (e, k): Promise<Usable | DeadLetter> => {
    const path = join(o.dir, e.name);
    if (k > 0 && k % 1000 === 0) log.info(`features: checked ${k}/${entries.length} files`);
    try {
      const f = await readFeatureFile(path, o.layout, lim);
      const mask = f.mask ?? maskFromDataset(f, e.name, rows);
      const m = trainingMask(mask, f.ids.length);
      if (!m.includes(1)) return { file: path, reason: 'nothing to train on: its loss mask is all zero (after the last position, which predicts nothing)' };
      if (rows && f.mask) { // the file's own mask, but its ids must still be the dataset row's
        const why = rowMismatch(f, e.name, rows);
        if (why) return { file: path, reason: why };
      }
      return { id: e.id, ids: f.ids, mask: m, truncated: f.truncated, dtypes: [f.aux.dtype, f.last.dtype] };
    } catch (err) {
      if (err instanceof FeaturesError && typeof err.detail?.reason === 'string') return { file: path, reason: err.detail.reason };
      throw err;
    }
  });
  const usable: Usable[] = [];
  for (const r of results) if ('reason' in r) dead.push(r); else usable.push(r);
  for (const d of dead.slice(0, LOGGED_DEAD)) log.warn('features: file dead-lettered (not trained on)', { file: d.file, reason: d.reason });
  if (dead.length > LOGGED_DEAD) log.warn(`features: ${dead.length} files dead-lettered in all (${dead.length - LOGGED_DEAD} more than logged)`, { deadLetterFile: join(o.runDir, 'dead-letter.jsonl') });
  const nHeld = Math.min(o.evalRows, usable.length);
  const train = usable.slice(0, usable.length - nHeld), held = usable.slice(usable.length - nHeld);
  const deadLetterFile = join(o.runDir, 'dead-letter.jsonl');
  await writeFileAtomic(deadLetterFile, dead.map((d) => JSON.stringify(d)).join('\n') + (dead.length ? '\n' : ''));
  if (train.length === 0) {
    const first = dead.slice(0, 3).map((d) => `${d.file}: ${d.reason}`).join('; ');
    throw new FeaturesError(`${o.dir}: no usable feature file to train on (${entries.length + rejected.length} ${o.layout} files, ${dead.length} dead-lettered, ${held.length} held out for evaluation)${first ? `; ${first}` : ''}`,
      { detail: { dir: o.dir, deadLettered: dead.length, held: held.length, deadLetterFile } });
  }
  const vocab = o.vocab?.vocab ?? buildDraftVocab(countSupervisedTokens(train, c.vocab), Math.min(o.draftVocab, c.vocab));
  const chat: ChatDataSpec = {
    dataset: o.dataset ?? o.dir, maxLen: o.maxLen, onBadRow: o.onBadRow, evalRows: o.evalRows, regenerate: false, rows: train.length,
    rowsFile: join(o.runDir, 'rows.safetensors'), vocabFile: join(o.runDir, 'vocab.safetensors'), evalFile: join(o.runDir, 'eval-prompts.json'),
    evalMaxNew: o.evalMaxNew, eosTokenIds: [], templateVars: rows ? vars : {},
  };
  await writeVocabFile(chat.vocabFile, vocab, { features: o.dir, layout: o.layout, rows: String(train.length) });
  await writeRowsFile(chat.rowsFile, train);
  const { evalOn, prompts } = evalPromptsOf(held, train, o);
  await writeFileAtomic(chat.evalFile, JSON.stringify({ evalOn, prompts }));
  const summary: FeaturesSummary = {
    dir: o.dir, layout: o.layout, files: entries.length + rejected.length, trained: train.length, held: held.length, deadLettered: dead.length,
    truncated: usable.filter((u) => u.truncated).length, deadLetterFile, deadLetters: dead.slice(0, LOGGED_DEAD),
    dtypes: [...new Set(usable.flatMap((u) => u.dtypes))].sort(), vocab: o.vocab?.from ?? 'counted', evalOn, evalPrompts: prompts.length,
  };
  await writeFileAtomic(join(o.runDir, 'features-summary.json'), JSON.stringify(summary, null, 2));
  return { chat, features: { dir: o.dir, layout: o.layout, dataset: rows ? o.dataset! : null }, summary, vocab };
}

/**
 * The accept length's prompts, as a chat job's: the held-out files' ids before their first
 * supervised token (their prompt and generation header), those that leave room for
 * --eval-max-new; without any, the first training rows' (said in the summary).
 */
function evalPromptsOf(held: readonly Usable[], train: readonly Usable[], o: PrepareFeaturesOptions): { evalOn: 'held-out' | 'training'; prompts: number[][] } {
  const room = Math.max(1, o.maxLen - o.evalMaxNew);
  const fromHeld = held.map((r) => Array.from(r.ids.subarray(0, r.mask.indexOf(1)))).filter((p) => p.length >= 1 && p.length <= room);
  if (fromHeld.length > 0) return { evalOn: 'held-out', prompts: fromHeld };
  return { evalOn: 'training', prompts: train.slice(0, o.evalPrompts).map((r) => Array.from(r.ids.subarray(0, Math.min(room, promptLength(r, o.maxLen))))) };
}

/** hs_<i>'s row of the dataset, and why it cannot give that file its mask (null when it can). */
function datasetRowOf(name: string, rows: readonly DatasetRow[]): { row: GoodRow; what: string } | string {
  const i = Number(/^hs_(\d+)\./.exec(name)?.[1]);
  const row = rows[i];
  if (!row) return `no dataset row ${i} (the dataset has ${rows.length}; row i gives hs_i its loss mask)`;
  if ('bad' in row) return `dataset row ${i} (line ${row.line}) is bad: ${row.bad}`;
  return { row, what: `dataset row ${i} (line ${row.line})` };
}

function rowMismatch(f: FeatureFile, name: string, rows: readonly DatasetRow[]): string | null {
  const r = datasetRowOf(name, rows);
  return typeof r === 'string' ? r : idsMismatch(f, r.row.ids, `the tokenization of ${r.what}`, true);
}

/** A speculators file without loss_mask takes its dataset row's (whose tokenization its ids must be). */
function maskFromDataset(f: FeatureFile, name: string, rows: readonly DatasetRow[] | null): Uint8Array {
  const fail = (reason: string) => new FeaturesError(`${name}: ${reason}`, { detail: { file: name, reason } });
  if (!rows) throw fail('no loss_mask tensor in the file and no --dataset to take the mask from (row i gives hs_i its mask)');
  const r = datasetRowOf(name, rows);
  if (typeof r === 'string') throw fail(r);
  const why = idsMismatch(f, r.row.ids, `the tokenization of ${r.what}`, true);
  if (why) throw fail(why);
  return r.row.mask;
}

/** Every row of a chat JSONL by position, tokenised whole with the target's template (no cut: files are checked against it). */
async function datasetRows(targetDir: string, V: number, path: string, onBadRow: 'skip' | 'fail', vars: Record<string, string>): Promise<DatasetRow[]> {
  const tok = tokenizerOf(targetDir, V);
  const out: DatasetRow[] = [];
  const onBad = (e: DatasetRowError) => out.push({ line: e.detail!.line as number, bad: e.detail!.reason as string });
  for await (const row of readChatDataset(path, { onBadRow, onBad })) {
    try {
      const m = maskConversation(tok, row.messages, { vars });
      out.push({ line: row.line, ids: m.ids, mask: m.mask });
    } catch (e) {
      if (!(e instanceof ChatTemplateError)) throw e;
      const reason = `chat template: ${e.message}`;
      if (onBadRow === 'fail') throw new DatasetRowError(`${path}:${row.line}: ${reason}`, { detail: { file: path, line: row.line, reason } });
      out.push({ line: row.line, bad: reason });
    }
  }
  return out;
}

async function mapLimit<T, R>(items: readonly T[], n: number, fn: (x: T, i: number) => Promise<R>): Promise<R[]> {
  const out = new Array<R>(items.length);
  let next = 0;
  await Promise.all(Array.from({ length: Math.min(n, items.length) }, async () => {
    while (next < items.length) { const i = next++; out[i] = await fn(items[i]!, i); }
  }));
  return out;
}

/**
 * The rollout's view: a job row's sample, read from its file and checked again (a file that
 * went bad or changed since the job started is a FeaturesError: the job validated what it trains).
 */
export async function featureReader(f: FeaturesSpec, target: HfTargetSpec, maxLen: number): Promise<(row: JobRow) => Promise<Record<string, Tensor>>> {
  const c = target.config;
  if (f.layout !== 'capture' && f.layout !== 'speculators') throw new InvalidArgumentError(`features.layout must be "capture" or "speculators", got ${JSON.stringify(f.layout)}`);
  if (f.layout === 'speculators' && await hfWeightsFingerprint(target.dir) !== target.weights) {
    throw new ModelFormatError(`${target.dir}: the checkpoint's safetensors files are not the ones the job was started with (its final norm turns the features into the last hidden state)`, { detail: { field: 'weights' } });
  }
  const lim: FeatureLimits = { hidden: c.hidden, vocab: c.vocab, maxLen, auxLayers: c.auxLayers, ...(f.layout === 'speculators' ? { norm: await finalNorm(target.dir, c) } : {}) };
  return async (row) => {
    const path = join(f.dir, `${row.id}.safetensors`);
    let file: FeatureFile;
    try { file = await readFeatureFile(path, f.layout, lim); } catch (e) {
      if (!(e instanceof FeaturesError)) throw e;
      throw new FeaturesError(`${path}: the file went bad since the job checked it: ${String(e.detail?.reason ?? e.message)}`, { detail: { file: path, reason: e.detail?.reason }, cause: e });
    }
    const why = idsMismatch(file, row.ids, 'the row the job checked', false);
    if (why) throw new FeaturesError(`${path}: the file changed since the job checked it: ${why}`, { detail: { file: path, reason: why } });
    const T = file.ids.length;
    return { ids: tensor('i32', [T], file.ids), aux: file.aux, last: file.last, mask: tensor('u8', [T], row.mask) };
  };
}
