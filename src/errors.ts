// Every failure Draftwire reports is one of these classes: a stable `code` for programs,
// `retryable` as data (Temporal-style), and a message that names what was wrong.

export interface DraftwireErrorOptions {
  cause?: unknown;
  /** Extra structured detail (never secrets, never tensor bytes). */
  detail?: Record<string, unknown>;
}

export class DraftwireError extends Error {
  readonly code: string;
  readonly retryable: boolean;
  readonly detail: Record<string, unknown> | null;

  constructor(code: string, message: string, retryable: boolean, opts: DraftwireErrorOptions = {}) {
    super(message, opts.cause === undefined ? undefined : { cause: opts.cause });
    this.name = new.target.name;
    this.code = code;
    this.retryable = retryable;
    this.detail = opts.detail ?? null;
  }

  toJSON(): Record<string, unknown> {
    return { name: this.name, code: this.code, message: this.message, retryable: this.retryable, detail: this.detail };
  }
}

/** A caller passed something malformed: a wrong shape, dtype, range or option. */
export class InvalidArgumentError extends DraftwireError {
  constructor(message: string, opts?: DraftwireErrorOptions) { super('INVALID_ARGUMENT', message, false, opts); }
}
/** Bytes from the wire or disk did not decode into a valid record. */
export class DecodeError extends DraftwireError {
  constructor(message: string, opts?: DraftwireErrorOptions) { super('DECODE', message, false, opts); }
}
/** Missing or wrong secret, bad MAC, or a replayed message. Says nothing about which. */
export class AuthError extends DraftwireError {
  constructor(message = 'authentication failed', opts?: DraftwireErrorOptions) { super('AUTH', message, false, opts); }
}
/** The sample was released, aborted or reclaimed: its bytes are gone. */
export class SampleGoneError extends DraftwireError {
  constructor(message: string, opts?: DraftwireErrorOptions) { super('SAMPLE_GONE', message, false, opts); }
}
/** The ref names an older generation than the store holds now. */
export class StaleGenerationError extends DraftwireError {
  constructor(message: string, opts?: DraftwireErrorOptions) { super('STALE_GENERATION', message, false, opts); }
}
/** A lease request echoed an epoch the queue no longer grants under. */
export class StaleEpochError extends DraftwireError {
  constructor(message: string, opts?: DraftwireErrorOptions) { super('STALE_EPOCH', message, false, opts); }
}
/** The lease passed its deadline, or belongs to someone else now. */
export class LeaseExpiredError extends DraftwireError {
  constructor(message: string, opts?: DraftwireErrorOptions) { super('LEASE_EXPIRED', message, false, opts); }
}
/** The store is above its high watermark; try again after the janitor frees space. */
export class BackpressureError extends DraftwireError {
  constructor(message: string, opts?: DraftwireErrorOptions) { super('BACKPRESSURE', message, true, opts); }
}
/** Stored bytes do not match their checksum. */
export class ChecksumError extends DraftwireError {
  constructor(message: string, opts?: DraftwireErrorOptions) { super('CHECKSUM', message, false, opts); }
}
/** A request to another actor got no answer in time. */
export class TimeoutError extends DraftwireError {
  constructor(message: string, opts?: DraftwireErrorOptions) { super('TIMEOUT', message, true, opts); }
}
/** The native addon failed (or is missing); the message is the native one. */
export class NativeError extends DraftwireError {
  constructor(message: string, opts?: DraftwireErrorOptions) { super('NATIVE', message, false, opts); }
}
/** A collective operation failed: a peer died or the group was torn down. */
export class CollectiveError extends DraftwireError {
  constructor(message: string, opts?: DraftwireErrorOptions) { super('COLLECTIVE', message, true, opts); }
}
/** A storage write failed (disk full, permission): nothing was published. */
export class StoreWriteError extends DraftwireError {
  constructor(message: string, opts?: DraftwireErrorOptions) { super('STORE_WRITE', message, true, opts); }
}
/** A compare-and-set lost: the key or stream moved on since the caller read it. Re-read, then retry. */
export class ConflictError extends DraftwireError {
  constructor(message: string, opts?: DraftwireErrorOptions) { super('CONFLICT', message, false, opts); }
}
/** A service (NATS server, JetStream) could not be reached or did not start. */
export class UnavailableError extends DraftwireError {
  constructor(message: string, opts?: DraftwireErrorOptions) { super('UNAVAILABLE', message, true, opts); }
}
/** The target actor is stopped (or never existed): the message became a dead letter. */
export class ActorStoppedError extends DraftwireError {
  constructor(message: string, opts?: DraftwireErrorOptions) { super('ACTOR_STOPPED', message, false, opts); }
}
/** A sample does not match the job's schema (src/wire/schema.ts): a feature missing, unknown, or of the wrong dtype or shape. detail: field, found, expected. */
export class SchemaError extends DraftwireError {
  constructor(message: string, opts?: DraftwireErrorOptions) { super('SCHEMA', message, false, opts); }
}
/**
 * The job takes no more samples: its input is closed (every producer declared its end, or the
 * job's --samples were committed). A new sample's commit, or a producer opening after the
 * close, is refused; retrying cannot help. detail: sampleId or producer, reason.
 */
export class InputClosedError extends DraftwireError {
  constructor(message: string, opts?: DraftwireErrorOptions) { super('INPUT_CLOSED', message, false, opts); }
}
/**
 * The ledger's write-ahead log holds a record replay cannot use (a bad MAC, a wrong shape, a
 * gap): the queue refuses requests until an operator skips it (`draftwire wal skip`).
 * detail: streamSeq, reason.
 */
export class WalCorruptError extends DraftwireError {
  constructor(message: string, opts?: DraftwireErrorOptions) { super('WAL_CORRUPT', message, false, opts); }
}
/**
 * A message or reply of a singleton role (queue, coordinator, janitor, rollout) from a term
 * older than one already seen: an old holder of the role's leader lease, resurrected after
 * another node took the role. Retryable: the current holder answers the retry.
 * detail: role, term, newest.
 */
export class StaleTermError extends DraftwireError {
  constructor(message: string, opts?: DraftwireErrorOptions) { super('STALE_TERM', message, true, opts); }
}
/**
 * A model directory cannot be used as a target (src/hf/): an unsupported architecture, a
 * missing or misshapen tensor, a config field out of range. detail: path, and field or tensor.
 */
export class ModelFormatError extends DraftwireError {
  constructor(message: string, opts?: DraftwireErrorOptions) { super('MODEL_FORMAT', message, false, opts); }
}
/** A row of a chat dataset is malformed (src/chat/dataset.ts). detail: file, line, reason. */
export class DatasetRowError extends DraftwireError {
  constructor(message: string, opts?: DraftwireErrorOptions) { super('DATASET_ROW', message, false, opts); }
}
/**
 * A tokenizer or chat template cannot be loaded, cannot render a conversation, or renders it
 * so that the assistant turns cannot be found (src/chat/). detail: path or line, reason.
 */
export class ChatTemplateError extends DraftwireError {
  constructor(message: string, opts?: DraftwireErrorOptions) { super('CHAT_TEMPLATE', message, false, opts); }
}
/**
 * Offline features (`run --features DIR`, src/job/features.ts) cannot be trained on: a file
 * is malformed (it is dead-lettered, never trained on), the directory holds no usable file or
 * no known layout, or a file changed since the job validated it. detail: dir or file, reason.
 */
export class FeaturesError extends DraftwireError {
  constructor(message: string, opts?: DraftwireErrorOptions) { super('FEATURES', message, false, opts); }
}
