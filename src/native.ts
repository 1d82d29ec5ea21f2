// The one native contract file: it loads the addon (build/native/Release/draftwire_native.node,
// built by scripts/build-native.js), declares every function the addon exports, and wraps them
// in the typed API the rest of Draftwire uses. Native failures surface as NativeError, bad input
// as InvalidArgumentError, both carrying the caller's JS stack.
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { DraftwireError, InvalidArgumentError, NativeError } from './errors.ts';

// ------------------------------------------------------------------------------------------
// Public types

export interface DraftConfig {
  vocab: number; draftVocab: number; hidden: number; heads: number; kvHeads: number;
  intermediate: number; ttt: number; ropeTheta: number; rmsEps: number;
}

export const TRAINABLE_NAMES: readonly string[] = Object.freeze([
  'fc', 'n_in', 'n_hid', 'q', 'k', 'v', 'o', 'n_post', 'gate', 'up', 'down', 'n_final', 'lm',
]);
const NORM_NAMES = new Set(['n_in', 'n_hid', 'n_post', 'n_final']);

export interface FrozenTensors { embed: Float32Array; target_head: Float32Array; d2t: Int32Array }

export interface DraftBatch {
  ids: Int32Array; aux: Float32Array; last: Float32Array; mask: Uint8Array; batch: number; seq: number;
}
/** lr null: gradients only, no update. clip null or 0: no clipping. */
export interface StepOptions { lr: number | null; clip: number | null; weightDecay: number; returnGrads: boolean }
/** grads are the raw gradients of `loss` (before clipping); step is the optimizer step count after this call. */
export interface StepResult {
  loss: number; gradNorm: number; ploss: Float32Array; acc: Float32Array;
  grads: Record<string, Float32Array> | null; step: number;
}
export interface EvalResult { loss: number; ploss: Float32Array; acc: Float32Array }
export interface OptimizerState { step: number; m: Record<string, Float32Array>; v: Record<string, Float32Array> }

export interface TargetConfig {
  vocab: number; hidden: number; heads: number; kvHeads: number; intermediate: number; layers: number;
  ropeTheta: number; rmsEps: number; seed: number;
}

export interface BlasInfo { config: string; coretype: string | null; threads: number }

// ------------------------------------------------------------------------------------------
// The native boundary (everything the addon exports, with explicit nulls)

interface RawStepOptions { lr: number | null; clip: number | null; weightDecay: number; returnGrads: boolean }
interface RawDraftModel {
  step(batch: DraftBatch, opts: RawStepOptions): Promise<StepResult>;
  evaluate(batch: DraftBatch): Promise<EvalResult>;
  logits(batch: DraftBatch): Promise<Float32Array>;
  weights(): Record<string, Float32Array>;
  optimizerState(): OptimizerState;
  loadOptimizerState(s: OptimizerState): void;
  setWeights(w: Record<string, Float32Array>): void;
  close(): void;
}
interface RawTargetModel {
  frozen(): { embed: Float32Array; target_head: Float32Array };
  forward(ids: Int32Array, batch: number, seq: number): Promise<{ aux: Float32Array; last: Float32Array }>;
  generate(prompt: Int32Array, maxNew: number, temperature: number, seed: number): Promise<Int32Array>;
  close(): void;
}
interface RawBinding {
  DraftModel: new (config: DraftConfig, weights: Record<string, Float32Array | Int32Array>, threads: number | null) => RawDraftModel;
  TargetModel: new (config: TargetConfig, threads: number | null) => RawTargetModel;
  acceptLength(draft: RawDraftModel, target: RawTargetModel, prompts: Int32Array[], maxNew: number):
    Promise<{ acceptLength: number; verifySteps: number; generated: number }>;
  blasInfo(): { config: string; coretype: string | null; threads: number; poolThreads: number; gloo: boolean };
  setBlasThreads(n: number): void;
  sgemmBench(n: number, reps: number, threads: number): number;
  fillNormal(out: Float32Array, seed: number, stream: number, mean: number, std: number): void;
  gemmFlops(): number;
}

const ADDON_PATH = join(dirname(fileURLToPath(import.meta.url)), '..', 'build', 'native', 'Release', 'draftwire_native.node');

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
    cached = createRequire(import.meta.url)(ADDON_PATH) as RawBinding;
  } catch (err) {
    throw new NativeError(`cannot load the native addon ${ADDON_PATH} (build it: node scripts/build-native.js): ${
      err instanceof Error ? err.message : String(err)}`, { cause: err });
  }
  return cached;
}

// ------------------------------------------------------------------------------------------
// Errors: native errors carry code INVALID_ARGUMENT or NATIVE; re-raise them as Draftwire
// errors whose stack is the caller's (captured before the async hop, sharp-style).

function convert(err: unknown, callerStack: string | undefined): Error {
  if (err instanceof DraftwireError) return err;
  const msg = err instanceof Error ? err.message : String(err);
  const code = typeof err === 'object' && err !== null ? (err as { code?: unknown }).code : undefined;
  const e = code === 'INVALID_ARGUMENT' ? new InvalidArgumentError(msg, { cause: err }) : new NativeError(msg, { cause: err });
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
  if (hidden % heads !== 0) throw new InvalidArgumentError(`config.hidden (${hidden}) must be a multiple of config.heads (${heads})`);
  if ((hidden / heads) % 2 !== 0) throw new InvalidArgumentError(`config.hidden/config.heads (head dim ${hidden / heads}) must be even`);
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
  return {
    vocab: o.vocab as number, draftVocab: o.draftVocab as number, hidden: o.hidden as number, heads: o.heads as number,
    kvHeads: o.kvHeads as number, intermediate: o.intermediate as number, ttt: o.ttt as number,
    ropeTheta: o.ropeTheta as number, rmsEps: o.rmsEps as number,
  };
}

