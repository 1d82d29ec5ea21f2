// One epoch's world, as a rank sees it (DESIGN.md §2 resharding, step 3): the collective
// group (Gloo, rendezvous under `<job>/e<epoch>` in the job's KV bucket, so a group is formed
// once per epoch and never reused after a failure), the sharded model attached to it, and the
// small agreement round that keeps the ranks in lockstep. World rank w is tpIdx = w mod tp,
// spIdx = ⌊w/tp⌋ mod sp, dpIdx = ⌊w/(tp·sp)⌋ (native ShardLayout); the tp·sp ranks of one
// data-parallel index form a cell whose first rank (the leader) holds the leases and shares
// the step's sample refs with the others (a broadcast in the cell). A world of one rank has
// no communicator: every collective here is then local and free.
//
// Forming the group synchronises the training state: the ranks find the most advanced state
// (highest step; lowest world rank among equals) and broadcast its weights, AdamW moments
// and step from there, so a rank that joins (scale-up, a respawned process) starts from
// exactly the state of the ranks that trained.
import type { Bus } from '../src/bus/bus.ts';
import type { ModelState } from '../src/job/checkpoint.ts';
import { Communicator } from '../src/native/collectives.ts';
import { InvalidArgumentError } from '../src/errors.ts';
import type { JobSpec } from '../src/job/spec.ts';
import { DraftModel, draftParamShapes, TRAINABLE_NAMES } from '../src/native/addon.ts';
import { decodeMessage, encodeMessage } from '../src/wire/sampleref.ts';

/**
 * The training state a rank carries between epochs (full-shape): `samples` counts the real
 * samples trained into these weights, the exactly-once ledger of the model itself.
 */
export interface TrainState extends ModelState { step: number; samples: number }

/**
 * What one rank brings to an agreement round. `short`: it holds less than a full batch and
 * its partition may still get more (its pending pool is not known to be exhausted).
 */
export interface RoundInput {
  held: number; window: number; stale: boolean; waitedOut: boolean; outstanding: number; short: boolean;
  /** The longest of the held samples (tokens; 0 when none) and their tokens in all. */
  longest: number; tokens: number;
}
/** What the world agreed: sums, extremes and flags over every rank (`short`: any rank is). */
export interface Round {
  total: number; maxHeld: number; window: number; stale: boolean; waitedOut: boolean; outstanding: number; short: boolean;
  longest: number; tokens: number;
}

export interface WorldOptions {
  bus: Bus;
  spec: JobSpec;
  epoch: number;
  index: number;
  size: number;
  /** Frozen tensors (embed, target_head, d2t) every rank holds. */
  frozen: Record<string, Float32Array | Int32Array>;
  /** The address this rank's collectives listen on and publish (default 127.0.0.1: one machine). */
  commHost?: string;
  timeoutMs: number;
  connectTimeoutMs: number;
  /** Abandons the rendezvous (a newer epoch superseded this world). */
  signal?: AbortSignal;
}

const numel = (shape: number[]) => shape.reduce((a, b) => a * b, 1);

export class World {
  private constructor(readonly o: WorldOptions, readonly model: DraftModel, private readonly comm: Communicator | null,
    private readonly cell: Communicator | null, readonly step: number, readonly samples: number) {}

  get index(): number { return this.o.index; }
  get size(): number { return this.o.size; }
  /** Ranks per data-parallel index (tp·sp). */
  get cellSize(): number { return this.o.spec.tp * this.o.spec.sp; }
  get dpIdx(): number { return Math.floor(this.o.index / this.cellSize); }
  get spIdx(): number { return Math.floor(this.o.index / this.o.spec.tp) % this.o.spec.sp; }
  /** The cell's first rank: it holds the leases of partition dpIdx. */
  get leader(): boolean { return this.o.index % this.cellSize === 0; }

  /** Joins the epoch's world, agrees on the training state and builds the model on it. */
  static async form(o: WorldOptions, state: TrainState): Promise<World> {
    const { spec } = o;
    if (o.size === 1) {
      const model = DraftModel.create(spec.draft, { ...o.frozen, ...state.weights }, { threads: spec.threads, backend: spec.backend ?? 'cpu' });
      model.loadOptimizerState(state.optimizer);
      return new World(o, model, null, null, state.step, state.samples);
    }
    const g = spec.tp * spec.sp;
    if ((spec.backend ?? 'cpu') !== 'cpu') throw new InvalidArgumentError(`backend "${spec.backend}" trains one unsharded rank; this world has ${o.size} (the sharded step runs on backend "cpu")`);
    if (o.size % g !== 0) throw new InvalidArgumentError(`a world of ${o.size} ranks is not whole cells of tp·sp = ${g}`);
    const comm = await Communicator.connect({
      rank: o.index, size: o.size, kv: await o.bus.kv(o.bus.subjects.kvBucket), prefix: `${spec.job}/e${o.epoch}`,
      timeoutMs: o.timeoutMs, connectTimeoutMs: o.connectTimeoutMs, signal: o.signal, ...(o.commHost ? { hostname: o.commHost } : {}),
    });
    try {
      const step = (await comm.allReduce(new Float64Array([state.step]), 'max'))[0]!;
      const root = o.size - (await comm.allReduce(new Float64Array([state.step === step ? o.size - o.index : 0]), 'max'))[0]!;
      const flat = o.index === root ? pack(spec, state) : new Float32Array(packedLength(spec));
      await comm.broadcast(flat, root);
      const synced = unpack(spec, flat, step);
      const model = await DraftModel.createSharded(spec.draft, { ...o.frozen, ...synced.weights }, comm, { tp: spec.tp, sp: spec.sp, dp: o.size / g }, { threads: spec.threads });
      model.loadOptimizerState(synced.optimizer); // full-shape: each rank keeps its shards
      const d = Math.floor(o.index / g);
      const cell = g > 1 ? await comm.subgroup(Array.from({ length: g }, (_, i) => d * g + i), `cell${d}`) : null;
      return new World(o, model, comm, cell, step, synced.samples);
    } catch (e) {
      await comm.close().catch(() => {});
      throw e;
    }
  }

