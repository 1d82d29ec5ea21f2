// The job spec: everything every process of a training job must agree on, written once by
// `draftwire run` (or an operator) as job.json in the run directory and read by the node
// agent and every rank. Validation names the field that is wrong.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { DecodeError, InvalidArgumentError } from '../errors.ts';
import { MAX_DP } from './epoch.ts';
import { writeFileAtomic } from '../files.ts';
import { DRAFT_BACKENDS, type DraftBackend, type DraftConfig } from '../native/addon.ts';
import type { ChatDataSpec } from './chat-data.ts';
import type { FeaturesSpec } from './features.ts';
import { isHfTarget, type JobTarget } from './target.ts';

export interface JobSpec {
  /** Job id: [A-Za-z0-9_-]{1,64} (a NATS subject token). */
  job: string;
  /** Run directory: job.json, init/checkpoint weights, summary, ledger export. */
  runDir: string;
  /** Shared feature-store directory. */
  storeDir: string;
  /** Id of the feature store (its marker file names it). */
  storeId: string;
  draft: DraftConfig;
  /** The seeded synthetic target (its native config) or a Hugging Face model directory. */
  target: JobTarget;
  /** A chat dataset (with a Hugging Face target), or absent/null for prompts the target continues. */
  chat?: ChatDataSpec | null;
  /**
   * Offline features (run --features): the rollout stores each row's hidden states from its
   * file instead of running the target; `chat` then holds the rows, vocabulary and eval prompts.
   */
  features?: FeaturesSpec | null;
  /** An EAGLE3 draft directory the job started from (run --init-from): its weights went into initWeights. */
  initFrom?: string;
  /** Tokens per sample at most (prompt + continuation; a chat job's --max-len). */
  seqLen: number;
  promptLen: number;
  /** Samples per step per DP group. */
  batch: number;
  steps: number;
  lr: number;
  clip: number | null;
  weightDecay: number;
  dp: number;
  tp: number;
  sp: number;
  seed: number;
  /** Rollout sampling temperature (0 = greedy continuations). */
  temperature: number;
  leaseMs: number;
  maxDeliveries: number;
  storeHighBytes: number;
  storeLowBytes: number;
  /** A text or JSONL file of prompts, or null for seeded synthetic prompts. */
  dataset: string | null;
  /** Accept length is measured every this many steps (and at the end); 0 = only at the end. */
  evalEvery: number;
  evalPrompts: number;
  /** BLAS threads per rank. */
  threads: number;
  /**
   * Where the rank's step runs (src/native/addon.ts DRAFT_BACKENDS; default 'cpu'). 'cuda' and
   * 'resident-host' train one unsharded rank: dp = tp = sp = 1, and scale refuses more.
   */
  backend?: DraftBackend;
  /** Initial weights (safetensors, DESIGN names) every rank loads. */
  initWeights: string;
  /** A rank checkpoints every this many steps and acks a step's leases only once it is durable (default 1). */
  checkpointEvery?: number;
  /** The node agent respawns a rank that died this many times before giving up (default 3). */
  maxRankRestarts?: number;
  /** The coordinator declares a rank dead after this long without a heartbeat, ms (default 10000). */
  rankDeadAfterMs?: number;
  /**
   * Where rank checkpoints live: 'dir' (default) the run directory; 'nats' the job's JetStream
   * (replicated; for machines that share no directory, see src/job/checkpoint-store.ts).
   */
  checkpointStore?: 'dir' | 'nats';
  /** The time to live of the roles' leader leases, ms (default 4000): a dead machine's roles move to another node after about this long. */
  roleTtlMs?: number;
  /** A data-parallel world steps with short (padded) batches once it waited this long for full ones, ms (default 2000). */
  batchWaitMs?: number;
  /** When a rank is lost: replace it (respawn; the world waits for it) or shrink the world (default replace). */
  onRankLoss?: 'replace' | 'shrink';
  /**
   * Where the samples come from: absent/null, the job's own rollout (steps·batch·dp rows);
   * external, producers of their own (run --rollout external) commit until `producers` of
   * them declared their end and none is still open, or `samples` were committed.
   */
  input?: ExternalInput | null;
  /** The dtype the job's rollout writes aux and last in (default bf16; the rank converts natively). */
  featureDtype?: 'bf16' | 'f32';
}

export interface ExternalInput { kind: 'external'; samples: number | null; producers: number }

export const isExternal = (s: Pick<JobSpec, 'input'>): boolean => s.input?.kind === 'external';

