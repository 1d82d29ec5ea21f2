// A KV bucket of the Bus (Bus.kv() opens one): values are MAC'd records sealed by the Bus,
// with the bucket and key bound in. Separate from bus.ts because it is its own API
// (get/create/update/put/delete/keys/watch) over a handful of the Bus's internals.

import { DeliverPolicy, type JetStreamClient } from '@nats-io/jetstream';
import type { KV, KvEntry } from '@nats-io/kv';
import { ConflictError, InvalidArgumentError } from '../errors.ts';

/** What a bucket needs of the Bus that opened it (the Bus implements it; kept here so kv.ts does not import bus.ts). */
export interface KvHost {
  _sealKv(bucket: string, key: string, obj: unknown): Uint8Array;
  _openKv(bucket: string, key: string, bytes: Uint8Array): unknown;
  _js(): JetStreamClient;
  _jsOp<T>(what: string, fn: () => Promise<T>, idempotent: boolean): Promise<T>;
  _warnBadRecord(what: string, e: unknown): void;
  streamInfo(name: string): Promise<{ lastSeq: number }>;
}

export interface KvValue<T = unknown> { key: string; value: T; revision: number }
export interface KvChange<T = unknown> { key: string; value: T | null; revision: number; op: 'PUT' | 'DEL' | 'PURGE' }
export interface KvWatch<T = unknown> extends AsyncIterable<KvChange<T>> { stop(): void }

export class BusKv {
  constructor(private readonly bus: KvHost, readonly bucket: string, private readonly kv: KV) {}

  private decode<T>(e: KvEntry): T { return this.bus._openKv(this.bucket, e.key, e.value) as T; }

  /** The current value, or null if absent or deleted. AuthError/DecodeError on a bad value. */
  async get<T = unknown>(key: string): Promise<KvValue<T> | null> {
    const e: KvEntry | null = await this.bus._jsOp(`kv ${this.bucket} get ${key}`, () => this.kv.get(key), true);
    if (!e || e.operation !== 'PUT') return null;
    return { key, value: this.decode<T>(e), revision: e.revision };
  }

  /** Create; ConflictError if the key exists. Returns the revision. */
  async create(key: string, obj: unknown): Promise<number> {
    const data = this.bus._sealKv(this.bucket, key, obj);
    try { return await this.bus._jsOp(`kv ${this.bucket} create ${key}`, () => this.kv.create(key, data), false); } catch (err) {
      if (err instanceof ConflictError || /exists/i.test(String((err as Error)?.message))) throw new ConflictError(`kv ${this.bucket}: key ${key} already exists`, { cause: err });
      throw err;
    }
  }

  /** Compare-and-set: ConflictError unless the key's revision is `revision`. Returns the new revision. */
  async update(key: string, obj: unknown, revision: number): Promise<number> {
    const data = this.bus._sealKv(this.bucket, key, obj);
    try { return await this.bus._jsOp(`kv ${this.bucket} update ${key}@${revision}`, () => this.kv.update(key, data, revision), false); } catch (err) {
      if (err instanceof ConflictError) throw new ConflictError(`kv ${this.bucket}: key ${key} is not at revision ${revision}`, { cause: err, detail: { bucket: this.bucket, key, revision } });
      throw err;
    }
  }

  async put(key: string, obj: unknown): Promise<number> {
    const data = this.bus._sealKv(this.bucket, key, obj);
    return this.bus._jsOp(`kv ${this.bucket} put ${key}`, () => this.kv.put(key, data), true);
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
   * their MAC or decode are counted and skipped. stop() ends the iteration.
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
        return { key: k, value: self.bus._openKv(self.bucket, k, m.data) as T, revision: m.seq, op: 'PUT' };
      } catch (err) {
        self.bus._warnBadRecord(`kv ${self.bucket}/${k}@${m.seq}`, err);
        return null;
      }
    };
    return {
      stop: () => { msgs.stop(); },
      async *[Symbol.asyncIterator]() {
        // Backlog (seq <= snapshot): latest per key, yielded once complete.
        let backlog: Map<string, KvChange<T> | null> | null = opts.updatesOnly ? null : new Map();
        const flush = function* (): Generator<KvChange<T>> {
          if (!backlog) return;
          const cur = [...backlog.values()].filter((c): c is KvChange<T> => !!c && c.op === 'PUT').sort((x, y) => x.revision - y.revision);
          backlog = null;
          yield* cur;
        };
        try {
          for await (const m of msgs) {
            if (backlog && m.seq <= snapshot) {
              const k = m.subject.startsWith(prefix) ? m.subject.slice(prefix.length) : m.subject;
              backlog.set(k, toChange(m));
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
