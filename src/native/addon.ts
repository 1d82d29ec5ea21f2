// The one native contract file: it loads the addon (build/native/Release/draftwire_native.node,
// built by scripts/build-native.js), declares every function the addon exports, and wraps them
// in the typed API the rest of Draftwire uses. Native failures surface as NativeError, bad input
// as InvalidArgumentError, both carrying the caller's JS stack.
import { existsSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { CollectiveError, DraftwireError, InvalidArgumentError, NativeError, UnavailableError } from '../errors.ts';

// ------------------------------------------------------------------------------------------
// Public types

export interface DraftConfig {
  vocab: number; draftVocab: number; hidden: number; heads: number; kvHeads: number;
  intermediate: number; ttt: number; ropeTheta: number; rmsEps: number;
  /** The target's head dim when it is not hidden/heads (Qwen3); absent or 0: hidden/heads. */
  headDim?: number;
  /** The target's RoPE scaling (Llama 3.x: llama3), so the draft rotates positions as it does. */
  ropeScaling?: RopeScalingConfig | null;
}

/** The head dim of a draft or target config: headDim, or hidden/heads. */
export function headDimOf(c: { hidden: number; heads: number; headDim?: number }): number {
  return c.headDim ? c.headDim : c.hidden / c.heads;
}

export const TRAINABLE_NAMES: readonly string[] = Object.freeze([
  'fc', 'n_in', 'n_hid', 'q', 'k', 'v', 'o', 'n_post', 'gate', 'up', 'down', 'n_final', 'lm',
]);
const NORM_NAMES = new Set(['n_in', 'n_hid', 'n_post', 'n_final']);

export interface FrozenTensors { embed: Float32Array; target_head: Float32Array; d2t: Int32Array }

/**
 * ids i32[batch, seq], aux f32[batch, seq, 3H], last f32[batch, seq, H], mask u8[batch, seq].
 * A sharded model takes its rank's slice (src/draft-io.ts sliceBatch / readDraftBatchSlice):
 * batch = its samples, seq = its positions of aux, and ids/last/mask for
 * span = min(seq + ttt, seq·sp − seq·spIdx) positions per sample (the TTT shift).
 */
/**
 * lengths (optional, one per sample, each in [1, global seq]): a sample's true length; the
 * positions past it are padding (any values) and its loss is its own mean over its length, so a
 * padded batch trains exactly as the mean of its samples' steps one by one (docs/model-math.md
 * "Padding"). Absent: every sample fills the whole sequence.
 */
export interface DraftBatch {
  ids: Int32Array; aux: Float32Array; last: Float32Array; mask: Uint8Array; batch: number; seq: number;
  lengths?: Int32Array | null;
}
/** One sample of a SampleBatch: its features as the feature store returned them, `length` = ids.length positions. */
export interface BatchSample {
  ids: Int32Array; mask: Uint8Array;
  /** [length, 3H] and [length, H]: Float32Array for f32, Uint16Array (raw bits) for bf16 and f16. */
  aux: Float32Array | Uint16Array; last: Float32Array | Uint16Array;
  auxDtype: 'f32' | 'bf16' | 'f16'; lastDtype: 'f32' | 'bf16' | 'f16';
}
/**
 * A batch given as its samples (src/job/batch.ts batchOfSamples): `batch` samples in all (those
 * past `samples` are fully-masked padding), each zero-padded to `seq` positions, the whole
 * sequence even on a sharded model (the addon takes this rank's sequence-parallel slice). The
 * addon stacks it off the event loop, upcasting 16-bit features as it copies: the one copy
 * between the store's read and the step. The arrays are read when the step runs, not when it
 * is called: they must not be written until its promise settles.
 */
export interface SampleBatch { samples: BatchSample[]; batch: number; seq: number }
/**
 * lr null: gradients only, no update. clip null or 0: no clipping.
 * samples: the number of samples of the global batch the loss is averaged over (the real samples;
 * the others are padding whose mask is all zero and so contribute nothing), an integer in
 * [1, batch·dp]; the normaliser becomes samples·seq_global instead of batch·dp·seq_global. Lets
 * data-parallel ranks pad their local batches to a common size and still get exactly the loss
 * and gradients of the step over the real samples only. Every rank must pass the same value.
 * null/undefined: every sample, batch·dp.
 */
export interface StepOptions {
  lr: number | null; clip: number | null; weightDecay: number; returnGrads: boolean; samples?: number | null;
}
/** grads are the raw gradients of `loss` (before clipping); step is the optimizer step count after this call. */
export interface StepResult {
  loss: number; gradNorm: number; ploss: Float32Array; acc: Float32Array;
  grads: Record<string, Float32Array> | null; step: number;
}
export interface EvalResult { loss: number; ploss: Float32Array; acc: Float32Array }
export interface OptimizerState { step: number; m: Record<string, Float32Array>; v: Record<string, Float32Array> }

/**
 * A sharded draft model's place in its world (DESIGN.md §3): tp·sp·dp ranks,
 * rank = ((dpIdx·sp) + spIdx)·tp + tpIdx (the mirror of ShardLayout in src/collectives.ts).
 * TP splits heads and kv heads (q/k/v rows, o columns), the MLP width (gate/up rows, down
 * columns) and the draft vocabulary (lm rows); SP splits the sequence; DP splits the samples.
 */
export interface ShardSpec { tp: number; sp: number; dp: number }
export interface ShardInfo extends ShardSpec { rank: number; tpIdx: number; spIdx: number; dpIdx: number; attached: boolean; step: number }
/** Anything that hands out a native communicator handle (src/collectives.ts's Communicator). */
export interface NativeCommunicator { readonly rank: number; readonly size: number; nativeHandle(): object }

export interface TargetConfig {
  vocab: number; hidden: number; heads: number; kvHeads: number; intermediate: number; layers: number;
  ropeTheta: number; rmsEps: number; seed: number;
  /**
   * Shape of the seeded weights (docs/model-math.md "Synthetic target"); absent: TARGET_DEFAULTS.
   * logitScale multiplies Wt (so logits = last·Wtᵀ stay as documented, and frozen() hands the
   * draft the scaled head); zipf skews Wt's row norms by (v+1)^(−zipf) (a few frequent tokens);
   * residualScale multiplies the o/down init (how much each layer changes the residual stream).
   * { logitScale: 1, zipf: 0, residualScale: 1 } is the original near-uniform target.
   */
  logitScale?: number; zipf?: number; residualScale?: number;
  /** Hugging Face shapes (TargetModel.fromWeights; defaults are the synthetic target's): head dim (0/absent: hidden/heads). */
  headDim?: number;
  /** q/k/v projection biases (Qwen2). */
  attentionBias?: boolean;
  /** Per-head RMSNorm of q and k before RoPE (Qwen3). */
  qkNorm?: boolean;
  /** The head is the embedding (no lm_head.weight). */
  tie?: boolean;
  ropeScaling?: RopeScalingConfig | null;
  /** 0-based decoder layers whose outputs form aux, ascending (absent: [1, L/2−1, L−4]). */
  auxLayers?: [number, number, number];
}

/** RoPE frequency scaling (docs/model-math.md "Hugging Face targets"); null: none. */
export interface RopeScalingConfig {
  type: 'linear' | 'llama3'; factor: number;
  /** llama3 only: defaults 1, 4, 8192. */
  lowFreqFactor?: number; highFreqFactor?: number; originalMaxPositionEmbeddings?: number;
}

/** Defaults of the target's shape knobs: greedy token p ≈ 0.45, top 5 ≈ 0.7 (small preset). */
export const TARGET_DEFAULTS: Readonly<{ logitScale: number; zipf: number; residualScale: number }> =
  Object.freeze({ logitScale: 3, zipf: 0.1, residualScale: 0.4 });

export interface GenerateOptions {
  /** 0 or absent: greedy. Else softmax(logits/temperature) sampling. */
  temperature?: number;
  /** Seed of the sampling stream (integer in [0, 2^53], default 0). */
  seed?: number;
}
export interface GenerateBatchOptions {
  temperature?: number;
  /** One sampling seed per prompt (default 0 for each): row i equals generate(prompts[i], maxNew, { seed: seeds[i] }). */
  seeds?: number[];
}
/** The dtype a target returns its features in: f32, or bf16 bit patterns rounded (nearest even) on its worker thread. */
export type FeatureDtype = 'f32' | 'bf16';
export type FeatureArray<D extends FeatureDtype> = D extends 'bf16' ? Uint16Array : Float32Array;
export interface FeatureOptions<D extends FeatureDtype> { featureDtype?: D }
/** A rollout: ids = prompt + maxNew tokens, aux [L, 3H] and last [L, H] of the whole sequence (as forward(ids, 1, L)). */
export interface RolloutResult<D extends FeatureDtype = 'f32'> { ids: Int32Array; aux: FeatureArray<D>; last: FeatureArray<D> }

export interface BlasInfo { config: string; coretype: string | null; threads: number }

// ------------------------------------------------------------------------------------------
// The native boundary (everything the addon exports, with explicit nulls)

interface RawStepOptions {
  lr: number | null; clip: number | null; weightDecay: number; returnGrads: boolean; samples: number | null;
}
interface RawDraftModel {
  step(batch: DraftBatch | SampleBatch, opts: RawStepOptions): Promise<StepResult>;
  evaluate(batch: DraftBatch | SampleBatch): Promise<EvalResult>;
  logits(batch: DraftBatch | SampleBatch): Promise<Float32Array>;
  weights(): Record<string, Float32Array>;
  optimizerState(): OptimizerState;
  loadOptimizerState(s: OptimizerState): void;
  setWeights(w: Record<string, Float32Array>): void;
  close(): void;
  attach(): Promise<void>;
  gather(kind: 'weights' | 'grads' | 'm' | 'v'): Promise<Record<string, Float32Array>>;
  shardInfo(): ShardInfo | null;
}
interface RawTargetModel {
  frozen(): { embed: Float32Array; target_head: Float32Array };
  setWeights(w: Record<string, Float32Array>): void;
  missing(): string[];
  forward(ids: Int32Array, batch: number, seq: number, featureDtype: FeatureDtype): Promise<{ aux: Float32Array | Uint16Array; last: Float32Array | Uint16Array }>;
  generate(prompt: Int32Array, maxNew: number, temperature: number, seed: number): Promise<Int32Array>;
  rollout(prompts: Int32Array[], maxNew: number, temperature: number, seeds: number[] | undefined, features: boolean, featureDtype: FeatureDtype):
    Promise<{ ids: Int32Array[]; aux?: (Float32Array | Uint16Array)[]; last?: (Float32Array | Uint16Array)[] }>;
  close(): void;
}
interface RawBinding {
  DraftModel: new (config: DraftConfig, weights: Record<string, Float32Array | Int32Array>, threads: number | null,
    shard: { comm: object; tp: number; sp: number; dp: number } | null, backend?: DraftBackend) => RawDraftModel;
  TargetModel: new (config: TargetConfig, threads: number | null, weights?: Record<string, Float32Array>) => RawTargetModel;
  acceptLength(draft: RawDraftModel, target: RawTargetModel, prompts: Int32Array[], maxNew: number):
    Promise<{ acceptLength: number; verifySteps: number; generated: number }>;
  blasInfo(): { config: string; coretype: string | null; threads: number; poolThreads: number; gloo: boolean };
  setBlasThreads(n: number): void;
  sgemmBench(n: number, reps: number, threads: number): number;
  fillNormal(out: Float32Array, seed: number, stream: number, mean: number, std: number): void;
  gemmFlops(): number;
  cudaInfo(): CudaInfo;
  cudaHostCheck(seed: number): CudaCheck[];
  cudaDeviceCheck(seed: number): { checks: CudaCheck[]; error: string | null };
  cudaStepBench(config: DraftConfig, options: CudaStepBenchOptions): CudaStepBench & { unavailable: boolean; error: string | null };
}

// The package root is the nearest folder above this file with Draftwire's package.json: the
// same answer from src/native/ under tsx and from dist/src/native/ in the built package.
function packageRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    const pj = join(dir, 'package.json');
    if (existsSync(pj) && (JSON.parse(readFileSync(pj, 'utf8')) as { name?: string }).name === 'draftwire') return dir;
    const up = dirname(dir);
    if (up === dir) throw new NativeError(`cannot find Draftwire's package.json above ${fileURLToPath(import.meta.url)}`);
    dir = up;
  }
}