/**
 * The samples the job trains in all, as the job alone knows it: the rollout's rows, an
 * external job's --samples, or null for an external job whose input closes when its
 * producers end (the queue then says how many: CreditReply.budget).
 */
export function sampleBudget(s: JobSpec): number | null {
  return s.input?.kind === 'external' ? s.input.samples : jobRows(s);
}

function validateInput(x: unknown): void {
  if (x === null || typeof x !== 'object' || Array.isArray(x)) throw new InvalidArgumentError('job spec: "input" must be an object or null');
  const o = x as Record<string, unknown>;
  if (o.kind !== 'external') throw new InvalidArgumentError(`job spec: "input.kind" must be "external", got ${JSON.stringify(o.kind)}`);
  if (o.samples !== null && !(Number.isSafeInteger(o.samples) && (o.samples as number) >= 1)) throw new InvalidArgumentError(`job spec: "input.samples" must be a positive integer or null, got ${JSON.stringify(o.samples)}`);
  if (!(Number.isSafeInteger(o.producers) && (o.producers as number) >= 1 && (o.producers as number) <= 100_000)) throw new InvalidArgumentError(`job spec: "input.producers" must be an integer in [1, 100000], got ${JSON.stringify(o.producers)}`);
}

/** The job's sample budget: rows the rollout produces, and the ranks train to the end of. */
export const jobRows = (s: JobSpec): number => s.steps * s.batch * s.dp;

export const checkpointEvery = (s: JobSpec): number => s.checkpointEvery ?? 1;
export const maxRankRestarts = (s: JobSpec): number => s.maxRankRestarts ?? 3;
export const rankDeadAfterMs = (s: JobSpec): number => s.rankDeadAfterMs ?? 10_000;
export const rankLossPolicy = (s: JobSpec): 'replace' | 'shrink' => s.onRankLoss ?? 'replace';

const ID_RE = /^[A-Za-z0-9_-]{1,64}$/;

/**
 * Upper bounds of a job, checked by `draftwire run` before anything starts and by
 * validateJobSpec (a job file cannot bypass them). Each one keeps one machine sane:
 * - dp, tp, sp, worldRanks: `run` forks dp·tp·sp rank processes on this machine (dp: the
 *   epoch record's MAX_DP, which `scale` enforces too).
 * - threads: BLAS threads per rank process (and for the rollout); more than 256 only thrashes.
 * - seqLen, batch, stepTokens: one step holds activations for batch·seqLen tokens (per token
 *   about 4·hidden + ttt·draftVocab floats, and attention scores grow with seqLen²): 65 536
 *   tokens is ~2 GB for the demo preset; a longer sequence than 4096 is beyond every preset.
 * - evalPrompts: each is a greedy decode through target and draft between steps.
 * - leaseMs, batchWaitMs, rankDeadAfterMs: timers; Node's setTimeout fires at once for more
 *   than 2^31-1 ms, and a day is longer than any sane lease or wait.
 */
export const LIMITS = {
  dp: MAX_DP, tp: 64, sp: 64, worldRanks: 256, threads: 256,
  seqLen: 4096, batch: 1024, stepTokens: 65_536, evalPrompts: 1024,
  ms: 86_400_000,
} as const;

function num(o: Record<string, unknown>, key: string, opts: { int?: boolean; min?: number; max?: number; nullable?: boolean } = {}): number {
  const v = o[key];
  if (typeof v !== 'number' || !Number.isFinite(v) || (opts.int && !Number.isInteger(v))) {
    throw new InvalidArgumentError(`job spec: "${key}" must be a finite ${opts.int ? 'integer' : 'number'}, got ${JSON.stringify(v)}`);
  }
  if (opts.min !== undefined && v < opts.min) throw new InvalidArgumentError(`job spec: "${key}" must be >= ${opts.min}, got ${v}`);
  if (opts.max !== undefined && v > opts.max) throw new InvalidArgumentError(`job spec: "${key}" must be <= ${opts.max}, got ${v}`);
  return v;
}

function str(o: Record<string, unknown>, key: string): string {
  const v = o[key];
  if (typeof v !== 'string' || v === '') throw new InvalidArgumentError(`job spec: "${key}" must be a non-empty string`);
  return v;
}

