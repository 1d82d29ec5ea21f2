// An object store bucket of the Bus (Bus.objects() opens one): JetStream's object store
// (chunked, replicated like the job's other streams, SHA-256 checked by the library), for blobs
// too big for a KV value, such as checkpoints. Each object carries a MAC in its metadata over
// the bucket, the name and the bytes (auth on), so a replaced or truncated object is refused
// with AuthError; an object whose bytes are not what its metadata says (the library's digest)
// is a ChecksumError. Separate from bus.ts because it is its own small API.
import { createHash } from 'node:crypto';
import type { ObjectStore } from '@nats-io/obj';
import { AuthError, ChecksumError } from '../errors.ts';
import type { AuthPolicy } from '../wire/auth.ts';

/** What the bucket needs of the Bus that opened it. */
export interface ObjectsHost {
  readonly auth: AuthPolicy;
  _jsOp<T>(what: string, fn: () => Promise<T>, idempotent: boolean): Promise<T>;
}

const macInput = (bucket: string, name: string, bytes: Uint8Array) =>
  Buffer.concat([Buffer.from(`obj:${bucket}:${name}\0`), createHash('sha256').update(bytes).digest()]);

export class BusObjects {
  constructor(private readonly bus: ObjectsHost, readonly bucket: string, private readonly os: ObjectStore) {}

  /** Writes (or replaces) object `name`; returns its size. */
  async put(name: string, bytes: Uint8Array): Promise<number> {
    const metadata: Record<string, string> = this.bus.auth.enabled ? { mac: Buffer.from(this.bus.auth.mac(macInput(this.bucket, name, bytes))).toString('hex') } : {};
    const info = await this.bus._jsOp(`object ${this.bucket}/${name} put`, () => this.os.putBlob({ name, metadata }, bytes), true);
    return info.size;
  }

  /** The object's bytes, or null when there is none. AuthError on a bad MAC, ChecksumError on bytes that do not match. */
  async get(name: string): Promise<Uint8Array | null> {
    const info = await this.bus._jsOp(`object ${this.bucket}/${name} info`, () => this.os.info(name), true);
    if (!info || info.deleted) return null;
    let bytes: Uint8Array | null;
    try {
      bytes = await this.bus._jsOp(`object ${this.bucket}/${name} get`, () => this.os.getBlob(name), true);
    } catch (e) {
      if (/digest/i.test(String((e as Error)?.message))) throw new ChecksumError(`object ${this.bucket}/${name}: its bytes do not match its digest`, { cause: e, detail: { bucket: this.bucket, name } });
      throw e;
    }
    if (bytes === null) return null;
    if (bytes.byteLength !== info.size) throw new ChecksumError(`object ${this.bucket}/${name}: ${bytes.byteLength} bytes read, ${info.size} stored`, { detail: { bucket: this.bucket, name } });
    if (this.bus.auth.enabled) {
      const mac = info.metadata?.mac;
      try { this.bus.auth.verifyMac(macInput(this.bucket, name, bytes), mac ? Buffer.from(mac, 'hex') : null); } catch {
        throw new AuthError(`object ${this.bucket}/${name} failed its MAC (replaced or forged)`, { detail: { bucket: this.bucket, name } });
      }
    }
    return bytes;
  }

  /** Removes object `name` (a no-op when absent). */
  async delete(name: string): Promise<void> {
    const info = await this.bus._jsOp(`object ${this.bucket}/${name} info`, () => this.os.info(name), true);
    if (!info || info.deleted) return;
    await this.bus._jsOp(`object ${this.bucket}/${name} delete`, () => this.os.delete(name), true);
  }

  /** Names of the objects present. */
  async names(): Promise<string[]> {
    const list = await this.bus._jsOp(`object ${this.bucket} list`, () => this.os.list(), true);
    return list.filter((i) => !i.deleted).map((i) => i.name);
  }
}