const addonPath = (): string => process.env.DRAFTWIRE_ADDON ?? join(packageRoot(), 'build', 'native', 'Release', 'draftwire_native.node');

/**
 * Environment OpenBLAS reads when it loads (left alone when already set):
 * - OPENBLAS_CORETYPE: 0.3.21 takes these CPUs for Prescott (6x slower); name the core.
 * - OPENBLAS_THREAD_TIMEOUT=10: idle BLAS threads spin 2^10 cycles, not 2^28, before they
 *   sleep, so they stop competing with the addon's own threads (attention, loss) between
 *   GEMMs (measured: 2-thread step 336–428 ms → 292 ms at the demo size).
 */
function prepareBlasEnv(): void {
  if (!process.env.OPENBLAS_THREAD_TIMEOUT) process.env.OPENBLAS_THREAD_TIMEOUT = '10';
  if (process.env.OPENBLAS_CORETYPE) return;
  let cpuinfo = '';
  try { cpuinfo = readFileSync('/proc/cpuinfo', 'utf8'); } catch { return; }
  const flags = /^flags\s*:(.*)$/m.exec(cpuinfo)?.[1] ?? '';
  if (/\bavx512f\b/.test(flags)) process.env.OPENBLAS_CORETYPE = 'SkylakeX';
  else if (/\bavx2\b/.test(flags)) process.env.OPENBLAS_CORETYPE = 'Haswell';
}

