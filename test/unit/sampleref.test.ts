import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { spawnSync } from 'node:child_process';
import { Packr } from 'msgpackr';
import { DecodeError, InvalidArgumentError } from '../../src/errors.ts';
import {
  SAMPLE_REF_MAX_BYTES, checkPlain, checkSubjectToken, decodeMessage, decodeSampleRef, encodeMessage, encodeSampleRef, packr, parseSampleUri, validateSampleRef,
  type SampleRef,
} from '../../src/wire/sampleref.ts';
import { sampleRef } from '../support/store-fixtures.ts';

const raw = new Packr({ useRecords: false });
const rawPack = (x: unknown) => raw.pack(x);

function assertDecodeError(f: () => unknown, re?: RegExp): void {
  assert.throws(f, (e: unknown) => {
    assert.ok(e instanceof DecodeError, `expected DecodeError, got ${(e as Error)?.constructor?.name}: ${(e as Error)?.message}`);
    if (re) assert.match((e as Error).message, re);
    return true;
  });
}

describe('SampleRef codec', () => {
  it('round-trips a ref, with and without mac, in canonical form', () => {
    const ref = sampleRef();
    const back = decodeSampleRef(encodeSampleRef(ref));
    assert.deepEqual(back, ref);
    const withMac = { ...ref, mac: new Uint8Array(32).fill(9) };
    const back2 = decodeSampleRef(encodeSampleRef(withMac));
    assert.ok(back2.mac instanceof Uint8Array);
    assert.deepEqual([...back2.mac!], [...withMac.mac]);
    // Field and feature order do not change the bytes.
    const shuffled = Object.fromEntries(Object.entries({ ...ref, features: { mask: ref.features.mask!, last: ref.features.last!, ids: ref.features.ids!, aux: ref.features.aux! } }).reverse()) as unknown as SampleRef;
    assert.notDeepEqual(Object.keys(shuffled), Object.keys(ref));
    assert.deepEqual(encodeSampleRef(shuffled), encodeSampleRef(ref));
    assert.ok(encodeSampleRef(ref).byteLength < 400, 'a typical ref is small');
  });

  it('accepts tcp uris and parses both schemes', () => {
    const ref = sampleRef({ uri: 'tcp://10.0.0.5:7001/store-a/row-000042?g=3' });
    assert.equal(decodeSampleRef(encodeSampleRef(ref)).uri, ref.uri);
    assert.deepEqual(parseSampleUri('tcp://[::1]:9/s/x?g=0'), { scheme: 'tcp', host: '[::1]', port: 9, storeId: 's', sampleId: 'x', generation: 0 });
    assert.deepEqual(parseSampleUri('dir://s/x.y:z-1?g=12'), { scheme: 'dir', storeId: 's', sampleId: 'x.y:z-1', generation: 12 });
  });

  it('rejects an unknown schema version', () => {
    assertDecodeError(() => decodeSampleRef(rawPack({ ...sampleRef(), v: 2 })), /unknown schema version/);
    assertDecodeError(() => decodeSampleRef(rawPack({ ...sampleRef(), v: undefined })), /unknown schema version/);
  });

  it('rejects missing, extra and mistyped fields', () => {
    const ref = sampleRef() as unknown as Record<string, unknown>;
    for (const k of Object.keys(ref)) {
      const { [k]: _drop, ...rest } = ref;
      assertDecodeError(() => decodeSampleRef(rawPack(rest)));
    }
    assertDecodeError(() => decodeSampleRef(rawPack({ ...ref, extra: 1 })), /unexpected field "extra"/);
    const bad: [string, unknown][] = [
      ['job', ''], ['job', 'a b'], ['job', 'x'.repeat(201)], ['job', '..'], ['job', 5],
      ['sampleId', 'a/b'], ['sampleId', 'a*b'], ['generation', -1], ['generation', 1.5], ['generation', 2 ** 53],
      ['generation', '3'], ['numTokens', -5], ['bytes', Number.NaN], ['createdAt', Infinity],
      ['checksum', 'md5:abcd'], ['checksum', 'sha256:' + 'AB'.repeat(32)], ['checksum', 'sha256:abc'],
      ['uri', 'file:///etc/passwd'], ['uri', 'dir://store-a/other?g=3'], ['uri', 'dir://store-a/row-000042?g=4'],
      ['uri', 'dir://store-a/row-000042'], ['uri', 'dir://../row-000042?g=3'], ['uri', 'tcp://h:0/s/row-000042?g=3'],
      ['uri', 'tcp://h:70000/s/row-000042?g=3'], ['uri', 'dir://s/row-000042?g=03'],
      ['features', []], ['features', { x: { dtype: 'f64', shape: [1] } }], ['features', { x: { dtype: 'f32', shape: [-1] } }],
      ['features', { x: { dtype: 'f32', shape: [1], extra: 1 } }], ['features', { 'bad name': { dtype: 'f32', shape: [1] } }],
      ['features', { x: { dtype: 'f32', shape: [1, 1, 1, 1, 1, 1, 1, 1, 1] } }], ['features', { x: { dtype: 'f32' } }],
      ['producer', { node: 'n', actor: 'a' }], ['producer', { node: 'n', actor: 'a', incarnation: -1 }],
      ['producer', { node: 'n/1', actor: 'a', incarnation: 0 }], ['producer', 'n'],
      ['mac', new Uint8Array(31)], ['mac', 'ab'.repeat(16)],
    ];
    for (const [k, v] of bad) {
      assertDecodeError(() => decodeSampleRef(rawPack({ ...ref, [k]: v })));
      assertDecodeError(() => validateSampleRef({ ...ref, [k]: v }));
    }
  });

  it('turns garbage, truncated, oversized and extension-typed input into DecodeError', () => {
    const good = encodeSampleRef(sampleRef());
    for (let n = 0; n < good.byteLength; n++) assertDecodeError(() => decodeSampleRef(good.subarray(0, n)));
    assertDecodeError(() => decodeSampleRef(new Uint8Array([...good, 0x00])));
    assertDecodeError(() => decodeSampleRef(new Uint8Array(SAMPLE_REF_MAX_BYTES + 1)), /exceeds the 4096-byte bound/);
    assertDecodeError(() => decodeSampleRef(rawPack({ ...sampleRef(), job: 'x', pad: 'p'.repeat(5000) })), /bound/);
    assertDecodeError(() => decodeSampleRef(new Uint8Array([0xc1])));
    assertDecodeError(() => decodeSampleRef(new Uint8Array([0xd4, 99, 0])));
    assertDecodeError(() => decodeSampleRef(new Uint8Array(4000).fill(0x91)));
    assertDecodeError(() => decodeSampleRef(rawPack({ ...sampleRef(), createdAt: new Date(5) })));
    assertDecodeError(() => decodeSampleRef(rawPack(new Date(5))));
    assertDecodeError(() => decodeSampleRef(rawPack([1, 2, 3])));
    assertDecodeError(() => decodeSampleRef('not bytes' as unknown as Uint8Array));
    // Fuzz: random bytes and random mutations of a valid encoding never escape as another error.
    for (let i = 0; i < 3000; i++) {
      const buf = i % 2 === 0 ? new Uint8Array(randomBytes(1 + (i % 300))) : new Uint8Array(good);
      if (i % 2 === 1) for (let j = 0; j < 1 + (i % 4); j++) buf[(i * 7919 + j * 104729) % buf.length] = (i * 31 + j) & 0xff;
      try {
        const r = decodeSampleRef(buf);
        assert.doesNotThrow(() => validateSampleRef(r));
      } catch (e) {
        assert.ok(e instanceof DecodeError, `fuzz ${i}: ${(e as Error)?.constructor?.name}: ${(e as Error)?.message}`);
      }
    }
  });

  it('encodeSampleRef refuses invalid or oversized refs', () => {
    assert.throws(() => encodeSampleRef({ ...sampleRef(), generation: -1 }), InvalidArgumentError);
    const features: Record<string, { dtype: 'f32'; shape: number[] }> = {};
    for (let i = 0; i < 64; i++) features[`feature_with_a_long_name_${'x'.repeat(60)}_${i}`] = { dtype: 'f32', shape: [1, 2, 3, 4, 5, 6, 7, 8] };
    assert.throws(() => encodeSampleRef(sampleRef({ features })), /over the 4096-byte bound/);
  });
});