/** Checks a parsed job spec; returns it typed. */
export function validateJobSpec(x: unknown): JobSpec {
  if (x === null || typeof x !== 'object' || Array.isArray(x)) throw new InvalidArgumentError('job spec must be a JSON object');
  const o = x as Record<string, unknown>;
  const job = str(o, 'job');
  if (!ID_RE.test(job)) throw new InvalidArgumentError(`job spec: "job" must match ${ID_RE}, got ${JSON.stringify(job)}`);
  for (const k of ['runDir', 'storeDir', 'storeId', 'initWeights']) str(o, k);
  for (const k of ['promptLen', 'steps', 'maxDeliveries']) num(o, k, { int: true, min: 1 });
  for (const k of ['seqLen', 'batch', 'dp', 'tp', 'sp', 'evalPrompts', 'threads'] as const) num(o, k, { int: true, min: 1, max: LIMITS[k] });
  num(o, 'leaseMs', { int: true, min: 1, max: LIMITS.ms });
  const ranks = (o.dp as number) * (o.tp as number) * (o.sp as number);
  if (ranks > LIMITS.worldRanks) throw new InvalidArgumentError(`job spec: dp·tp·sp (${o.dp}·${o.tp}·${o.sp} = ${ranks} rank processes) must be <= ${LIMITS.worldRanks}`);
  const tokens = (o.batch as number) * (o.seqLen as number);
  if (tokens > LIMITS.stepTokens) throw new InvalidArgumentError(`job spec: batch·seqLen (${o.batch}·${o.seqLen} = ${tokens} tokens per step) must be <= ${LIMITS.stepTokens}`);
  for (const k of ['seed', 'evalEvery']) num(o, k, { int: true, min: 0 });
  num(o, 'lr', { min: 0 });
  num(o, 'weightDecay', { min: 0 });
  num(o, 'temperature', { min: 0 });
  num(o, 'storeHighBytes', { int: true, min: 1 });
  num(o, 'storeLowBytes', { int: true, min: 0, max: o.storeHighBytes as number });
  if (o.clip !== null) num(o, 'clip', { min: 0 });
  if (o.checkpointEvery !== undefined) num(o, 'checkpointEvery', { int: true, min: 1 });
  if (o.backend !== undefined) {
    if (!(DRAFT_BACKENDS as readonly unknown[]).includes(o.backend)) throw new InvalidArgumentError(`job spec: "backend" must be one of ${DRAFT_BACKENDS.join(', ')}, got ${JSON.stringify(o.backend)}`);
    if (o.backend !== 'cpu' && ranks !== 1) throw new InvalidArgumentError(`job spec: backend "${String(o.backend)}" trains one unsharded rank; dp·tp·sp is ${ranks} (the sharded step runs on backend "cpu")`);
  }
  if (o.checkpointStore !== undefined && o.checkpointStore !== 'dir' && o.checkpointStore !== 'nats') throw new InvalidArgumentError(`job spec: "checkpointStore" must be "dir" or "nats", got ${JSON.stringify(o.checkpointStore)}`);
  if (o.roleTtlMs !== undefined) num(o, 'roleTtlMs', { int: true, min: 200, max: LIMITS.ms });
  for (const k of ['rankDeadAfterMs', 'batchWaitMs']) if (o[k] !== undefined) num(o, k, { int: true, min: 1, max: LIMITS.ms });
  if (o.onRankLoss !== undefined && o.onRankLoss !== 'replace' && o.onRankLoss !== 'shrink') throw new InvalidArgumentError(`job spec: "onRankLoss" must be "replace" or "shrink", got ${JSON.stringify(o.onRankLoss)}`);
  if (o.maxRankRestarts !== undefined) num(o, 'maxRankRestarts', { int: true, min: 0 });
  if (o.dataset !== null && typeof o.dataset !== 'string') throw new InvalidArgumentError('job spec: "dataset" must be a path or null');
  if ((o.promptLen as number) >= (o.seqLen as number)) throw new InvalidArgumentError(`job spec: "promptLen" (${o.promptLen}) must be below "seqLen" (${o.seqLen})`);
  if (o.draft === null || typeof o.draft !== 'object') throw new InvalidArgumentError('job spec: "draft" must be a draft config object');
  if (o.target === null || typeof o.target !== 'object') throw new InvalidArgumentError('job spec: "target" must be a target config object');
  const target = o.target as JobTarget;
  if (isHfTarget(target) && (typeof target.dir !== 'string' || target.config === null || typeof target.config !== 'object' || typeof target.weights !== 'string')) {
    throw new InvalidArgumentError('job spec: a Hugging Face "target" needs "dir", "config" and "weights" (its fingerprint)');
  }
  if (o.chat !== undefined && o.chat !== null) validateChat(o.chat, o.seqLen as number, isHfTarget(target));
  if (o.input !== undefined && o.input !== null) validateInput(o.input);
  if (o.featureDtype !== undefined && o.featureDtype !== 'bf16' && o.featureDtype !== 'f32') throw new InvalidArgumentError(`job spec: "featureDtype" must be "bf16" or "f32", got ${JSON.stringify(o.featureDtype)}`);
  if (o.features !== undefined && o.features !== null) validateFeatures(o.features, Boolean(o.chat));
  if (o.initFrom !== undefined && (typeof o.initFrom !== 'string' || !o.chat)) throw new InvalidArgumentError('job spec: "initFrom" must be a draft directory, with a chat job');
  return o as unknown as JobSpec;
}