let cached: RawBinding | null = null;
function binding(): RawBinding {
  if (cached) return cached;
  prepareBlasEnv();
  try {
    cached = createRequire(import.meta.url)(addonPath()) as RawBinding;
  } catch (err) {
    throw new NativeError(`cannot load the native addon ${addonPath()} (build it: node scripts/build-native.js): ${
      err instanceof Error ? err.message : String(err)}`, { cause: err });
  }
  return cached;
}

/** Whether the native addon loads here (a package installed without building it has none). */
export function nativeAvailable(): boolean {
  try { binding(); return true; } catch (e) { if (e instanceof NativeError) return false; throw e; }
}

// ------------------------------------------------------------------------------------------
// Errors: native errors carry code INVALID_ARGUMENT, COLLECTIVE (a collective of a sharded
// model failed: a peer died, timed out or the group broke) or NATIVE; re-raise them as
// Draftwire errors whose stack is the caller's (captured before the async hop, sharp-style).

function convert(err: unknown, callerStack: string | undefined): Error {
  if (err instanceof DraftwireError) return err;
  const msg = err instanceof Error ? err.message : String(err);
  const code = typeof err === 'object' && err !== null ? (err as { code?: unknown }).code : undefined;
  const e = code === 'INVALID_ARGUMENT' ? new InvalidArgumentError(msg, { cause: err })
    : code === 'COLLECTIVE' ? new CollectiveError(msg, { cause: err })
      : new NativeError(msg, { cause: err });
  if (callerStack) {
    const frames = callerStack.split('\n').slice(1).join('\n');
    e.stack = `${e.name}: ${msg}\n${frames}`;
  }
  return e;
}

function callSync<T>(fn: () => T): T {
  try { return fn(); } catch (err) { throw convert(err, new Error().stack); }
}

async function callAsync<T>(stackHolder: Error, fn: () => Promise<T>): Promise<T> {
  try { return await fn(); } catch (err) { throw convert(err, stackHolder.stack); }
}

/** One operation at a time per model, in call order (the native side rejects overlap). */
class Serial {
  private tail: Promise<unknown> = Promise.resolve();
  run<T>(fn: () => Promise<T>): Promise<T> {
    const next = this.tail.then(fn, fn);
    this.tail = next.then(() => undefined, () => undefined);
    return next;
  }
}

// ------------------------------------------------------------------------------------------
// Validation

function isPosInt(x: unknown, max = 2 ** 31 - 1): x is number {
  return typeof x === 'number' && Number.isInteger(x) && x >= 1 && x <= max;
}

function needObject(c: unknown, what: string): Record<string, unknown> {
  if (typeof c !== 'object' || c === null || Array.isArray(c)) throw new InvalidArgumentError(`${what} must be an object`);
  return c as Record<string, unknown>;
}

function checkCommon(o: Record<string, unknown>, ints: string[]): void {
  for (const f of ints) {
    if (!isPosInt(o[f])) throw new InvalidArgumentError(`config.${f} must be a positive integer (got ${String(o[f])})`);
  }
  const heads = o.heads as number, kvHeads = o.kvHeads as number, hidden = o.hidden as number;
  if (heads % kvHeads !== 0) throw new InvalidArgumentError(`config.heads (${heads}) must be a multiple of config.kvHeads (${kvHeads})`);
  const hd = o.headDim;
  if (hd !== undefined && hd !== 0) {
    if (!isPosInt(hd, 65536) || hd % 2 !== 0) throw new InvalidArgumentError(`config.headDim must be an even integer in [2, 65536] or 0 (got ${String(hd)})`);
  } else {
    if (hidden % heads !== 0) throw new InvalidArgumentError(`config.hidden (${hidden}) must be a multiple of config.heads (${heads})`);
    if ((hidden / heads) % 2 !== 0) throw new InvalidArgumentError(`config.hidden/config.heads (head dim ${hidden / heads}) must be even`);
  }
  if (typeof o.ropeTheta !== 'number' || !Number.isFinite(o.ropeTheta) || o.ropeTheta <= 0) {
    throw new InvalidArgumentError(`config.ropeTheta must be a positive finite number (got ${String(o.ropeTheta)})`);
  }
  if (typeof o.rmsEps !== 'number' || !(o.rmsEps > 0 && o.rmsEps <= 1)) {
    throw new InvalidArgumentError(`config.rmsEps must be in (0, 1] (got ${String(o.rmsEps)})`);
  }
}

export function validateDraftConfig(c: unknown): DraftConfig {
  const o = needObject(c, 'config');
  checkCommon(o, ['vocab', 'draftVocab', 'hidden', 'heads', 'kvHeads', 'intermediate', 'ttt']);
  if ((o.draftVocab as number) > (o.vocab as number)) {
    throw new InvalidArgumentError(`config.draftVocab (${String(o.draftVocab)}) must be <= config.vocab (${String(o.vocab)})`);
  }
  if ((o.ttt as number) > 64) throw new InvalidArgumentError(`config.ttt must be <= 64 (got ${String(o.ttt)})`);
  const ropeScaling = validateRopeScaling(o.ropeScaling);
  return {
    vocab: o.vocab as number, draftVocab: o.draftVocab as number, hidden: o.hidden as number, heads: o.heads as number,
    kvHeads: o.kvHeads as number, intermediate: o.intermediate as number, ttt: o.ttt as number,
    ropeTheta: o.ropeTheta as number, rmsEps: o.rmsEps as number,
    ...(o.headDim ? { headDim: o.headDim as number } : {}), ...(ropeScaling ? { ropeScaling } : {}),
  };
}

/** A RopeScalingConfig (or null/undefined: none), checked field by field; `what` prefixes the messages. */
export function validateRopeScaling(r: unknown, what = 'config.ropeScaling'): RopeScalingConfig | null {
  if (r === undefined || r === null) return null;
  const o = needObject(r, what);
  if (o.type !== 'linear' && o.type !== 'llama3') throw new InvalidArgumentError(`${what}.type must be 'linear' or 'llama3' (got ${String(o.type)})`);
  const num = (k: string, lo: number, hi: number, def?: number): number => {
    const x = o[k] ?? def;
    if (typeof x !== 'number' || !Number.isFinite(x) || x <= lo || x > hi) throw new InvalidArgumentError(`${what}.${k} must be a number in (${lo}, ${hi}] (got ${String(x)})`);
    return x;
  };
  const factor = num('factor', 0, 1e6);
  if (o.type === 'linear') return { type: 'linear', factor };
  const lowFreqFactor = num('lowFreqFactor', 0, 1e6, 1), highFreqFactor = num('highFreqFactor', 0, 1e6, 4);
  if (!(highFreqFactor > lowFreqFactor)) throw new InvalidArgumentError(`${what}.highFreqFactor (${highFreqFactor}) must exceed lowFreqFactor (${lowFreqFactor})`);
  const omp = o.originalMaxPositionEmbeddings ?? 8192;
  if (!isPosInt(omp, 1e9)) throw new InvalidArgumentError(`${what}.originalMaxPositionEmbeddings must be an integer in [1, 1e9] (got ${String(omp)})`);
  return { type: 'llama3', factor, lowFreqFactor, highFreqFactor, originalMaxPositionEmbeddings: omp };
}