export function validateTargetConfig(c: unknown): TargetConfig {
  const o = needObject(c, 'config');
  checkCommon(o, ['vocab', 'hidden', 'heads', 'kvHeads', 'intermediate', 'layers']);
  if ((o.layers as number) < 8) throw new InvalidArgumentError(`config.layers must be >= 8 (got ${String(o.layers)})`);
  if (typeof o.seed !== 'number' || !Number.isInteger(o.seed) || o.seed < 0 || o.seed > 2 ** 53) {
    throw new InvalidArgumentError(`config.seed must be an integer in [0, 2^53] (got ${String(o.seed)})`);
  }
  return {
    vocab: o.vocab as number, hidden: o.hidden as number, heads: o.heads as number, kvHeads: o.kvHeads as number,
    intermediate: o.intermediate as number, layers: o.layers as number, ropeTheta: o.ropeTheta as number,
    rmsEps: o.rmsEps as number, seed: o.seed as number,
  };
}

function threadsOpt(opts: { threads?: number } | undefined): number | null {
  if (opts?.threads === undefined) return null;
  if (!isPosInt(opts.threads, 256)) throw new InvalidArgumentError(`threads must be an integer in [1, 256] (got ${String(opts.threads)})`);
  return opts.threads;
}

// ------------------------------------------------------------------------------------------
// Draft model

export function draftParamShapes(c: DraftConfig): Record<string, number[]> {
  const { vocab: V, draftVocab: Vd, hidden: H, heads, kvHeads, intermediate: I } = validateDraftConfig(c);
  const d = H / heads;
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

  private constructor(raw: RawDraftModel, config: DraftConfig) { this.raw = raw; this.config = config; }

  /** Validates every tensor (length, finite values, d2t range and distinctness). */
  static create(config: DraftConfig, weights: Record<string, Float32Array | Int32Array>, opts?: { threads?: number }): DraftModel {
    const cfg = validateDraftConfig(config);
    const threads = threadsOpt(opts);
    const w = needObject(weights, 'weights') as Record<string, Float32Array | Int32Array>;
    const nat = binding();
    return new DraftModel(callSync(() => new nat.DraftModel(cfg, w, threads)), cfg);
  }

  get ttt(): number { return this.config.ttt; }

  private handle(): RawDraftModel {
    if (!this.raw) throw new NativeError('DraftModel is closed');
    return this.raw;
  }

  /** Forward + backward (+ AdamW when opts.lr is a number), off the event loop. */
  step(batch: DraftBatch, opts: StepOptions): Promise<StepResult> {
    const holder = new Error();
    return this.serial.run(() => callAsync(holder, async () => {
      const o = needObject(opts, 'options');
      const raw: RawStepOptions = {
        lr: o.lr === undefined ? null : o.lr as number | null,
        clip: o.clip === undefined ? null : o.clip as number | null,
        weightDecay: o.weightDecay === undefined ? 0 : o.weightDecay as number,
        returnGrads: o.returnGrads === undefined ? false : o.returnGrads as boolean,
      };
      return this.handle().step(batch, raw);
    }));
  }

  /** Forward only: loss, per-step loss and accuracy. */
  evaluate(batch: DraftBatch): Promise<EvalResult> {
    const holder = new Error();
    return this.serial.run(() => callAsync(holder, async () => this.handle().evaluate(batch)));
  }

  /** Forward only: every logit, laid out [K, B, T, Vd] (for tests and debugging). */
  logits(batch: DraftBatch): Promise<Float32Array> {
    const holder = new Error();
    return this.serial.run(() => callAsync(holder, async () => this.handle().logits(batch)));
  }

  /** Copies of the trainable weights. */
  weights(): Record<string, Float32Array> { return callSync(() => this.handle().weights()); }
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
// Synthetic target

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

  private handle(): RawTargetModel {
    if (!this.raw) throw new NativeError('TargetModel is closed');
    return this.raw;
  }

  /** Copies of E and Wt, to be shared with the draft as its frozen tensors. */
  frozen(): { embed: Float32Array; target_head: Float32Array } { return callSync(() => this.handle().frozen()); }

  /** aux [batch, seq, 3H] and last [batch, seq, H] of `batch` sequences of `seq` tokens. */
  forward(ids: Int32Array, batch: number, seq: number): Promise<{ aux: Float32Array; last: Float32Array }> {
    const holder = new Error();
    return this.serial.run(() => callAsync(holder, async () => this.handle().forward(ids, batch, seq)));
  }

  /** prompt + maxNew tokens; greedy when temperature is 0 or absent. */
  generate(prompt: Int32Array, maxNew: number, opts?: { temperature?: number; seed?: number }): Promise<Int32Array> {
    const holder = new Error();
    return this.serial.run(() => callAsync(holder, async () =>
      this.handle().generate(prompt, maxNew, opts?.temperature ?? 0, opts?.seed ?? 0)));
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
// collectives (native/src/napi_comm.cc; wrapped by src/collectives.ts)

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