function validateChat(c: unknown, seqLen: number, hf: boolean): void {
  if (typeof c !== 'object' || c === null) throw new InvalidArgumentError('job spec: "chat" must be an object or null');
  if (!hf) throw new InvalidArgumentError('job spec: a chat dataset needs a Hugging Face target (its tokenizer and chat template)');
  const o = c as Record<string, unknown>;
  for (const k of ['dataset', 'rowsFile', 'vocabFile', 'evalFile']) if (typeof o[k] !== 'string' || o[k] === '') throw new InvalidArgumentError(`job spec: "chat.${k}" must be a non-empty string`);
  for (const k of ['rows', 'evalMaxNew']) if (!Number.isSafeInteger(o[k]) || (o[k] as number) < 1) throw new InvalidArgumentError(`job spec: "chat.${k}" must be a positive integer, got ${JSON.stringify(o[k])}`);
  if (!Number.isSafeInteger(o.evalRows) || (o.evalRows as number) < 0) throw new InvalidArgumentError(`job spec: "chat.evalRows" must be an integer >= 0, got ${JSON.stringify(o.evalRows)}`);
  if (o.maxLen !== seqLen) throw new InvalidArgumentError(`job spec: "chat.maxLen" (${String(o.maxLen)}) must equal "seqLen" (${seqLen})`);
  if (o.onBadRow !== 'skip' && o.onBadRow !== 'fail') throw new InvalidArgumentError(`job spec: "chat.onBadRow" must be "skip" or "fail", got ${JSON.stringify(o.onBadRow)}`);
  if (typeof o.regenerate !== 'boolean') throw new InvalidArgumentError('job spec: "chat.regenerate" must be a boolean');
  if (typeof o.templateVars !== 'object' || o.templateVars === null || !Object.values(o.templateVars).every((v) => typeof v === 'string')) throw new InvalidArgumentError('job spec: "chat.templateVars" must be an object of strings');
  if (!Array.isArray(o.eosTokenIds) || !o.eosTokenIds.every((x) => Number.isSafeInteger(x) && x >= 0)) throw new InvalidArgumentError('job spec: "chat.eosTokenIds" must be an array of token ids');
}

function validateFeatures(f: unknown, chat: boolean): void {
  if (typeof f !== 'object' || f === null) throw new InvalidArgumentError('job spec: "features" must be an object or null');
  if (!chat) throw new InvalidArgumentError('job spec: "features" needs "chat" (the rows, vocabulary and eval prompts prepared from them)');
  const o = f as Record<string, unknown>;
  if (typeof o.dir !== 'string' || o.dir === '') throw new InvalidArgumentError('job spec: "features.dir" must be a non-empty string');
  if (o.layout !== 'capture' && o.layout !== 'speculators') throw new InvalidArgumentError(`job spec: "features.layout" must be "capture" or "speculators", got ${JSON.stringify(o.layout)}`);
  if (o.dataset !== null && (typeof o.dataset !== 'string' || o.dataset === '')) throw new InvalidArgumentError('job spec: "features.dataset" must be a path or null');
}

export function jobFile(runDir: string): string {
  return join(runDir, 'job.json');
}

export function loadJobSpec(path: string): JobSpec {
  let text: string;
  try { text = readFileSync(path, 'utf8'); } catch (e) {
    throw new InvalidArgumentError(`cannot read job spec ${path}: ${(e as NodeJS.ErrnoException).code ?? String(e)}`);
  }
  let parsed: unknown;
  try { parsed = JSON.parse(text); } catch { throw new DecodeError(`job spec ${path} is not valid JSON`); }
  return validateJobSpec(parsed);
}

/** Writes job.json atomically (temp + rename), FILE_MODE. */
export async function saveJobSpec(spec: JobSpec): Promise<string> {
  const path = jobFile(spec.runDir);
  await writeFileAtomic(path, JSON.stringify(spec, null, 2));
  return path;
}
