// The lease ledger's vocabulary: the events it logs (LedgerEvent: what the queue actor writes
// to the WAL and what replay and the audit read), leases, and the options and results of its
// calls. Separate from ledger.ts so the shapes read apart from the state machine; ledger.ts
// re-exports them all.

import type { SampleRef } from '../wire/sampleref.ts';

export type SampleState = 'pending' | 'leased' | 'consumed' | 'dead';

export interface Lease {
  leaseId: string;
  sampleId: string;
  ref: SampleRef;
  epoch: number;
  consumer: string;
  deadline: number;
  /** Which delivery this is (1 = first). */
  delivery: number;
}

/** One lease as logged (the ref is in the sample's put event). */
export interface LeaseGrant {
  leaseId: string;
  sampleId: string;
  generation: number;
  deadline: number;
  delivery: number;
}

export interface ExpiredLease {
  leaseId: string;
  sampleId: string;
  epoch: number;
  consumer: string;
  deadline: number;
}

interface EventBase {
  /** Position in the ledger's log, 1-based, contiguous. */
  seq: number;
  /** Time the call was applied (ms). */
  at: number;
  /** Idempotency key of the call that produced it (absent for expire/dead). */
  key?: string;
}

export type LedgerEvent =
  | (EventBase & { type: 'put'; ref: SampleRef; prevGeneration: number | null })
  | (EventBase & { type: 'lease'; epoch: number; consumer: string; partition: [number, number]; leases: LeaseGrant[] })
  | (EventBase & { type: 'ack'; leaseId: string; sampleId: string; epoch: number })
  | (EventBase & { type: 'release'; leaseId: string; sampleId: string; epoch: number })
  | (EventBase & { type: 'fail'; leaseId: string; sampleId: string; epoch: number; retryable: boolean; reason: string; dead: boolean })
  | (EventBase & { type: 'renew'; leaseId: string; sampleId: string; epoch: number; deadline: number })
  | (EventBase & { type: 'expire'; leases: ExpiredLease[] })
  | (EventBase & { type: 'dead'; sampleId: string; generation: number; deliveries: number; reason: string })
  | (EventBase & { type: 'epoch'; epoch: number; num: number | null });

export type LedgerEventType = LedgerEvent['type'];
/** An event before the ledger numbers it (everything but seq). */
export type NewEvent = LedgerEvent extends infer E ? (E extends LedgerEvent ? Omit<E, 'seq'> : never) : never;

/** What every mutating call returns besides its answer. */
export interface Applied {
  /** The events this call applied, in order (empty when nothing changed or the key repeated). */
  events: LedgerEvent[];
  /** True when the key had been seen and this is the first call's answer. */
  repeated: boolean;
}

export type PutResult = Applied & { sampleId: string; generation: number; status: 'added' | 'replaced' | 'duplicate' };
export type GetResult = Applied & { leases: Lease[] };
export type EndResult = Applied & { leaseId: string; sampleId: string; status: 'acked' | 'released' | 'pending' | 'dead' | 'duplicate' };
export type RenewResult = Applied & { leaseId: string; sampleId: string; deadline: number };
export type ExpireResult = Applied & { expired: ExpiredLease[]; dead: string[] };
export type EpochResult = Applied & { epoch: number; num: number | null };

export interface LedgerOptions {
  /** Charged deliveries after which a sample is dead-lettered (default 5). */
  maxDeliveries?: number;
  /** Default lease length, ms (default 60 000). */
  leaseMs?: number;
  /** Initial epoch (default 0). */
  epoch?: number;
  /** Remembered idempotency keys (default 100 000; oldest evicted first). */
  keyCacheSize?: number;
  /** Remembered ended leases, for duplicate detection and messages (default 1 000 000). */
  endedLeaseCacheSize?: number;
  /** Prefix of lease ids (default 'L'); ids are prefix + a counter rebuilt by replay. */
  leaseIdPrefix?: string;
}

export interface CallOpts { key: string; now: number }
export interface GetOpts extends CallOpts {
  partition: readonly [number, number];
  consumer: string;
  epoch: number;
  leaseMs?: number;
}

export interface SampleStatus {
  sampleId: string;
  state: SampleState;
  generation: number;
  /** Charged deliveries so far. */
  deliveries: number;
  lease: Omit<Lease, 'ref'> | null;
  ref: SampleRef;
}

export interface LedgerStats {
  epoch: number;
  num: number | null;
  seq: number;
  samples: number;
  pending: number;
  leased: number;
  consumed: number;
  dead: number;
  leasesGranted: number;
  acks: number;
  releases: number;
  fails: number;
  expired: number;
  renewals: number;
}