function validateAuxLayers(a: unknown, layers: number): [number, number, number] | undefined {
  if (a === undefined) return undefined;
  if (!Array.isArray(a) || a.length !== 3) throw new InvalidArgumentError('config.auxLayers must be an array of 3 layer indices');
  a.forEach((x, i) => {
    if (!Number.isInteger(x) || x < 0 || x >= layers) throw new InvalidArgumentError(`config.auxLayers[${i}] must be an integer in [0, ${layers}) (got ${String(x)})`);
    if (i > 0 && x <= a[i - 1]) throw new InvalidArgumentError(`config.auxLayers[${i}] (${x}) must be above config.auxLayers[${i - 1}] (${a[i - 1]})`);
  });
  return [a[0], a[1], a[2]] as [number, number, number];
}

function optBool(o: Record<string, unknown>, k: string): boolean {
  if (o[k] !== undefined && typeof o[k] !== 'boolean') throw new InvalidArgumentError(`config.${k} must be a boolean (got ${String(o[k])})`);
  return o[k] === true;
}

export function validateTargetConfig(c: unknown): TargetConfig {
  const o = needObject(c, 'config');
  checkCommon(o, ['vocab', 'hidden', 'heads', 'kvHeads', 'intermediate', 'layers']);
  const auxLayers = validateAuxLayers(o.auxLayers, o.layers as number);
  if (!auxLayers && (o.layers as number) < 8) throw new InvalidArgumentError(`config.layers must be >= 8 (got ${String(o.layers)})`);
  if (typeof o.seed !== 'number' || !Number.isInteger(o.seed) || o.seed < 0 || o.seed > 2 ** 53) {
    throw new InvalidArgumentError(`config.seed must be an integer in [0, 2^53] (got ${String(o.seed)})`);
  }
  const knob = (name: 'logitScale' | 'zipf' | 'residualScale', lo: number, loOpen: boolean, hi: number): number => {
    const x = o[name];
    if (x === undefined) return TARGET_DEFAULTS[name];
    if (typeof x !== 'number' || !Number.isFinite(x) || (loOpen ? x <= lo : x < lo) || x > hi) {
      throw new InvalidArgumentError(`config.${name} must be a number in ${loOpen ? '(' : '['}${lo}, ${hi}] (got ${String(x)})`);
    }
    return x;
  };
  return {
    vocab: o.vocab as number, hidden: o.hidden as number, heads: o.heads as number, kvHeads: o.kvHeads as number,
    intermediate: o.intermediate as number, layers: o.layers as number, ropeTheta: o.ropeTheta as number,
    rmsEps: o.rmsEps as number, seed: o.seed as number,
    logitScale: knob('logitScale', 0, true, 1000), zipf: knob('zipf', 0, false, 8), residualScale: knob('residualScale', 0, false, 16),
    headDim: (o.headDim as number | undefined) ?? 0, attentionBias: optBool(o, 'attentionBias'), qkNorm: optBool(o, 'qkNorm'),
    tie: optBool(o, 'tie'), ropeScaling: validateRopeScaling(o.ropeScaling), ...(auxLayers ? { auxLayers } : {}),
  };
}

function threadsOpt(opts: { threads?: number } | undefined): number | null {
  if (opts?.threads === undefined) return null;
  if (!isPosInt(opts.threads, 256)) throw new InvalidArgumentError(`threads must be an integer in [1, 256] (got ${String(opts.threads)})`);
  return opts.threads;
}

// ------------------------------------------------------------------------------------------
// Draft model

/**
 * Where a draft model's steps run: 'cpu', the CPU step (OpenBLAS, every sharding); 'cuda', the
 * whole step resident on GPU 0 (one unsharded rank); 'resident-host', that same resident step
 * on its CPU backend (what checks it here; slower than 'cpu').
 */
export const DRAFT_BACKENDS = ['cpu', 'cuda', 'resident-host'] as const;
export type DraftBackend = typeof DRAFT_BACKENDS[number];

/** Why `c` cannot be split tp ways (tensor parallelism), or null. */
export function shardConfigError(c: DraftConfig, tp: number): string | null {
  if (c.kvHeads % tp !== 0) return `config.kvHeads (${c.kvHeads}) must be divisible by tp (${tp}): tensor parallelism splits the kv heads (and with them the query heads)`;
  if (c.intermediate % tp !== 0) return `config.intermediate (${c.intermediate}) must be divisible by tp (${tp}): tensor parallelism splits the MLP width`;
  if (c.draftVocab % tp !== 0) return `config.draftVocab (${c.draftVocab}) must be divisible by tp (${tp}): tensor parallelism splits the draft vocabulary`;
  return null;
}

export function draftParamShapes(c: DraftConfig): Record<string, number[]> {
  const cfg = validateDraftConfig(c);
  const { vocab: V, draftVocab: Vd, hidden: H, heads, kvHeads, intermediate: I } = cfg;
  const d = headDimOf(cfg);
  return {
    fc: [H, 3 * H], n_in: [H], n_hid: [H], q: [heads * d, 2 * H], k: [kvHeads * d, 2 * H], v: [kvHeads * d, 2 * H],
    o: [H, heads * d], n_post: [H], gate: [I, H], up: [I, H], down: [H, I], n_final: [H], lm: [Vd, H],
    embed: [V, H], target_head: [V, H], d2t: [Vd],
  };
}

/**
 * Deterministic initial weights (splitmix64 + Box–Muller in the addon): norms 1, other
 * trainable tensors N(0, 0.02). Without `frozen`: embed N(0, 1), target_head N(0, 1/√H),
 * d2t = [0, Vd). With `frozen` its arrays are used as they are (not copied).
 */