  /** One agreement round (a collective on a world of several ranks). */
  async agree(r: RoundInput): Promise<Round> {
    if (!this.comm) {
      return { total: r.held, maxHeld: r.held, window: r.window, stale: r.stale, waitedOut: r.waitedOut, outstanding: r.outstanding, short: r.short, longest: r.longest, tokens: r.tokens };
    }
    const mx = await this.comm.allReduce(new Float64Array([r.held, r.short ? 1 : 0, r.stale ? 1 : 0, r.waitedOut ? 1 : 0, -r.outstanding, r.longest]), 'max');
    const sum = await this.comm.allReduce(new Float64Array([r.held, r.window, r.tokens]), 'sum');
    return { total: sum[0]!, window: sum[1]!, tokens: sum[2]!, maxHeld: mx[0]!, short: mx[1]! > 0, stale: mx[2]! > 0, waitedOut: mx[3]! > 0, outstanding: -mx[4]!, longest: mx[5]! };
  }

  async barrier(): Promise<void> { if (this.comm) await this.comm.barrier(); }

  /**
   * The cell's leader sends `msg` (small, msgpack: the step's sample refs) to the other ranks
   * of its cell; every rank of the cell gets it back. A collective on the cell.
   */
  async shareInCell(msg: Record<string, unknown> | null): Promise<Record<string, unknown>> {
    if (!this.cell) return msg ?? {};
    const bytes = this.leader ? encodeMessage(msg ?? {}) : new Uint8Array(0);
    const len = await this.cell.broadcast(Float32Array.of(bytes.length), 0); // exact: < 2^24
    const n = len[0]!;
    // Bytes travel as the bit patterns of f32 words (a broadcast copies, never computes).
    const words = new Float32Array(Math.ceil(n / 4));
    if (this.leader) new Uint8Array(words.buffer).set(bytes);
    await this.cell.broadcast(words, 0);
    return decodeMessage(new Uint8Array(words.buffer, 0, n));
  }

  /** Full-shape weights and optimizer state (identical on every rank of the world). */
  async state(step: number, samples: number): Promise<TrainState> {
    const sharded = this.model.shard !== null;
    return {
      weights: sharded ? await this.model.gatherWeights() : this.model.weights(),
      optimizer: sharded ? await this.model.gatherOptimizerState() : this.model.optimizerState(),
      step, samples,
    };
  }

  async close(): Promise<void> {
    this.model.close();
    await this.cell?.close().catch(() => {});
    await this.comm?.close().catch(() => {});
  }
}

// The broadcast payload: [adam step, samples / 2^24, samples mod 2^24, every trainable
// tensor, every m, every v] as f32 (each header value exact in f32: below 2^24).
const HEADER = 3;
const SPLIT = 2 ** 24;

function packedLength(spec: JobSpec): number {
  const shapes = draftParamShapes(spec.draft);
  return HEADER + 3 * TRAINABLE_NAMES.reduce((n, k) => n + numel(shapes[k]!), 0);
}

function pack(spec: JobSpec, s: TrainState): Float32Array {
  const out = new Float32Array(packedLength(spec));
  out[0] = s.optimizer.step;
  out[1] = Math.floor(s.samples / SPLIT);
  out[2] = s.samples % SPLIT;
  let o = HEADER;
  for (const part of [s.weights, s.optimizer.m, s.optimizer.v]) for (const k of TRAINABLE_NAMES) { out.set(part[k]!, o); o += part[k]!.length; }
  return out;
}

function unpack(spec: JobSpec, flat: Float32Array, step: number): TrainState {
  const shapes = draftParamShapes(spec.draft);
  let o = HEADER;
  const take = () => Object.fromEntries(TRAINABLE_NAMES.map((k) => { const n = numel(shapes[k]!); const t = flat.slice(o, o + n); o += n; return [k, t]; }));
  const weights = take(), m = take(), v = take();
  return { weights, optimizer: { step: flat[0]!, m, v }, step, samples: flat[1]! * SPLIT + flat[2]! };
}

/** The state of a model freshly initialised from `weights` (zero moments). */
export function initialState(spec: JobSpec, weights: Record<string, Float32Array | Int32Array>): TrainState {
  const shapes = draftParamShapes(spec.draft);
  const zeros = () => Object.fromEntries(TRAINABLE_NAMES.map((k) => [k, new Float32Array(numel(shapes[k]!))]));
  return { weights: Object.fromEntries(TRAINABLE_NAMES.map((k) => [k, weights[k] as Float32Array])), optimizer: { step: 0, m: zeros(), v: zeros() }, step: 0, samples: 0 };
}
