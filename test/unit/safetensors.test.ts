import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DecodeError, InvalidArgumentError } from '../../src/errors.ts';
import { MAX_HEADER_BYTES, decodeSafetensors, encodeSafetensorsBuffer, readSafetensorsFile, writeSafetensorsFile } from '../../src/store/safetensors.ts';
import { tensor, type Tensor } from '../../src/tensor.ts';
import { digestTensors, makeSample, sliceRows } from '../support/store-fixtures.ts';

function header(bytes: object): Buffer {
  const json = Buffer.from(JSON.stringify(bytes));
  const head = Buffer.alloc(8);
  head.writeBigUInt64LE(BigInt(json.length));
  return Buffer.concat([head, json]);
}

describe('safetensors', () => {
  let dir: string;
  before(() => { dir = mkdtempSync(join(tmpdir(), 'dw-st-')); });
  after(() => rmSync(dir, { recursive: true, force: true }));

  it('round-trips every dtype with metadata, in the documented layout', () => {
    const ts: Record<string, Tensor> = {
      a: tensor('f32', [2, 3], new Float32Array([1, 2, 3, 4, 5, 6])),
      b: tensor('f64', [1], new Float64Array([Math.PI])),
      c: tensor('bf16', [3], new Uint16Array([1, 2, 0xffff])),
      d: tensor('f16', [1, 1], new Uint16Array([0x3c00])),
      e: tensor('i32', [2], new Int32Array([-1, 2 ** 31 - 1])),
      f: tensor('i64', [1], new BigInt64Array([-(2n ** 63n)])),
      g: tensor('u8', [5], new Uint8Array([0, 1, 2, 254, 255])),
      s: tensor('f32', [], new Float32Array([7])),
      z: tensor('f32', [0, 4]),
    };
    const buf = encodeSafetensorsBuffer(ts, { format: 'pt', note: 'x' });
    const n = Number(buf.readBigUInt64LE(0));
    assert.equal((8 + n) % 8, 0, 'data section aligned to 8 bytes');
    const h = JSON.parse(buf.subarray(8, 8 + n).toString());
    assert.deepEqual(h.__metadata__, { format: 'pt', note: 'x' });
    assert.deepEqual(h.a, { dtype: 'F32', shape: [2, 3], data_offsets: [0, 24] });
    assert.equal(h.c.dtype, 'BF16');
    const back = decodeSafetensors(buf, { copy: true });
    assert.deepEqual(back.metadata, { format: 'pt', note: 'x' });
    for (const [k, t] of Object.entries(ts)) {
      assert.equal(back.tensors[k]!.dtype, t.dtype);
      assert.deepEqual(back.tensors[k]!.shape, t.shape);
      assert.deepEqual([...back.tensors[k]!.data as Iterable<number | bigint>], [...t.data as Iterable<number | bigint>], k);
    }
    assert.throws(() => encodeSafetensorsBuffer({ __metadata__: ts.a! }), InvalidArgumentError);
    assert.throws(() => encodeSafetensorsBuffer({ x: { dtype: 'f32', shape: [3], data: new Float32Array(2) } }), InvalidArgumentError);
  });

  it('reads some tensors and some rows from a file', async () => {
    const ts = makeSample(3, 50, 8);
    const path = join(dir, 'a.safetensors');
    const size = await writeSafetensorsFile(path, ts, { k: 'v' });
    assert.equal(readFileSync(path).length, size);
    const all = await readSafetensorsFile(path);
    assert.deepEqual(digestTensors(all.tensors), digestTensors(ts));
    assert.deepEqual(all.metadata, { k: 'v' });
    const some = await readSafetensorsFile(path, { names: ['last', 'ids'], rows: [10, 23] });
    const want = sliceRows(ts, 10, 23);
    assert.deepEqual(digestTensors(some.tensors), digestTensors({ last: want.last!, ids: want.ids! }));
    assert.deepEqual(Object.keys((await readSafetensorsFile(path, { rows: [50, 50] })).tensors).sort(), ['aux', 'ids', 'last', 'mask']);
    await assert.rejects(readSafetensorsFile(path, { names: ['nope'] }), InvalidArgumentError);
    await assert.rejects(readSafetensorsFile(path, { rows: [0, 51] }), InvalidArgumentError);
    await assert.rejects(readSafetensorsFile(path, { rows: [3, 2] }), InvalidArgumentError);
    const scalar = join(dir, 's.safetensors');
    await writeSafetensorsFile(scalar, { s: tensor('f32', []) });
    await assert.rejects(readSafetensorsFile(scalar, { rows: [0, 1] }), InvalidArgumentError);
  });

  it('an atomic write: a reader during it sees the old file whole, after it the new one; no temp file is left', async () => {
    const path = join(dir, 'atomic.safetensors');
    const old = { w: tensor('f32', [4], new Float32Array([1, 2, 3, 4])) };
    await writeSafetensorsFile(path, old, { step: '1' }, { atomic: true });
    const big = { w: tensor('f32', [1 << 22], new Float32Array(1 << 22).fill(7)) }; // 16 MiB: the write takes several reads' time
    const writing = writeSafetensorsFile(path, big, { step: '2' }, { atomic: true });
    let done = false, seenOld = 0;
    void writing.then(() => { done = true; }, () => { done = true; });
    while (!done) {
      const meta = (await readSafetensorsFile(path, { names: [] })).metadata; // a part-written file would be a DecodeError
      if (meta.step === '1') seenOld++;
      await new Promise((r) => setImmediate(r));
    }
    await writing;
    assert.ok(seenOld > 0, 'the reader ran while the write was in flight');
    const now = await readSafetensorsFile(path);
    assert.equal(now.metadata.step, '2');
    assert.equal((now.tensors.w!.data as Float32Array)[(1 << 22) - 1], 7);
    assert.deepEqual(readdirSync(dir).filter((f) => f.includes('.tmp')), []);
  });

  it('turns hostile or truncated files into DecodeError', async () => {
    const bad: Buffer[] = [
      Buffer.alloc(0), Buffer.alloc(5),
      (() => { const b = Buffer.alloc(16); b.writeBigUInt64LE(BigInt(MAX_HEADER_BYTES) + 1n); return b; })(),
      (() => { const b = Buffer.alloc(16); b.writeBigUInt64LE(2n ** 64n - 1n); return b; })(),
      Buffer.concat([Buffer.from([3, 0, 0, 0, 0, 0, 0, 0]), Buffer.from('{x}')]),
      header([1, 2]),
      header({ a: { dtype: 'F128', shape: [1], data_offsets: [0, 16] } }),
      header({ a: { dtype: 'F32', shape: [-1], data_offsets: [0, 4] } }),
      header({ a: { dtype: 'F32', shape: [2], data_offsets: [0, 4] } }),
      header({ a: { dtype: 'F32', shape: [1], data_offsets: [4, 0] } }),
      header({ a: { dtype: 'F32', shape: [1], data_offsets: [0, 4] } }), // data missing
      header({ a: { dtype: 'F32', shape: [1.5], data_offsets: [0, 4] } }),
      header({ a: { dtype: 'F32', shape: [1], data_offsets: [0] } }),
      header({ __metadata__: { a: 1 } }),
      header({ a: null }),
    ];
    for (const [i, b] of bad.entries()) {
      assert.throws(() => decodeSafetensors(b), DecodeError, `case ${i}`);
      const p = join(dir, `bad${i}.safetensors`);
      writeFileSync(p, b);
      await assert.rejects(readSafetensorsFile(p), DecodeError, `file case ${i}`);
    }
    // Fuzz: mutations of a valid file decode or fail with DecodeError, nothing else.
    const good = encodeSafetensorsBuffer(makeSample(1, 4, 2));
    for (let i = 0; i < 2000; i++) {
      const b = Buffer.from(good);
      const hl = Number(good.readBigUInt64LE(0)) + 8;
      for (let j = 0; j < 1 + (i % 3); j++) b[(i * 131 + j * 977) % hl] = randomBytes(1)[0]!;
      const cut = i % 5 === 0 ? b.subarray(0, (i * 37) % b.length) : b;
      try { decodeSafetensors(cut); } catch (e) { assert.ok(e instanceof DecodeError, `${i}: ${(e as Error).constructor.name}: ${(e as Error).message}`); }
    }
  });
  it('writes u8 tensors as BOOL when asked, and reads BOOL back only when allowed, checked 0/1', async () => {
    const ts = { m: tensor('u8', [4], new Uint8Array([0, 1, 1, 0])), k: tensor('i64', [2], new BigInt64Array([-3n, 5n])) };
    const plain = encodeSafetensorsBuffer(ts);
    assert.deepEqual(encodeSafetensorsBuffer(ts, {}, {}), plain, 'unchanged without the option');
    const buf = encodeSafetensorsBuffer(ts, {}, { bool: ['m'] });
    const n = Number(buf.readBigUInt64LE(0));
    assert.equal(JSON.parse(buf.subarray(8, 8 + n).toString()).m.dtype, 'BOOL');
    assert.deepEqual(buf.subarray(8 + n), plain.subarray(8 + Number(plain.readBigUInt64LE(0))), 'the same data bytes');
    assert.throws(() => decodeSafetensors(buf), /tensor "m" has an unsupported dtype/);
    const back = decodeSafetensors(buf, { allowBool: true });
    assert.equal(back.tensors.m!.dtype, 'u8');
    assert.deepEqual([...back.tensors.m!.data as Uint8Array], [0, 1, 1, 0]);
    const path = join(dir, 'bool.safetensors');
    await writeSafetensorsFile(path, ts, {}, { bool: ['m'] });
    await assert.rejects(readSafetensorsFile(path), DecodeError);
    assert.deepEqual([...(await readSafetensorsFile(path, { allowBool: true })).tensors.m!.data as Uint8Array], [0, 1, 1, 0]);
    const hostile = Buffer.from(buf);
    hostile[8 + n + 1] = 2;
    assert.throws(() => decodeSafetensors(hostile, { allowBool: true }), /BOOL tensor "m" holds a byte other than 0 or 1/);
    writeFileSync(path, hostile);
    await assert.rejects(readSafetensorsFile(path, { allowBool: true }), DecodeError);
    assert.throws(() => encodeSafetensorsBuffer(ts, {}, { bool: ['k'] }), InvalidArgumentError);
    assert.throws(() => encodeSafetensorsBuffer({ m: tensor('u8', [1], new Uint8Array([3])) }, {}, { bool: ['m'] }), InvalidArgumentError);
  });
});