export function initDraftWeights(c: DraftConfig, seed: number, frozen?: FrozenTensors): Record<string, Float32Array | Int32Array> {
  const cfg = validateDraftConfig(c);
  if (!Number.isInteger(seed) || seed < 0 || seed > 2 ** 53) throw new InvalidArgumentError(`seed must be an integer in [0, 2^53] (got ${seed})`);
  const shapes = draftParamShapes(cfg);
  const size = (name: string): number => shapes[name]!.reduce((a, b) => a * b, 1);
  const nat = binding();
  const out: Record<string, Float32Array | Int32Array> = {};
  TRAINABLE_NAMES.forEach((name, i) => {
    const a = new Float32Array(size(name));
    if (NORM_NAMES.has(name)) a.fill(1);
    else nat.fillNormal(a, seed, i + 1, 0, 0.02);
    out[name] = a;
  });
  if (frozen) {
    for (const [name, ctor] of [['embed', Float32Array], ['target_head', Float32Array], ['d2t', Int32Array]] as const) {
      const t = frozen[name];
      if (!(t instanceof ctor)) throw new InvalidArgumentError(`frozen.${name} must be a ${ctor.name}`);
      if (t.length !== size(name)) throw new InvalidArgumentError(`frozen.${name} has ${t.length} elements, expected ${size(name)} ([${shapes[name]!.join(', ')}])`);
      out[name] = t;
    }
  } else {
    const e = new Float32Array(size('embed'));
    nat.fillNormal(e, seed, 100, 0, 1);
    const t = new Float32Array(size('target_head'));
    nat.fillNormal(t, seed, 101, 0, 1 / Math.sqrt(cfg.hidden));
    const d2t = new Int32Array(cfg.draftVocab);
    for (let j = 0; j < d2t.length; j++) d2t[j] = j;
    out.embed = e; out.target_head = t; out.d2t = d2t;
  }
  return out;
}

export class DraftModel {
  private raw: RawDraftModel | null;
  private readonly serial = new Serial();
  readonly config: DraftConfig;

  private constructor(raw: RawDraftModel, config: DraftConfig, readonly backend: DraftBackend = 'cpu') { this.raw = raw; this.config = config; }

  /**
   * Validates every tensor (length, finite values, d2t range and distinctness). opts.backend
   * picks where step() and evaluate() run (DRAFT_BACKENDS); the resident ones keep the state in
   * the backend between steps, and weights(), optimizerState() and checkpoints copy it back.
   * 'cuda' throws UnavailableError (naming why) where no GPU is usable.
   */
  static create(config: DraftConfig, weights: Record<string, Float32Array | Int32Array>,
    opts?: { threads?: number; backend?: DraftBackend }): DraftModel {
    const cfg = validateDraftConfig(config);
    const threads = threadsOpt(opts);
    const backend = opts?.backend ?? 'cpu';
    if (!(DRAFT_BACKENDS as readonly string[]).includes(backend)) throw new InvalidArgumentError(`backend must be one of ${DRAFT_BACKENDS.join(', ')} (got ${String(backend)})`);
    if (backend === 'cuda') {
      const info = binding().cudaInfo();
      if (info.gpus.length === 0) throw new UnavailableError(`backend 'cuda' is not available here: ${info.error ?? 'no GPU'}`);
    }
    const w = needObject(weights, 'weights') as Record<string, Float32Array | Int32Array>;
    const nat = binding();
    return new DraftModel(callSync(() => new nat.DraftModel(cfg, w, threads, null, backend)), cfg, backend);
  }

  /**
   * One rank of a sharded world (collective: every rank of `comm` calls it with the same
   * layout). `weights` are full-shape (as for create); world rank 0's are broadcast to all
   * and each rank keeps its shards. Then step() takes this rank's slice of the batch
   * (sliceBatch in src/draft-io.ts) and returns the global loss, metrics and gradient norm;
   * returnGrads gathers full-shape gradients; gatherWeights()/gatherOptimizerState() give the
   * full tensors. Every call on a sharded model is a collective: all ranks make the same
   * calls in the same order. A failed collective rejects with CollectiveError and leaves the
   * model unusable (rebuild the world).
   */
  static async createSharded(config: DraftConfig, weights: Record<string, Float32Array | Int32Array>, comm: NativeCommunicator,
    layout: ShardSpec, opts?: { threads?: number }): Promise<DraftModel> {
    const holder = new Error();
    return callAsync(holder, async () => {
      const cfg = validateDraftConfig(config);
      const threads = threadsOpt(opts);
      const w = needObject(weights, 'weights') as Record<string, Float32Array | Int32Array>;
      const l = needObject(layout, 'layout');
      for (const k of ['tp', 'sp', 'dp'] as const) {
        if (!isPosInt(l[k], 1 << 20)) throw new InvalidArgumentError(`layout.${k} must be a positive integer (got ${String(l[k])})`);
      }
      const { tp, sp, dp } = l as unknown as ShardSpec;
      if (tp * sp * dp !== comm.size) throw new InvalidArgumentError(`layout tp·sp·dp = ${tp}·${sp}·${dp} = ${tp * sp * dp} must equal the communicator's size ${comm.size}`);
      const why = shardConfigError(cfg, tp);
      if (why) throw new InvalidArgumentError(why);
      const nat = binding();
      const raw = new nat.DraftModel(cfg, w, threads, { comm: comm.nativeHandle(), tp, sp, dp });
      try {
        await raw.attach();
      } catch (e) {
        raw.close();
        throw e;
      }
      return new DraftModel(raw, cfg);
    });
  }

  get ttt(): number { return this.config.ttt; }

  private handle(): RawDraftModel {
    if (!this.raw) throw new NativeError('DraftModel is closed');
    return this.raw;
  }

  /** Forward + backward (+ AdamW when opts.lr is a number), off the event loop. */
  step(batch: DraftBatch | SampleBatch, opts: StepOptions): Promise<StepResult> {
    const holder = new Error();
    return this.serial.run(() => callAsync(holder, async () => {
      const o = needObject(opts, 'options');
      const raw: RawStepOptions = {
        lr: o.lr === undefined ? null : o.lr as number | null,
        clip: o.clip === undefined ? null : o.clip as number | null,
        weightDecay: o.weightDecay === undefined ? 0 : o.weightDecay as number,
        returnGrads: o.returnGrads === undefined ? false : o.returnGrads as boolean,
        samples: o.samples === undefined ? null : o.samples as number | null,
      };
      return this.handle().step(batch, raw);
    }));
  }

  /** Forward only: loss, per-step loss and accuracy. */
  evaluate(batch: DraftBatch | SampleBatch): Promise<EvalResult> {
    const holder = new Error();
    return this.serial.run(() => callAsync(holder, async () => this.handle().evaluate(batch)));
  }

  /** Forward only: every logit, laid out [K, B, T, Vd] (for tests and debugging). */
  logits(batch: DraftBatch | SampleBatch): Promise<Float32Array> {
    const holder = new Error();
    return this.serial.run(() => callAsync(holder, async () => this.handle().logits(batch)));
  }

  /** This rank's place in its world, or null for an unsharded model. */
  get shard(): ShardInfo | null { return callSync(() => this.handle().shardInfo()); }

  /** Copies of the trainable weights (unsharded models; sharded: gatherWeights()). */
  weights(): Record<string, Float32Array> { return callSync(() => this.handle().weights()); }