describe('control message codec', () => {
  it('round-trips plain maps with bytes', () => {
    const msg = { op: 'ack', leaseIds: ['L1', 'L2'], epoch: 3, ok: true, none: null, nested: { a: [1, { b: 'c' }] }, blob: new Uint8Array([1, 2, 3]) };
    const back = decodeMessage(encodeMessage(msg));
    assert.deepEqual({ ...back, blob: [...(back.blob as Uint8Array)] }, { ...msg, blob: [1, 2, 3] });
  });

  it('rejects non-plain values on both sides', () => {
    for (const v of [new Date(1), /x/, new Error('e'), new Map([[1, 2]]), new Set([1]), new Float32Array(2), 5n, () => 1, Symbol('s')]) {
      assert.throws(() => encodeMessage({ v } as Record<string, unknown>), InvalidArgumentError, String(v));
    }
    assert.throws(() => encodeMessage([1] as unknown as Record<string, unknown>), InvalidArgumentError);
    assertDecodeError(() => decodeMessage(rawPack({ d: new Date(5) })), /Date/);
    assertDecodeError(() => decodeMessage(new Uint8Array([0x81, 0xa1, 0x61, 0xc1])));
    assertDecodeError(() => decodeMessage(rawPack([1, 2])), /expected a map/);
    assertDecodeError(() => decodeMessage(rawPack('str')), /expected a map/);
    assertDecodeError(() => decodeMessage(rawPack({ big: 2n ** 64n - 1n })), /bigint/);
    let deep: unknown = 1;
    for (let i = 0; i < 40; i++) deep = { d: deep };
    assertDecodeError(() => decodeMessage(rawPack(deep)), /deeper/);
    assertDecodeError(() => decodeMessage(encodeMessage({ s: 'x'.repeat(100) }), 50), /bound/);
    assertDecodeError(() => checkPlain(Object.create({ inherited: 1 }), 'x'));
  });

  it('checkSubjectToken refuses ids that would split a NATS subject', () => {
    assert.equal(checkSubjectToken('job-1:a_b', 'job'), 'job-1:a_b');
    for (const bad of ['a.b', 'a*', '>', '', 'a b']) assert.throws(() => checkSubjectToken(bad, 'job'), InvalidArgumentError);
  });

  describe('64-bit integers, as Python and Go msgpack write them', () => {
    // Python's msgpack (the real library, in a child process) writes every integer >= 2^32 as
    // uint64 (0xcf): generation 5e9 and createdAt 1.8e12 arrive that way from a Python producer.
    const pyPack = (obj: unknown): Buffer => {
      const r = spawnSync('python3', ['-c', 'import sys, json, msgpack; sys.stdout.buffer.write(msgpack.packb(json.load(sys.stdin), use_bin_type=True))'], { input: JSON.stringify(obj) });
      assert.equal(r.status, 0, `python3 msgpack failed: ${String(r.stderr)}`);
      return r.stdout;
    };
    const u64 = (v: bigint) => { const b = Buffer.alloc(9); b[0] = 0xcf; b.writeBigUInt64BE(v, 1); return b; };
    const i64 = (v: bigint) => { const b = Buffer.alloc(9); b[0] = 0xd3; b.writeBigInt64BE(v, 1); return b; };
    /** The bytes with the (only) occurrence of `from` replaced by `to`. */
    const swap = (bytes: Buffer, from: Buffer, to: Buffer): Buffer => {
      const at = bytes.indexOf(from);
      assert.ok(at >= 0 && bytes.indexOf(from, at + 1) < 0, `expected exactly one ${from.toString('hex')} in the encoding`);
      return Buffer.concat([bytes.subarray(0, at), to, bytes.subarray(at + from.length)]);
    };
    const ref = sampleRef({ generation: 5_000_000_000, createdAt: 1_800_000_000_000 });

    it('accepts a ref encoded by Python msgpack (uint64 generation and createdAt)', () => {
      const bytes = pyPack(ref);
      assert.ok(bytes.includes(u64(5_000_000_000n)) && bytes.includes(u64(1_800_000_000_000n)), 'python wrote uint64 (0xcf) integers');
      const back = decodeSampleRef(bytes);
      assert.equal(back.generation, 5_000_000_000);
      assert.equal(back.createdAt, 1_800_000_000_000);
      assert.deepEqual(back, validateSampleRef(ref));
      // The same inside a control message (what a commit carries).
      assert.equal((decodeMessage(pyPack({ ref })).ref as SampleRef).createdAt, 1_800_000_000_000);
    });

    it('accepts int64 (0xd3) and uint64 encodings of small integers (encoders that always write 64 bits)', () => {
      let bytes = pyPack(ref);
      bytes = swap(bytes, u64(1_800_000_000_000n), i64(1_800_000_000_000n));
      // numTokens 128 is 0xcc 0x80 in Python's encoding; write it as int64 and bytes as uint64.
      bytes = swap(bytes, Buffer.from([0xa9, ...Buffer.from('numTokens'), 0xcc, 0x80]), Buffer.concat([Buffer.from([0xa9, ...Buffer.from('numTokens')]), i64(128n)]));
      const back = decodeSampleRef(bytes);
      assert.equal(back.createdAt, 1_800_000_000_000);
      assert.equal(back.numTokens, 128);
    });

    it('refuses 64-bit integers that are not exact, naming the field', () => {
      const base = pyPack(ref);
      const big = swap(base, u64(1_800_000_000_000n), u64(2n ** 53n + 1n));
      assertDecodeError(() => decodeSampleRef(big), /createdAt.*not exact/);
      const neg = swap(base, u64(5_000_000_000n), i64(-(2n ** 60n)));
      assertDecodeError(() => decodeSampleRef(neg), /generation.*not exact/);
      // An exact but negative or over-2^53 generation is still refused by the ref's own rules.
      assertDecodeError(() => decodeSampleRef(swap(base, u64(5_000_000_000n), i64(-5n))), /generation/);
      assertDecodeError(() => decodeSampleRef(swap(base, u64(1_800_000_000_000n), u64(2n ** 53n))), /createdAt/);
    });
  });

  it('exports the one Packr (records off)', () => {
    assert.equal((packr as unknown as { useRecords: boolean }).useRecords, false);
  });
});
