// A KV bucket of the Bus (Bus.kv() opens one): values are MAC'd records sealed by the Bus,
// with the bucket, the key and a version bound in. Separate from bus.ts because it is its own
// API (get/create/update/put/delete/keys/watch) over a handful of the Bus's internals.
//
// Rollback: anyone holding the NATS credentials can re-put an older (validly MAC'd) value.
// So every value carries a version, v = max(now ms, last version this BusKv knows + 1),
// strictly increasing along a compare-and-set chain, and a BusKv remembers the highest
// version it has read or written per key (across deletes) for its lifetime: get() throws
// AuthError (detail.rollback) on a lower one, watch() skips it with a warning; both count it
// in the bus's rejectedAuth. A record without a version (written before versions) is v 0.
// Residual: a fresh reader has nothing to compare with and takes the latest record.

import { DeliverPolicy, type JetStreamClient, type JetStreamManager } from '@nats-io/jetstream';
import type { KV, KvEntry } from '@nats-io/kv';
import { AuthError, ConflictError, InvalidArgumentError, UnavailableError } from '../errors.ts';

/** What a bucket needs of the Bus that opened it (the Bus implements it; kept here so kv.ts does not import bus.ts). */
export interface KvHost {
  _sealKv(bucket: string, key: string, obj: unknown, version: number): Uint8Array;
  _openKv(bucket: string, key: string, bytes: Uint8Array): { value: unknown; version: number };
  _js(): JetStreamClient;
  _jsm(): Promise<JetStreamManager>;
  _jsOp<T>(what: string, fn: () => Promise<T>, idempotent: boolean): Promise<T>;
  _warnBadRecord(what: string, e: unknown): void;
  streamInfo(name: string): Promise<{ lastSeq: number }>;
}

export interface KvValue<T = unknown> { key: string; value: T; revision: number }
export interface KvChange<T = unknown> { key: string; value: T | null; revision: number; op: 'PUT' | 'DEL' | 'PURGE' }
export interface KvWatch<T = unknown> extends AsyncIterable<KvChange<T>> { stop(): void }

export class BusKv {
  /** Per key: the highest version read or written, and the revision it was at. */
  private readonly known = new Map<string, { version: number; revision: number }>();

  constructor(private readonly bus: KvHost, readonly bucket: string, private readonly kv: KV) {}

  /**
   * Opens a value and refuses a version below the highest in `known` (AuthError,
   * detail.rollback); remembers it there and in this BusKv's map.
   */
  private accept<T>(key: string, bytes: Uint8Array, revision: number, known: Map<string, { version: number; revision: number }> = this.known): T {
    const { value, version } = this.bus._openKv(this.bucket, key, bytes);
    const k = known.get(key);
    if (k && version < k.version && revision < k.revision) {
      // An older revision than one already read: a replica behind the others answered (reads
      // go to any replica), not a rolled-back write (that comes at a newer revision).
      throw new UnavailableError(`kv ${this.bucket}/${key}: a replica answered with revision ${revision}, behind revision ${k.revision} already read`, { detail: { stale: true, bucket: this.bucket, key, revision, known: k.revision } });
    }
    if (k && version < k.version) {
      throw new AuthError(`kv ${this.bucket}/${key}@${revision}: version ${version} is older than version ${k.version} already read (a rolled-back value)`,
        { detail: { rollback: true, bucket: this.bucket, key, revision, version, known: k.version } });
    }
    remember(known, key, version, revision);
    if (known !== this.known) remember(this.known, key, version, revision);
    return value as T;
  }

  private remember(key: string, version: number, revision: number): void { remember(this.known, key, version, revision); }

  /** The version of the next write of `key`: after everything known, and a clock for keys re-created after a delete. */
  private nextVersion(key: string): number {
    return Math.max(Date.now(), (this.known.get(key)?.version ?? 0) + 1);
  }