  /** Full-shape trainable weights; on a sharded model a collective over its TP group. */
  gatherWeights(): Promise<Record<string, Float32Array>> {
    const holder = new Error();
    return this.serial.run(() => callAsync(holder, async () => this.handle().gather('weights')));
  }

  /** Full-shape gradients of the last step; on a sharded model a collective over its TP group. */
  gatherGrads(): Promise<Record<string, Float32Array>> {
    const holder = new Error();
    return this.serial.run(() => callAsync(holder, async () => this.handle().gather('grads')));
  }

  /** Full-shape AdamW state; on a sharded model a collective over its TP group. */
  gatherOptimizerState(): Promise<OptimizerState> {
    const holder = new Error();
    return this.serial.run(() => callAsync(holder, async () => {
      const h = this.handle();
      const info = h.shardInfo();
      if (!info) return h.optimizerState();
      const m = await h.gather('m');
      const v = await h.gather('v');
      return { step: h.shardInfo()!.step, m, v };
    }));
  }
  optimizerState(): OptimizerState { return callSync(() => this.handle().optimizerState()); }
  loadOptimizerState(s: OptimizerState): void { callSync(() => this.handle().loadOptimizerState(s)); }
  /** Replaces any subset of the trainable weights (all checked before any is written). */
  setWeights(w: Record<string, Float32Array>): void { callSync(() => this.handle().setWeights(w)); }

  /** Frees the model (an operation in flight finishes first, on its own copy of the state). */
  close(): void {
    this.raw?.close();
    this.raw = null;
  }

  /** @internal */
  rawHandle(): RawDraftModel { return this.handle(); }
  /** @internal */
  queue<T>(fn: () => Promise<T>): Promise<T> { return this.serial.run(fn); }
}

// ------------------------------------------------------------------------------------------
// Target: the seeded synthetic one, or one from caller weights (Hugging Face names, src/hf/)

export class TargetModel {
  private raw: RawTargetModel | null;
  private readonly serial = new Serial();
  readonly config: TargetConfig;

  private constructor(raw: RawTargetModel, config: TargetConfig) { this.raw = raw; this.config = config; }

  /** Seeded Llama-style model (layers >= 8); the weights are generated here, deterministically. */
  static create(config: TargetConfig, opts?: { threads?: number }): TargetModel {
    const cfg = validateTargetConfig(config);
    const threads = threadsOpt(opts);
    const nat = binding();
    return new TargetModel(callSync(() => new nat.TargetModel(cfg, threads)), cfg);
  }

  /**
   * A model over the given weights (Hugging Face tensor names: native/src/napi/napi_models.h),
   * every one of them; copied in synchronously (a memcpy per tensor).
   */
  static fromWeights(config: TargetConfig, weights: Record<string, Float32Array>, opts?: { threads?: number }): TargetModel {
    const cfg = validateTargetConfig(config);
    const threads = threadsOpt(opts);
    const nat = binding();
    const m = new TargetModel(callSync(() => new nat.TargetModel(cfg, threads, needObject(weights, 'weights') as Record<string, Float32Array>)), cfg);
    m.checkComplete();
    return m;
  }

  /** fromWeights, the weights arriving in parts (e.g. one layer at a time, each dropped once copied in). */
  static async fromWeightParts(config: TargetConfig, parts: AsyncIterable<Record<string, Float32Array>>, opts?: { threads?: number }): Promise<TargetModel> {
    const cfg = validateTargetConfig(config);
    const threads = threadsOpt(opts);
    const nat = binding();
    const m = new TargetModel(callSync(() => new nat.TargetModel(cfg, threads, {})), cfg);
    try {
      for await (const w of parts) callSync(() => m.handle().setWeights(w));
      m.checkComplete();
    } catch (err) {
      m.close();
      throw err;
    }
    return m;
  }

  private checkComplete(): void {
    const miss = this.handle().missing();
    if (miss.length > 0) {
      this.close();
      throw new InvalidArgumentError(`weights: missing ${miss.slice(0, 3).join(', ')}${miss.length > 3 ? ` and ${miss.length - 3} more` : ''}`);
    }
  }

  private handle(): RawTargetModel {
    if (!this.raw) throw new NativeError('TargetModel is closed');
    return this.raw;
  }

  /** Copies of E and Wt (lm_head, or E when tied), to be shared with the draft as its frozen tensors. */
  frozen(): { embed: Float32Array; target_head: Float32Array } { return callSync(() => this.handle().frozen()); }

  /** aux [batch, seq, 3H] and last [batch, seq, H] of `batch` sequences of `seq` tokens (f32, or bf16 with featureDtype). */
  forward<D extends FeatureDtype = 'f32'>(ids: Int32Array, batch: number, seq: number, opts?: FeatureOptions<D>): Promise<{ aux: FeatureArray<D>; last: FeatureArray<D> }> {
    const holder = new Error();
    return this.serial.run(() => callAsync(holder, async () => this.handle().forward(ids, batch, seq, featureDtypeOf(opts)) as Promise<{ aux: FeatureArray<D>; last: FeatureArray<D> }>));
  }

  /** prompt + maxNew tokens (KV-cached decoding); greedy when temperature is 0 or absent. */
  generate(prompt: Int32Array, maxNew: number, opts?: GenerateOptions): Promise<Int32Array> {
    const holder = new Error();
    return this.serial.run(() => callAsync(holder, async () =>
      this.handle().generate(prompt, maxNew, opts?.temperature ?? 0, opts?.seed ?? 0)));
  }

  /** Several prompts decoded together (their rows share every GEMM); row i = generate(prompts[i], maxNew, { temperature, seed: seeds[i] }). */
  generateBatch(prompts: Int32Array[], maxNew: number, opts?: GenerateBatchOptions): Promise<Int32Array[]> {
    const holder = new Error();
    return this.serial.run(() => callAsync(holder, async () => {
      const o = batchOpts(prompts, opts);
      return (await this.handle().rollout(prompts, maxNew, o.temperature, o.seeds, false, 'f32')).ids;
    }));
  }

  /**
   * generate() and forward() of the result in one pass: the final token is fed too, and aux/last
   * of the whole sequence come from the decoding pass itself (no second forward).
   */
  async rollout(prompt: Int32Array, maxNew: number, opts?: GenerateOptions): Promise<RolloutResult> {
    if (!(prompt instanceof Int32Array)) throw new InvalidArgumentError('prompt must be an Int32Array');
    const seed = opts?.seed;
    return (await this.rolloutBatch([prompt], maxNew, { temperature: opts?.temperature, seeds: seed === undefined ? undefined : [seed] }))[0]!;
  }

