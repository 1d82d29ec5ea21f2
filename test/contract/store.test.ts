// Contract of the shared-directory feature store, across real processes.
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { closeSync, existsSync, mkdirSync, mkdtempSync, openSync, readFileSync, readdirSync, readSync, rmSync, statSync, utimesSync, writeFileSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { AuthPolicy } from '../../src/wire/auth.ts';
import { AuthError, BackpressureError, ChecksumError, DecodeError, InvalidArgumentError, SampleGoneError, StaleGenerationError, StoreWriteError } from '../../src/errors.ts';
import { readHeader } from '../../src/store/safetensors.ts';
import { decodeSampleRef, encodeSampleRef, validateSampleRef, type SampleRef } from '../../src/wire/sampleref.ts';
import { SharedDirFeatureStore, type SharedDirOptions } from '../../src/store/shared-dir.ts';
import { tensor, type Tensor } from '../../src/tensor.ts';
import { digestTensors, makeSample, sliceRows } from '../support/store-fixtures.ts';
import { open } from 'node:fs/promises';

const SECRET = 'store-contract-secret-0123456789';
const CHILD = join(import.meta.dirname, '..', 'support', 'store-child.ts');
const producer = { node: 'parent', actor: 'test', incarnation: 1 };

type ChildOut = { ok?: any; error?: { name: string; code: string; message: string }; hang?: any };

function childEnv(secret: string | null): NodeJS.ProcessEnv {
  const env = { ...process.env };
  delete env.DRAFTWIRE_SECRET;
  delete env.DRAFTWIRE_SECRET_FILE;
  if (secret !== null) env.DRAFTWIRE_SECRET = secret;
  return env;
}

/** Runs the child to completion and returns its last JSON line. */
function runChild(spec: Record<string, unknown>, secret: string | null): Promise<ChildOut> {
  return new Promise((resolve, reject) => {
    const p = spawn(process.execPath, ['--import', 'tsx', CHILD, JSON.stringify(spec)], { env: childEnv(secret), stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '', err = '';
    p.stdout.on('data', (d) => { out += d; });
    p.stderr.on('data', (d) => { err += d; });
    p.on('error', reject);
    p.on('close', () => {
      const lines = out.trim().split('\n').filter(Boolean);
      if (lines.length === 0) reject(new Error(`child printed nothing; stderr: ${err}`));
      else resolve(JSON.parse(lines[lines.length - 1]!) as ChildOut);
    });
  });
}

/** Starts a child and resolves at its first {"hang"} line (the child keeps running). */
function startHangingChild(spec: Record<string, unknown>, secret: string | null): Promise<{ child: ChildProcess; hang: any }> {
  return new Promise((resolve, reject) => {
    const p = spawn(process.execPath, ['--import', 'tsx', CHILD, JSON.stringify(spec)], { env: childEnv(secret), stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '', err = '';
    p.stderr.on('data', (d) => { err += d; });
    p.stdout.on('data', (d) => {
      out += d;
      const line = out.split('\n').find((l) => l.startsWith('{"hang"'));
      if (line) resolve({ child: p, hang: (JSON.parse(line) as ChildOut).hang });
    });
    p.on('close', (code) => reject(new Error(`child exited (${code}) before hanging: ${out} ${err}`)));
  });
}

function killAndWait(p: ChildProcess): Promise<void> {
  return new Promise((resolve) => {
    if (p.exitCode !== null || p.signalCode !== null) return resolve();
    p.once('close', () => resolve());
    p.kill('SIGKILL');
  });
}

async function rejectsWith<T extends Error>(p: Promise<unknown>, cls: new (...a: any[]) => T, re?: RegExp): Promise<T> {
  try {
    await p;
  } catch (e) {
    assert.ok(e instanceof cls, `expected ${cls.name}, got ${(e as Error)?.constructor?.name}: ${(e as Error)?.message}`);
    if (re) assert.match((e as Error).message, re);
    return e as T;
  }
  assert.fail(`expected ${cls.name}, but it resolved`);
}

/** A signed ref to a sample that was never published. */
function fakeRef(sampleId: string, generation: number): SampleRef {
  return AuthPolicy.fromSecret(SECRET).signRef(validateSampleRef({
    v: 1, job: 'job1', sampleId, generation, uri: `dir://store-a/${sampleId}?g=${generation}`, features: { ids: { dtype: 'i32', shape: [8] } },
    numTokens: 8, bytes: 32, checksum: 'sha256m:' + '00'.repeat(32), producer, createdAt: 0,
  }));
}

const b64 = (ref: SampleRef) => Buffer.from(encodeSampleRef(ref)).toString('base64');
const files = (dir: string) => readdirSync(dir).sort();
const published = (dir: string) => files(dir).filter((f) => f.endsWith('.safetensors'));

describe('SharedDirFeatureStore contract', function () {
  this.timeout(120_000);
  let root: string;
  let n = 0;
  const freshDir = () => join(root, `s${++n}`);
  const attach = (dir: string, o: Partial<SharedDirOptions> = {}, auth = AuthPolicy.fromSecret(SECRET)) =>
    SharedDirFeatureStore.attach({ dir, storeId: 'store-a', job: 'job1', auth, producer, usageRefreshMs: 0, ...o });

  before(() => { root = mkdtempSync(join(tmpdir(), 'dw-store-')); });
  after(() => rmSync(root, { recursive: true, force: true }));

  it('B5: a sample put in one process is read, released and superseded across processes', async () => {
    const dir = freshDir();
    const parent = await attach(dir);
    const base = { dir, storeId: 'store-a', job: 'job1' };
    // Producer process writes; this process and a third process read.
    const put = await runChild({ ...base, op: 'put', sampleId: 'row-7', seed: 7, T: 300, H: 32 }, SECRET);
    assert.ok(put.ok, JSON.stringify(put.error));
    const ref = decodeSampleRef(Buffer.from(put.ok.ref, 'base64'));
    assert.equal(ref.uri, `dir://store-a/row-7?g=${ref.generation}`);
    assert.equal(ref.numTokens, 300);
    assert.equal(ref.mac?.byteLength, 32);
    assert.equal(ref.producer.actor, 'store-child');
    const want = makeSample(7, 300, 32);
    const got = await parent.get(ref);
    assert.deepEqual(digestTensors(got), digestTensors(want));
    const other = await runChild({ ...base, op: 'get', ref: b64(ref) }, SECRET);
    assert.deepEqual(other.ok, digestTensors(want));
    const part = await runChild({ ...base, op: 'get', ref: b64(ref), names: ['aux', 'mask'], rows: [100, 200] }, SECRET);
    const { aux, mask } = sliceRows(want, 100, 200);
    assert.deepEqual(part.ok, digestTensors({ aux: aux!, mask: mask! }));
    // The file is plain safetensors with the signed ref in its metadata.
    const fh = await open(join(dir, `row-7.g${ref.generation}.safetensors`), 'r');
    const h = await readHeader(fh, 'x');
    await fh.close();
    assert.deepEqual([...h.entries.keys()].sort(), ['aux', 'ids', 'last', 'mask']);
    assert.equal(JSON.parse(h.metadata['draftwire.ref']!).checksum, ref.checksum);
    // Re-put from another process: generation grows, the old ref is stale everywhere.
    const put2 = await runChild({ ...base, op: 'put', sampleId: 'row-7', seed: 8, T: 300, H: 32 }, SECRET);
    const ref2 = decodeSampleRef(Buffer.from(put2.ok.ref, 'base64'));
    assert.ok(ref2.generation > ref.generation);
    await rejectsWith(parent.get(ref), StaleGenerationError, /superseded by generation/);
    assert.equal((await runChild({ ...base, op: 'get', ref: b64(ref) }, SECRET)).error?.code, 'STALE_GENERATION');
    // A stale release (old ref) from another process never deletes newer data.
    assert.deepEqual((await runChild({ ...base, op: 'release', ref: b64(ref) }, SECRET)).ok, { released: false });
    assert.deepEqual(digestTensors(await parent.get(ref2)), digestTensors(makeSample(8, 300, 32)));
    // Release here; the other process sees SampleGoneError (not ENOENT).
    assert.equal(await parent.release(ref2), true);
    assert.equal(await parent.release(ref2), false, 'release is idempotent');
    const gone = await runChild({ ...base, op: 'get', ref: b64(ref2) }, SECRET);
    assert.equal(gone.error?.code, 'SAMPLE_GONE', JSON.stringify(gone));
    assert.match(gone.error!.message, /released/);
    await rejectsWith(parent.get(ref2), SampleGoneError);
    assert.deepEqual(published(dir), []);
  });

  it('generations strictly increase across concurrent writers in several processes', async () => {
    const dir = freshDir();
    const s = await attach(dir);
    const base = { dir, storeId: 'store-a', job: 'job1', op: 'puts', sampleId: 'hot', count: 8 };
    const [a, b, c, local] = await Promise.all([
      runChild(base, SECRET), runChild(base, SECRET), runChild(base, SECRET),
      Promise.all(Array.from({ length: 8 }, (_, i) => s.put('hot', makeSample(i, 4, 2)).then((r) => r.generation))),
    ]);
    const all = [...a.ok.gens, ...b.ok.gens, ...c.ok.gens, ...local];
    assert.equal(new Set(all).size, 32, 'no generation handed out twice');
    for (const g of [a.ok.gens, b.ok.gens, c.ok.gens]) for (let i = 1; i < g.length; i++) assert.ok(g[i] > g[i - 1]);
    const max = Math.max(...all);
    assert.deepEqual(published(dir), [`hot.g${max}.safetensors`], 'only the newest generation remains');
    assert.ok(!files(dir).some((f) => f.endsWith('.lock') || f.startsWith('.tmp-')));
    // An explicit generation must exceed every earlier one.
    await rejectsWith(s.put('hot', makeSample(1, 4, 2), { generation: max }), StaleGenerationError);
    assert.equal((await s.put('hot', makeSample(1, 4, 2), { generation: max + 10 })).generation, max + 10);
  });

  it('atomic publish: a writer SIGKILLed mid-write leaves no visible sample; gc removes its temp file', async () => {
    const dir = freshDir();
    const s = await attach(dir, { tempMaxAgeMs: 60_000 });
    const base = { dir, storeId: 'store-a', job: 'job1' };
    // Deterministic: killed halfway through writing a 40 MiB sample, then just before the rename.
    for (const hang of ['afterChunk', 'beforeRename'] as const) {
      const { child, hang: info } = await startHangingChild({ ...base, op: 'put', sampleId: `big-${hang}`, seed: 1, T: 16384, H: 256, hang, writeChunkBytes: 1 << 20 }, SECRET);
      assert.ok(existsSync(info.tmpPath), 'the temp file exists while writing');
      assert.deepEqual(published(dir), []);
      await killAndWait(child);
      assert.deepEqual(published(dir), [], `${hang}: nothing published`);
      assert.ok(statSync(info.tmpPath).size > 0);
      // The would-be generation was recorded, but a ref to it finds nothing: gone, not ENOENT.
      const gen = Number(readFileSync(join(dir, `big-${hang}.gen`), 'utf8'));
      await rejectsWith(s.get(fakeRef(`big-${hang}`, gen)), SampleGoneError, /never published/);
      // The dead writer's lock does not block the next writer of that sample.
      const t0 = Date.now();
      const again = await s.put(`big-${hang}`, makeSample(1, 8, 8));
      assert.ok(Date.now() - t0 < 5000);
      assert.ok(again.generation > gen);
      assert.equal((await s.get(again)).ids!.shape[0], 8);
      assert.equal(await s.release(again), true);
    }
    const temps = files(dir).filter((f) => f.startsWith('.tmp-'));
    assert.equal(temps.length, 2);
    const young = await s.gc(Date.now());
    assert.equal(young.tempFiles, 0, 'young temp files are left alone (a writer may still be busy)');
    const swept = await s.gc(Date.now() + 60_001);
    assert.equal(swept.tempFiles, 2);
    assert.ok(swept.tempBytes >= 60 * 1024 * 1024, `${swept.tempBytes}`); // ~20 MiB (half) + ~40 MiB (whole)
    assert.ok(!files(dir).some((f) => f.startsWith('.tmp-')));
    // Random kill timing: whatever survives is a complete, verifiable sample or nothing.
    for (let i = 0; i < 3; i++) {
      const p = spawn(process.execPath, ['--import', 'tsx', CHILD, JSON.stringify({ ...base, op: 'put', sampleId: `rnd-${i}`, seed: i, T: 8192, H: 256 })], { env: childEnv(SECRET), stdio: 'ignore' });
      await new Promise((r) => setTimeout(r, 400 + i * 150));
      await killAndWait(p);
      for (const f of published(dir).filter((x) => x.startsWith(`rnd-${i}.`))) {
        const fh = await open(join(dir, f), 'r');
        const meta = (await readHeader(fh, f)).metadata;
        await fh.close();
        const stored = JSON.parse(meta['draftwire.ref']!);
        const ref = validateSampleRef({ ...stored, mac: Buffer.from(stored.mac, 'hex') });
        assert.deepEqual(digestTensors(await s.get(ref)), digestTensors(makeSample(i, 8192, 256)), `${f} is complete`);
      }
    }
  });

  it('auth: attach needs the right secret; refs are MAC-checked on the data path', async () => {
    const dir = freshDir();
    const s = await attach(dir);
    const base = { dir, storeId: 'store-a', job: 'job1' };
    await rejectsWith(attach(dir, {}, AuthPolicy.fromSecret('a-wrong-secret-of-enough-length')), AuthError);
    await rejectsWith(attach(dir, {}, AuthPolicy.disabled()), AuthError);
    assert.equal((await runChild({ ...base, op: 'attach' }, 'a-wrong-secret-of-enough-length')).error?.code, 'AUTH');
    assert.equal((await runChild({ ...base, op: 'attach' }, null)).error?.code, 'AUTH');
    assert.deepEqual((await runChild({ ...base, op: 'attach' }, SECRET)).ok, true);
    await rejectsWith(attach(dir, { storeId: 'store-b' }), InvalidArgumentError, /holds store "store-a"/);
    await rejectsWith(attach(dir, { job: 'job2' }), InvalidArgumentError, /belongs to job "job1"/);
    // A store made without auth cannot be attached with auth on (fails closed).
    const open0 = freshDir();
    const plain = await attach(open0, {}, AuthPolicy.disabled());
    await rejectsWith(attach(open0), AuthError);
    const pref = await plain.put('p', makeSample(1, 4, 4));
    assert.equal(pref.mac, undefined);
    assert.equal((await plain.get(pref)).ids!.shape[0], 4);
    // Data path.
    const ref = await s.put('x', makeSample(3, 16, 8));
    assert.equal((await s.get(ref)).ids!.shape[0], 16);
    const stranger = AuthPolicy.fromSecret('a-wrong-secret-of-enough-length');
    await rejectsWith(s.get(stranger.signRef(ref)), AuthError, /^authentication failed$/);
    await rejectsWith(s.get({ ...ref, mac: undefined }), AuthError);
    await rejectsWith(s.get({ ...ref, numTokens: 17 }), AuthError);
    await rejectsWith(s.release({ ...ref, mac: undefined }), AuthError);
    assert.equal(published(dir).length, 1, 'a forged release deleted nothing');
    const forged = stranger.signRef(ref);
    assert.equal((await runChild({ ...base, op: 'get', ref: b64(forged) }, SECRET)).error?.code, 'AUTH');
    assert.equal((await runChild({ ...base, op: 'release', ref: b64(forged) }, SECRET)).error?.code, 'AUTH');
    assert.deepEqual((await runChild({ ...base, op: 'get', ref: b64(ref), names: ['ids'] }, SECRET)).ok, digestTensors({ ids: makeSample(3, 16, 8).ids! }));
  });

  for (const blockChecksum of ['blake3', 'sha256'] as const) it(`checksums (${blockChecksum} blocks): corrupted bytes are ChecksumError; unaffected blocks still read; truncation is DecodeError`, async () => {
    const dir = freshDir();
    const s = await attach(dir, { blockBytes: 4096, blockChecksum });
    const T = 256, H = 32; // aux rows are 96 bf16 = 192 bytes -> 21 rows per 4 KiB block
    const ref = await s.put('c', makeSample(5, T, H));
    const path = join(dir, `c.g${ref.generation}.safetensors`);
    const fh = await open(path, 'r');
    const h = await readHeader(fh, path);
    await fh.close();
    const aux = h.entries.get('aux')!;
    // Flip one byte in row 55 of aux (block 2 = rows 42..62).
    const at = h.dataStart + aux.begin + 55 * 192 + 3;
    const fd = openSync(path, 'r+');
    const one = Buffer.alloc(1);
    readSync(fd, one, 0, 1, at);
    writeSync(fd, Buffer.from([one[0]! ^ 0x40]), 0, 1, at);
    closeSync(fd);
    await rejectsWith(s.get(ref), ChecksumError, /"aux" block 2/);
    await rejectsWith(s.get(ref, { names: ['aux'], rows: [50, 60] }), ChecksumError);
    await rejectsWith(s.get(ref, { names: ['aux'], rows: [62, 64] }), ChecksumError);
    const ok = await s.get(ref, { names: ['aux', 'ids'], rows: [63, 120] });
    const want = sliceRows(makeSample(5, T, H), 63, 120);
    assert.deepEqual(digestTensors(ok), digestTensors({ aux: want.aux!, ids: want.ids! }));
    assert.equal((await s.get(ref, { names: ['last'] })).last!.shape[0], T, 'other tensors are fine');
    // verify: false skips the check (the caller asked for it).
    assert.equal((await s.get(ref, { verify: false })).aux!.shape[0], T);
    // A header edit (manifest) no longer matches the ref's checksum.
    const ref2 = await s.put('d', makeSample(6, 8, 4));
    const p2 = join(dir, `d.g${ref2.generation}.safetensors`);
    const buf = readFileSync(p2);
    const idx = /[0-9a-f]{64}/.exec(buf.toString('latin1'))!.index; // the first block digest of the manifest
    buf[idx] = buf[idx] === 0x61 ? 0x62 : 0x61;
    writeFileSync(p2, buf);
    await rejectsWith(s.get(ref2), ChecksumError, /manifest does not match/);
    // Truncation.
    const ref3 = await s.put('e', makeSample(7, 64, 16));
    const p3 = join(dir, `e.g${ref3.generation}.safetensors`);
    const whole = readFileSync(p3);
    writeFileSync(p3, whole.subarray(0, whole.length - 100));
    await rejectsWith(s.get(ref3), DecodeError, /truncated|past the end/);
  });

  for (const blockChecksum of ['blake3', 'sha256'] as const) it(`a large get (${blockChecksum}) reads and hashes in overlapping runs; a corrupt late block still fails`, async () => {
    const dir = freshDir();
    const s = await attach(dir, { blockChecksum });
    const x = new Uint8Array(24 << 20).map((_, i) => (i * 2654435761) >>> 24);
    const ref = await s.put('big', { x: { dtype: 'u8', shape: [x.length], data: x } });
    assert.ok(Buffer.from((await s.get(ref)).x!.data as Uint8Array).equals(Buffer.from(x)), 'the bytes come back whole');
    const path = join(dir, `big.g${ref.generation}.safetensors`);
    const fh = await open(path, 'r');
    const h = await readHeader(fh, path);
    await fh.close();
    const at = h.dataStart + h.entries.get('x')!.begin + (17 << 20) + 5; // block 17, in the third 8 MiB run
    const fd = openSync(path, 'r+');
    writeSync(fd, Buffer.from([x[(17 << 20) + 5]! ^ 1]), 0, 1, at);
    closeSync(fd);
    await rejectsWith(s.get(ref), ChecksumError, /"x" block 17/);
    assert.equal((await s.get(ref, { rows: [0, 16 << 20] })).x!.shape[0], 16 << 20, 'rows before it verify');
  });

  it('a sample written with sha256 blocks (the v 1 format of older writers) reads under the blake3 default', async () => {
    const dir = freshDir();
    const old = await attach(dir, { blockChecksum: 'sha256', blockBytes: 4096 });
    const ref = await old.put('legacy', makeSample(9, 64, 16));
    const path = join(dir, `legacy.g${ref.generation}.safetensors`);
    const fh = await open(path, 'r');
    const manifest = JSON.parse((await readHeader(fh, path)).metadata['draftwire.manifest']!) as { v: number; alg?: string };
    await fh.close();
    assert.deepEqual([manifest.v, manifest.alg], [1, undefined], 'the old format has no alg');
    const s = await attach(dir);
    assert.deepEqual(digestTensors(await s.get(ref)), digestTensors(makeSample(9, 64, 16)));
    assert.deepEqual(digestTensors(await s.get(ref, { names: ['aux'], rows: [5, 40] })), digestTensors({ aux: sliceRows(makeSample(9, 64, 16), 5, 40).aux! }));
    const fresh = await s.put('new', makeSample(9, 64, 16));
    const p2 = join(dir, `new.g${fresh.generation}.safetensors`);
    const fh2 = await open(p2, 'r');
    const m2 = JSON.parse((await readHeader(fh2, p2)).metadata['draftwire.manifest']!) as { v: number; alg?: string };
    await fh2.close();
    assert.deepEqual([m2.v, m2.alg], [2, 'blake3']);
  });

  it('partial reads by names and rows, private copies by default, argument checks', async () => {
    const dir = freshDir();
    const s = await attach(dir, { blockBytes: 1000 });
    const T = 97, H = 16;
    const want = makeSample(11, T, H);
    const ref = await s.put('p', want);
    for (const [r0, r1] of [[0, T], [0, 1], [96, 97], [10, 10], [5, 33], [31, 64], [13, 14]] as [number, number][]) {
      for (const view of [false, true]) {
        const got = await s.get(ref, { rows: [r0, r1], view });
        assert.deepEqual(digestTensors(got), digestTensors(sliceRows(want, r0, r1)), `rows [${r0}, ${r1}) view=${view}`);
      }
    }
    const names = await s.get(ref, { names: ['mask'] });
    assert.deepEqual(Object.keys(names), ['mask']);
    // Private copies: mutating one result changes neither the file nor another result.
    const a = await s.get(ref, { names: ['last'], rows: [3, 9] });
    (a.last!.data as Float32Array).fill(42);
    const b = await s.get(ref, { names: ['last'], rows: [3, 9] });
    assert.deepEqual(digestTensors(b), digestTensors({ last: sliceRows(want, 3, 9).last! }));
    assert.equal(a.last!.data.byteLength, 6 * H * 4, 'default results own exactly their bytes');
    assert.notEqual(a.last!.data.buffer, b.last!.data.buffer);
    await rejectsWith(s.get(ref, { names: ['nope'] }), InvalidArgumentError, /no tensor "nope"/);
    await rejectsWith(s.get(ref, { rows: [5, 98] }), InvalidArgumentError, /outside/);
    await rejectsWith(s.get(ref, { rows: [6, 5] }), InvalidArgumentError);
    await rejectsWith(s.get({ ...ref, uri: ref.uri.replace('store-a', 'store-z') }), InvalidArgumentError, /does not belong/);
    // put argument checks.
    await rejectsWith(s.put('bad/id', want), InvalidArgumentError);
    await rejectsWith(s.put('.tmp-1-x', want), InvalidArgumentError, /must not start with "."/);
    // Ids that look like other files' suffixes still map to their own files.
    for (const id of ['a.g5', 'a.g5.safetensors', 'x.lock', 'y.gen']) {
      const r = await s.put(id, makeSample(2, 3, 2));
      assert.equal((await s.get(r)).ids!.shape[0], 3, id);
    }
    assert.equal((await s.gc(Date.now() + 1e9)).reclaimed, 0, 'gc mistakes none of them for leftovers');
    assert.equal((await s.usage()).samples, 5);
    await rejectsWith(s.put('x', {}), InvalidArgumentError);
    await rejectsWith(s.put('x', { t: tensor('f64', [2]) }), InvalidArgumentError, /dtype f64/);
    await rejectsWith(s.put('x', { t: { dtype: 'f32', shape: [3], data: new Float32Array(2) } as Tensor }), InvalidArgumentError);
  });

  it('hashing a large sample yields to the event loop (put and get)', async () => {
    const s = await attach(freshDir());
    const big = { x: { dtype: 'u8' as const, shape: [48 << 20], data: new Uint8Array(48 << 20).fill(1) } };
    let ticks = 0;
    let on = true;
    const spin = () => { if (on) { ticks++; setImmediate(spin); } };
    spin();
    const ref = await s.put('big', big);
    const putTicks = ticks;
    await s.get(ref);
    on = false;
    assert.ok(putTicks >= 4, `put let the loop run ${putTicks} times`);
    assert.ok(ticks - putTicks >= 4, `get let the loop run ${ticks - putTicks} times`);
  });

  it('watermarks: put above high is BackpressureError (retryable) until usage falls to low; nothing is evicted', async () => {
    const dir = freshDir();
    const MiB = 1 << 20;
    const s = await attach(dir, { highWatermarkBytes: 3.5 * MiB, lowWatermarkBytes: 1.5 * MiB });
    const sample = (seed: number) => ({ x: { dtype: 'u8' as const, shape: [MiB], data: new Uint8Array(MiB).fill(seed) } });
    const refs = [await s.put('w0', sample(0)), await s.put('w1', sample(1)), await s.put('w2', sample(2))];
    const e = await rejectsWith(s.put('w3', sample(3)), BackpressureError);
    assert.equal(e.retryable, true);
    assert.equal((await s.backpressure()).pressured, true);
    // Another process's put is refused as well (usage is the directory's, not per process).
    const child = await runChild({ dir, storeId: 'store-a', job: 'job1', op: 'put', sampleId: 'c1', seed: 1, T: 4096, H: 64, highWatermarkBytes: 3.5 * MiB }, SECRET);
    assert.equal(child.error?.code, 'BACKPRESSURE');
    await s.release(refs[0]!);
    assert.ok((await s.usage()).bytes > 1.5 * MiB);
    await rejectsWith(s.put('w3', sample(3)), BackpressureError, /resumes at/);
    await s.release(refs[1]!);
    assert.equal((await s.backpressure()).pressured, false);
    await s.put('w3', sample(3));
    // Unconsumed samples were never touched.
    assert.equal((await s.get(refs[2]!)).x!.data[0], 2);
    assert.deepEqual(published(dir).map((f) => f.split('.')[0]), ['w2', 'w3']);
    const health = await s.health();
    assert.equal(health.ok, true);
    assert.equal(health.samples, 2);
    assert.equal(health.tombstones, 2);
  });

  it('write failures (disk full, EIO) are StoreWriteError with nothing published', async () => {
    // A real full disk when this machine lets us mount a small tmpfs; otherwise an injected ENOSPC.
    const mnt = join(root, 'tiny');
    mkdirSync(mnt);
    const mounted = spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=2m', 'tmpfs', mnt]).status === 0;
    try {
      const inject = mounted ? {} : { faults: { afterChunk: () => { throw Object.assign(new Error('no space left on device'), { code: 'ENOSPC' }); } } };
      const s = await attach(join(mnt, 'store'), { writeChunkBytes: 256 * 1024, ...inject });
      const big = { x: { dtype: 'u8' as const, shape: [4 << 20], data: new Uint8Array(4 << 20) } };
      const e = await rejectsWith(s.put('big', big), StoreWriteError, /ENOSPC \(disk full\); nothing was published/);
      assert.equal(e.retryable, true);
      assert.deepEqual(published(join(mnt, 'store')), []);
      assert.ok(!files(join(mnt, 'store')).some((f) => f.startsWith('.tmp-') || f.endsWith('.lock')), `no leftovers (${mounted ? 'tmpfs' : 'injected'})`);
      if (mounted) {
        const small = await s.put('small', { x: { dtype: 'u8', shape: [1000], data: new Uint8Array(1000).fill(5) } });
        assert.equal((await s.get(small)).x!.data[999], 5, 'the store still works after a failed write');
      }
    } finally {
      if (mounted) spawnSync('umount', [mnt]);
    }
    // EIO at the rename step.
    const dir = freshDir();
    const s2 = await attach(dir, { faults: { beforeRename: () => { throw Object.assign(new Error('i/o error'), { code: 'EIO' }); } } });
    await rejectsWith(s2.put('y', makeSample(1, 8, 4)), StoreWriteError, /EIO/);
    assert.deepEqual(published(dir), []);
    assert.ok(!files(dir).some((f) => f.startsWith('.tmp-') || f.endsWith('.lock')));
  });

  it('abort, tombstone TTL, stale locks and leftovers are handled by gc', async () => {
    const dir = freshDir();
    const s = await attach(dir, { tombstoneTtlMs: 10_000, lockStaleMs: 5_000, lockTimeoutMs: 2_000 });
    const ref = await s.put('ab', makeSample(1, 8, 4));
    assert.equal(await s.abort('ab', 'commit failed'), true);
    await rejectsWith(s.get(ref), SampleGoneError, /aborted \(commit failed\)/);
    assert.equal(await s.abort('ab', 'again'), false);
    assert.equal(await s.abort('never-put', 'x'), false);
    // A lock left by a dead writer: a fresh one blocks (until timeout), a stale one is broken.
    const lock = join(dir, 'lk.lock');
    writeFileSync(lock, 'other-host 1 0\n');
    await rejectsWith(s.put('lk', makeSample(1, 2, 2)), StoreWriteError, /locked by another writer/);
    const past = (Date.now() - 6_000) / 1000;
    utimesSync(lock, past, past);
    assert.ok((await s.put('lk', makeSample(1, 2, 2))).generation > 0);
    // A leftover older generation (writer died before superseding it) is reclaimed.
    const r1 = await s.put('lo', makeSample(1, 2, 2));
    const oldPath = join(dir, `lo.g${r1.generation - 5}.safetensors`);
    writeFileSync(oldPath, 'leftover');
    const old = (Date.now() - 120_000) / 1000;
    utimesSync(oldPath, old, old);
    const now = Date.now();
    const st = await s.gc(now);
    assert.equal(st.reclaimed, 1);
    assert.ok(!existsSync(oldPath));
    assert.equal(st.tombstones, 0, 'tombstones are kept for their TTL');
    await rejectsWith(s.get(ref), SampleGoneError);
    const later = await s.gc(now + 70_000);
    assert.equal(later.tombstones, 2, 'the abort and the reclaimed leftover tombstones');
    assert.equal(later.genRecords, 1, 'the .gen record of the fully gone sample');
    // With the tombstone gone a get is still SampleGoneError (never ENOENT).
    await rejectsWith(s.get(ref), SampleGoneError, /gone/);
    assert.equal((await s.get(r1)).ids!.shape[0], 2, 'live samples survive gc');
  });
});