  /**
   * The current value, or null if absent or deleted. AuthError/DecodeError on a bad or
   * rolled-back value. Reads go to any replica (direct get), which may lag the others;
   * `leader: true` asks the stream's leader, which holds every acknowledged write: for a
   * reader with nothing to compare with that must not act on an older value (a rank
   * resuming from the latest checkpoint manifest).
   */
  async get<T = unknown>(key: string, opts: { leader?: boolean } = {}): Promise<KvValue<T> | null> {
    let leader = opts.leader === true;
    for (let attempt = 0; ; attempt++) {
      const e = await this.bus._jsOp(`kv ${this.bucket} get ${key}`, () => (leader ? this.leaderGet(key) : this.kv.get(key)), true);
      if (!e || e.operation !== 'PUT') return null;
      try {
        return { key, value: this.accept<T>(key, e.value, e.revision), revision: e.revision };
      } catch (err) {
        if (err instanceof UnavailableError && err.detail?.stale) {
          // A lagging replica's answer. A direct get goes to the nearest replica, and one back
          // from a freeze or a partition can stay behind for minutes: ask again twice, then
          // the stream's leader, which holds every acknowledged write.
          if (!leader && attempt >= 2) { leader = true; continue; }
          if (attempt < 6) { await new Promise((r) => setTimeout(r, 20 * 2 ** attempt)); continue; }
        }
        if (err instanceof AuthError && err.detail?.rollback) this.bus._warnBadRecord(`kv ${this.bucket}/${key}@${e.revision}`, err);
        throw err;
      }
    }
  }

  private async leaderGet(key: string): Promise<Pick<KvEntry, 'value' | 'revision' | 'operation'> | null> {
    const m = await (await this.bus._jsm()).streams.getMessage(`KV_${this.bucket}`, { last_by_subj: `$KV.${this.bucket}.${key}` });
    if (!m) return null;
    return { value: m.data, revision: m.seq, operation: (m.header?.get('KV-Operation') || 'PUT') as KvEntry['operation'] };
  }

  /** Create; ConflictError if the key exists. Returns the revision. */
  async create(key: string, obj: unknown): Promise<number> {
    const version = this.nextVersion(key);
    const data = this.bus._sealKv(this.bucket, key, obj, version);
    let rev: number;
    try { rev = await this.bus._jsOp(`kv ${this.bucket} create ${key}`, () => this.kv.create(key, data), false); } catch (err) {
      if (err instanceof ConflictError || /exists/i.test(String((err as Error)?.message))) throw new ConflictError(`kv ${this.bucket}: key ${key} already exists`, { cause: err });
      throw err;
    }
    this.remember(key, version, rev);
    return rev;
  }

  /**
   * Compare-and-set: ConflictError unless the key's revision is `revision`. Returns the new
   * revision. Reads the key first unless this BusKv already saw it at `revision` (the new
   * version must exceed the one it replaces); AuthError if that value is rolled back.
   */
  async update(key: string, obj: unknown, revision: number): Promise<number> {
    if (this.known.get(key)?.revision !== revision) await this.get(key);
    const version = this.nextVersion(key);
    const data = this.bus._sealKv(this.bucket, key, obj, version);
    let rev: number;
    try { rev = await this.bus._jsOp(`kv ${this.bucket} update ${key}@${revision}`, () => this.kv.update(key, data, revision), false); } catch (err) {
      if (err instanceof ConflictError) throw new ConflictError(`kv ${this.bucket}: key ${key} is not at revision ${revision}`, { cause: err, detail: { bucket: this.bucket, key, revision } });
      throw err;
    }
    this.remember(key, version, rev);
    return rev;
  }

  /** Unconditional write; reads the current version first (a bad current value does not block it). */
  async put(key: string, obj: unknown): Promise<number> {
    try { await this.get(key); } catch { /* overwritten below; already counted when rolled back */ }
    const version = this.nextVersion(key);
    const data = this.bus._sealKv(this.bucket, key, obj, version);
    const rev = await this.bus._jsOp(`kv ${this.bucket} put ${key}`, () => this.kv.put(key, data), true);
    this.remember(key, version, rev);
    return rev;
  }

  async delete(key: string, opts: { revision?: number } = {}): Promise<void> {
    await this.bus._jsOp(`kv ${this.bucket} delete ${key}`, () => this.kv.delete(key, opts.revision !== undefined ? { previousSeq: opts.revision } : undefined), opts.revision === undefined);
  }

  async keys(): Promise<string[]> {
    return this.bus._jsOp(`kv ${this.bucket} keys`, async () => {
      const out: string[] = [];
      for await (const k of await this.kv.keys()) out.push(k);
      return out;
    }, true);
  }