  /** rollout() of several prompts decoded together; result i = rollout(prompts[i], maxNew, { temperature, seed: seeds[i] }). */
  rolloutBatch<D extends FeatureDtype = 'f32'>(prompts: Int32Array[], maxNew: number, opts?: GenerateBatchOptions & FeatureOptions<D>): Promise<RolloutResult<D>[]> {
    const holder = new Error();
    return this.serial.run(() => callAsync(holder, async () => {
      const o = batchOpts(prompts, opts);
      const r = await this.handle().rollout(prompts, maxNew, o.temperature, o.seeds, true, featureDtypeOf(opts));
      return r.ids.map((ids, i) => ({ ids, aux: r.aux![i]! as FeatureArray<D>, last: r.last![i]! as FeatureArray<D> }));
    }));
  }

  close(): void {
    this.raw?.close();
    this.raw = null;
  }

  /** @internal */
  rawHandle(): RawTargetModel { return this.handle(); }
  /** @internal */
  queue<T>(fn: () => Promise<T>): Promise<T> { return this.serial.run(fn); }
}

function featureDtypeOf(opts: { featureDtype?: unknown } | undefined): FeatureDtype {
  const d = opts?.featureDtype ?? 'f32';
  if (d !== 'f32' && d !== 'bf16') throw new InvalidArgumentError(`featureDtype must be "f32" or "bf16", got ${describeArg(d)}`);
  return d;
}

function batchOpts(prompts: unknown, opts: GenerateBatchOptions | undefined): { temperature: number; seeds: number[] | undefined } {
  if (!Array.isArray(prompts)) throw new InvalidArgumentError('prompts must be an array of Int32Array');
  if (opts !== undefined && (typeof opts !== 'object' || opts === null)) throw new InvalidArgumentError('options must be an object');
  const seeds = opts?.seeds;
  if (seeds !== undefined && !Array.isArray(seeds)) throw new InvalidArgumentError('opts.seeds must be an array of integers (one per prompt)');
  return { temperature: opts?.temperature ?? 0, seeds };
}

/**
 * Greedy speculative decoding of each prompt for maxNew tokens with draft.ttt proposals per
 * verify step (docs/model-math.md "Accept length"). generated counts the tokens produced
 * (it may pass maxNew by up to ttt per prompt).
 */
export function acceptLength(draft: DraftModel, target: TargetModel, prompts: Int32Array[], opts: { maxNew: number }):
  Promise<{ acceptLength: number; verifySteps: number; generated: number }> {
  const holder = new Error();
  return draft.queue(() => target.queue(() => callAsync(holder, async () => {
    if (!isPosInt(opts?.maxNew, 2 ** 20)) throw new InvalidArgumentError(`opts.maxNew must be an integer in [1, 2^20] (got ${String(opts?.maxNew)})`);
    return binding().acceptLength(draft.rawHandle(), target.rawHandle(), prompts, opts.maxNew);
  })));
}

// ------------------------------------------------------------------------------------------
// BLAS

export function blasInfo(): BlasInfo {
  const i = binding().blasInfo();
  return { config: i.config, coretype: i.coretype, threads: i.threads };
}

/** Threads for OpenBLAS and for the addon's elementwise pool (models created with `threads` override it per call). */
export function setBlasThreads(n: number): void {
  if (!isPosInt(n, 256)) throw new InvalidArgumentError(`threads must be an integer in [1, 256] (got ${String(n)})`);
  binding().setBlasThreads(n);
}

/** GFLOP/s of `reps` n×n×n SGEMMs on `threads` threads (synchronous; for benchmarks). */
export function sgemmBench(n: number, reps: number, threads: number): number {
  return callSync(() => binding().sgemmBench(n, reps, threads));
}

/** FLOPs executed by the addon's GEMM wrappers since it loaded (2·M·N·K per product). */
export function gemmFlops(): number { return binding().gemmFlops(); }

// ------------------------------------------------------------------------------------------
// CUDA (native/src/cuda, native/src/napi/napi_cuda.cc): what the addon can do with a GPU here,
// and the checks of the CUDA kernels' arithmetic (on the CPU) and of the kernels (on a GPU).

export interface CudaInfo {
  /** Compiled with nvcc (the CUDA objects are in the addon). */
  built: boolean;
  /** Device code compiled in ("sm_90"); null when not built. */
  arch: string | null;
  runtimeVersion: number | null;
  /** The driver's CUDA version; null when this machine has no driver. */
  driverVersion: number | null;
  gpus: { name: string; computeCapability: string; sms: number; memoryGiB: number }[];
  /** Why no GPU is usable; null when one is. */
  error: string | null;
  /** cuBLAS and NCCL, loaded at run time (DRAFTWIRE_CUDA_LIBS: directories to search first). */
  cublas: { path: string; version: string } | null;
  cublasError: string | null;
  nccl: { path: string; version: number } | null;
  ncclError: string | null;
}
/** One check: err = max |got − want| / max |want| over `values` outputs; it passes when err ≤ tol. */
export interface CudaCheck { name: string; err: number; tol: number; values: number; note: string | null }

export function cudaInfo(): CudaInfo { return binding().cudaInfo(); }

/** Every CUDA kernel body (native/src/cuda/bodies.h) run on the CPU against the CPU step's layer functions. */
export function cudaHostCheck(seed: number): CudaCheck[] {
  if (!Number.isSafeInteger(seed) || seed < 0) throw new InvalidArgumentError(`seed must be a non-negative safe integer (got ${String(seed)})`);
  return callSync(() => binding().cudaHostCheck(seed));
}

/**
 * Every CUDA kernel, the cuBLAS GEMMs and a 1-rank NCCL all-reduce on GPU 0, against the CPU
 * step. Throws UnavailableError (naming why) where no GPU or no cuBLAS is usable.
 */
export function cudaDeviceCheck(seed: number): CudaCheck[] {
  if (!Number.isSafeInteger(seed) || seed < 0) throw new InvalidArgumentError(`seed must be a non-negative safe integer (got ${String(seed)})`);
  const r = callSync(() => binding().cudaDeviceCheck(seed));
  if (r.error !== null && r.checks.length === 0) throw new UnavailableError(`no CUDA device check here: ${r.error}`);
  if (r.error !== null) throw new NativeError(`the CUDA device check stopped after ${r.checks.length} checks: ${r.error}`, { detail: { checks: r.checks } });
  return r.checks;
}

export interface CudaStepBenchOptions { batch: number; seq: number; reps: number; warmup: number; bf16?: boolean }
/** The resident CUDA step's speed: ms per training step (forward, backward, AdamW) and tokens/s. */
export interface CudaStepBench { msPerStep: number; tokensPerSec: number; setupMs: number; loss: number; deviceGiB: number }

/**
 * Times the whole training step resident on GPU 0 (native/src/step over CUDA) on a random model
 * of `config` and a random batch. Throws UnavailableError (naming why) where no GPU is usable.
 */
