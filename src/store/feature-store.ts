// The FeatureStore contract (DESIGN.md §1): one async interface, several transports
// (shared directory, TCP). Only SampleRefs travel on the control plane; tensor bytes go
// through a store. Guarantees every implementation keeps:
// - put publishes atomically: a reader sees the whole sample or nothing.
// - get resolves from the ref alone (in any process that can reach the store), verifies the
//   checksum (and, with auth on, the ref's MAC), and returns private copies unless the
//   caller asks for views.
// - Use after free is impossible: get after release/abort -> SampleGoneError; a ref whose
//   generation is not the current one -> StaleGenerationError; a stale release never
//   deletes newer data.
// - Above the high watermark put throws BackpressureError (retryable) until usage falls to
//   the low watermark; unconsumed samples are never evicted to make room.
import type { Producer, SampleRef } from '../wire/sampleref.ts';
import type { Tensor } from '../tensor.ts';

export interface PutOptions {
  /** Tokens in the sample (default: first dimension of tensor "ids", else of the first tensor). */
  numTokens?: number;
  /** An explicit generation (e.g. from a NATS KV counter); must exceed every earlier one. */
  generation?: number;
  /** createdAt for the ref (default Date.now()). */
  createdAt?: number;
}

export interface GetOptions {
  /** Only these tensors (default: all). */
  names?: readonly string[];
  /** Only rows [start, end) of the first dimension of every tensor read. */
  rows?: readonly [number, number];
  /** Zero-copy views into the read buffers instead of exactly-sized private copies. */
  view?: boolean;
  /** Verify block checksums of what is read (default true). */
  verify?: boolean;
}

export interface GcStats {
  /** Directory entries (or records) looked at. */
  scanned: number;
  /** Abandoned temp files removed, and their bytes. */
  tempFiles: number;
  tempBytes: number;
  /** Tombstones past their TTL removed. */
  tombstones: number;
  /** Stale lock files removed. */
  locks: number;
  /** Generation records removed (sample fully gone). */
  genRecords: number;
  /** Older generations (or released leftovers) of samples reclaimed. */
  reclaimed: number;
  reclaimedBytes: number;
  durationMs: number;
}

export interface StoreUsage {
  /** Bytes of published sample files plus temp files. */
  bytes: number;
  /** Published sample files. */
  samples: number;
}

export interface BackpressureState {
  /** True between crossing the high watermark and falling back to the low one. */
  pressured: boolean;
  usageBytes: number;
  highWatermarkBytes: number;
  lowWatermarkBytes: number;
}

export interface StoreHealth extends StoreUsage {
  ok: boolean;
  storeId: string;
  kind: string;
  tombstones: number;
  tempFiles: number;
  pressured: boolean;
  highWatermarkBytes: number;
  lowWatermarkBytes: number;
  error?: string;
}

export interface FeatureStore {
  readonly storeId: string;
  readonly job: string;
  /** Writes a sample and returns its (signed, when auth is on) ref. */
  put(sampleId: string, tensors: Record<string, Tensor>, opts?: PutOptions): Promise<SampleRef>;
  get(ref: SampleRef, opts?: GetOptions): Promise<Record<string, Tensor>>;
  /** Whether `ref` names a sample this store holds (not one of another node's store). */
  owns(ref: SampleRef): boolean;
  /** Frees the ref's generation (after it was consumed). True if bytes were freed. */
  release(ref: SampleRef): Promise<boolean>;
  /**
   * Frees the current generation of a sample that will not be consumed (only if it is still
   * `generation`, when given: a late or replayed abort never frees a newer one). True if bytes
   * were freed.
   */
  abort(sampleId: string, reason: string, opts?: { generation?: number }): Promise<boolean>;
  /** The samples whose bytes this store holds now (every generation it has a file of). */
  held(): Promise<{ sampleId: string; generation: number }[]>;
  /** Sweeps abandoned temp files, expired tombstones and leftovers. */
  gc(now?: number): Promise<GcStats>;
  health(): Promise<StoreHealth>;
  usage(): Promise<StoreUsage>;
  backpressure(): Promise<BackpressureState>;
  close(): Promise<void>;
}

export type { Producer };