  /**
   * Changes: the current values first (unless updatesOnly; deleted keys are left out), then
   * the changes after the moment watch() was called, in revision order. Values that fail
   * their MAC or decode, and rolled-back values (a version below the highest this BusKv has
   * seen for the key), are counted, warned about and skipped. stop() ends the iteration.
   *
   * A watch promises the latest value, not every value: with history 1 (the default) a
   * value superseded before the watcher read it is gone from the stream and never seen.
   * The start position is the stream's last sequence read before watch() returns (nats.js
   * creates ordered consumers lazily, so a server-computed DeliverPolicy.New would start
   * later than that); an ordered pull consumer, not nats.js's push-based kv.watch().
   */
  async watch<T = unknown>(opts: { key?: string; updatesOnly?: boolean } = {}): Promise<KvWatch<T>> {
    const key = opts.key ?? '>';
    if (!/^[-/=.\w>*]+$/.test(key)) throw new InvalidArgumentError(`invalid KV key filter ${JSON.stringify(key)}`);
    const prefix = `$KV.${this.bucket}.`;
    const stream = `KV_${this.bucket}`;
    const snapshot = (await this.bus.streamInfo(stream)).lastSeq;
    // The watch checks versions in stream order against its own map: this BusKv may already
    // know newer versions (its own later writes) than the backlog it is about to replay.
    const seen = new Map([...this.known].filter(([, e]) => e.revision <= snapshot).map(([k, e]) => [k, { ...e }]));
    const consumer = await this.bus._jsOp(`kv ${this.bucket} watch`, () => this.bus._js().consumers.get(stream, {
      filter_subjects: prefix + key,
      ...(opts.updatesOnly ? { deliver_policy: DeliverPolicy.StartSequence, opt_start_seq: snapshot + 1 } : { deliver_policy: DeliverPolicy.All }),
    }), true);
    const msgs = await this.bus._jsOp(`kv ${this.bucket} watch`, () => consumer.consume({ max_messages: 256 }), true);
    const self = this;
    const toChange = (m: { subject: string; seq: number; data: Uint8Array; headers?: { get(k: string): string } }): KvChange<T> | null => {
      const k = m.subject.startsWith(prefix) ? m.subject.slice(prefix.length) : m.subject;
      const op = (m.headers?.get('KV-Operation') || 'PUT') as 'PUT' | 'DEL' | 'PURGE';
      if (op !== 'PUT') return { key: k, value: null, revision: m.seq, op };
      try {
        return { key: k, value: self.accept<T>(k, m.data, m.seq, seen), revision: m.seq, op: 'PUT' };
      } catch (err) {
        self.bus._warnBadRecord(`kv ${self.bucket}/${k}@${m.seq}`, err);
        return null;
      }
    };
    return {
      stop: () => { msgs.stop(); },
      async *[Symbol.asyncIterator]() {
        // Backlog (seq <= snapshot): latest record per key, opened (and version-checked) only
        // when complete: superseded history is not a rollback.
        type Raw = Parameters<typeof toChange>[0];
        let backlog: Map<string, Raw> | null = opts.updatesOnly ? null : new Map();
        const flush = function* (): Generator<KvChange<T>> {
          if (!backlog) return;
          const latest = [...backlog.values()].sort((x, y) => x.seq - y.seq);
          backlog = null;
          for (const m of latest) {
            const c = toChange(m);
            if (c && c.op === 'PUT') yield c;
          }
        };
        try {
          for await (const m of msgs) {
            if (backlog && m.seq <= snapshot) {
              const k = m.subject.startsWith(prefix) ? m.subject.slice(prefix.length) : m.subject;
              backlog.set(k, { subject: m.subject, seq: m.seq, data: m.data, headers: m.headers });
              if (m.seq === snapshot || m.info.pending === 0) yield* flush();
              continue;
            }
            yield* flush();
            const c = toChange(m);
            if (c) yield c;
          }
        } finally {
          msgs.stop();
        }
      },
    };
  }
}

function remember(known: Map<string, { version: number; revision: number }>, key: string, version: number, revision: number): void {
  const k = known.get(key);
  if (!k || version > k.version || (version === k.version && revision > k.revision)) known.set(key, { version, revision });
}