export function cudaStepBench(config: DraftConfig, options: CudaStepBenchOptions): CudaStepBench {
  const c = validateDraftConfig(config);
  const r = callSync(() => binding().cudaStepBench(c, options));
  if (r.unavailable) throw new UnavailableError(`no CUDA step here: ${r.error ?? 'unknown reason'}`);
  if (r.error !== null) throw new NativeError(`the CUDA step benchmark failed: ${r.error}`);
  return { msPerStep: r.msPerStep, tokensPerSec: r.tokensPerSec, setupMs: r.setupMs, loss: r.loss, deviceGiB: r.deviceGiB };
}

// ------------------------------------------------------------------------------------------
// collectives (native/src/napi/napi_comm.cc; wrapped by src/native/collectives.ts)

/** Store callback the native rendezvous calls: 'get' resolves null when the key is absent after timeoutMs. */
export type RawCommStoreFn = (op: 'set' | 'get' | 'del', key: string, value: Uint8Array | null, timeoutMs: number) => Promise<Uint8Array | null>;
export interface RawCommConnectOptions {
  rank: number; size: number; prefix: string; timeoutMs?: number; connectTimeoutMs?: number; hostname?: string; iface?: string;
}
/** A native communicator handle (CommHandle). Errors carry code COLLECTIVE, INVALID_ARGUMENT or NATIVE. */
export interface RawCommHandle {
  info(): { rank: number; size: number } | null;
  allReduce(buf: Float32Array | Float64Array, op: 'sum' | 'max'): Promise<void>;
  allGather(buf: Float32Array): Promise<Float32Array>;
  reduceScatter(buf: Float32Array): Promise<Float32Array>;
  broadcast(buf: Float32Array, root: number): Promise<void>;
  barrier(): Promise<void>;
  subgroup(ranks: number[], tag: string): Promise<RawCommHandle>;
  close(): Promise<void>;
  /** Breaks a ThreadComm group (tests); false for a Gloo communicator. */
  abort(why: string): boolean;
}
export interface RawCollectives {
  commConnect(opts: RawCommConnectOptions, store: RawCommStoreFn): Promise<RawCommHandle>;
  commThreadWorld(n: number, timeoutMs: number): RawCommHandle[];
  memcpyBench(bytes: number, reps: number): number;
  blasInfo(): { gloo: boolean };
}
/** The collectives part of the addon. */
export function collectivesBinding(): RawCollectives { return binding() as unknown as RawCollectives; }

// ------------------------------------------------------------------------------------------
// 16-bit float features (native/src/kernels/convert.cc): samples may store aux/last as bf16 or f16

export type HalfDtype = 'bf16' | 'f16';
interface RawConvert {
  upcastToF32(src: Uint16Array, dtype: HalfDtype, dst: Float32Array, dstOffset: number, portable: boolean): void;
  convertInfo(): { f16c: boolean };
}
const convertBinding = (): RawConvert => binding() as unknown as RawConvert;

/**
 * Writes `src` (raw bf16 or f16 words) as f32 into dst[dstOffset, dstOffset + src.length),
 * natively at memory speed. bf16 is exact (a shift); f16 is exact too, subnormals, ±inf and
 * NaN included (a NaN keeps sign and payload, quieted). Synchronous: about 1 ms for a step's
 * batch (bench/convert.bench.ts). `portable` skips the F16C path (tests compare both).
 */
export function upcastToF32(src: Uint16Array, dtype: HalfDtype, dst: Float32Array, dstOffset = 0, opts: { portable?: boolean } = {}): void {
  if (!(src instanceof Uint16Array)) throw new InvalidArgumentError(`upcastToF32: src must be a Uint16Array (the raw 16-bit words), got ${describeArg(src)}`);
  if (dtype !== 'bf16' && dtype !== 'f16') throw new InvalidArgumentError(`upcastToF32: dtype must be "bf16" or "f16", got ${describeArg(dtype)}`);
  if (!(dst instanceof Float32Array)) throw new InvalidArgumentError(`upcastToF32: dst must be a Float32Array, got ${describeArg(dst)}`);
  if (!Number.isSafeInteger(dstOffset) || dstOffset < 0) throw new InvalidArgumentError(`upcastToF32: dstOffset must be a non-negative integer, got ${describeArg(dstOffset)}`);
  if (dstOffset + src.length > dst.length) {
    throw new InvalidArgumentError(`upcastToF32: dstOffset ${dstOffset} + src.length ${src.length} exceeds dst.length ${dst.length}`);
  }
  callSync(() => convertBinding().upcastToF32(src, dtype, dst, dstOffset, opts.portable === true));
}

/** Which f16 path this CPU takes (F16C instructions or the portable loop). */
export function convertInfo(): { f16c: boolean } {
  return { f16c: convertBinding().convertInfo().f16c };
}

// ------------------------------------------------------------------------------------------
// Block checksums (native/src/napi/napi_hash.cc, BLAKE3 from native/third_party/blake3)

interface RawHash {
  blake3Blocks(data: Uint8Array, lens: number[]): Promise<Uint8Array>;
  blake3BlocksSync(data: Uint8Array, lens: number[]): Uint8Array;
}
const hashBinding = (): RawHash => binding() as unknown as RawHash;

function checkBlocks(data: Uint8Array, lens: readonly number[]): void {
  if (!(data instanceof Uint8Array)) throw new InvalidArgumentError(`blake3Blocks: data must be a Uint8Array, got ${describeArg(data)}`);
  let total = 0;
  for (const n of lens) {
    if (!Number.isSafeInteger(n) || n < 0) throw new InvalidArgumentError(`blake3Blocks: block lengths must be non-negative integers, got ${describeArg(n)}`);
    total += n;
  }
  if (total > data.byteLength) throw new InvalidArgumentError(`blake3Blocks: the block lengths add up to ${total} bytes, more than data's ${data.byteLength}`);
}

/**
 * BLAKE3 (32-byte digests) of consecutive blocks of `data`: [0, lens[0]), then the next lens[1]
 * bytes, and so on. Runs off the event loop, blocks spread over the kernel threads; `data` must
 * not change until the promise settles. Returns 32 × lens.length bytes, block b at 32·b.
 */
export async function blake3Blocks(data: Uint8Array, lens: readonly number[]): Promise<Uint8Array> {
  checkBlocks(data, lens);
  return callAsync(new Error(), () => hashBinding().blake3Blocks(data, [...lens]));
}

/** blake3Blocks on the calling thread: only for small spans (the hop off the loop costs more). */
export function blake3BlocksSync(data: Uint8Array, lens: readonly number[]): Uint8Array {
  checkBlocks(data, lens);
  return callSync(() => hashBinding().blake3BlocksSync(data, [...lens]));
}

function describeArg(x: unknown): string {
  if (ArrayBuffer.isView(x)) return `${x.constructor.name}`;
  if (typeof x === 'string') return JSON.stringify(x.slice(0, 20));
  return x === null ? 'null' : typeof x === 'object' ? 'an object' : `${typeof x} ${String(x)}`;
}
