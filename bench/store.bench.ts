// SharedDirFeatureStore bandwidth against the raw filesystem, same disk, same run.
// put = checksum + temp write + fsync + rename + dir fsync; get = read + verify (and without
// verify). Baselines: raw write+fsync of a file of the same size, raw read of it. The store
// writes BLAKE3 block digests (native); a second store writing sha256 blocks (the v 1 format)
// is measured in the same run for comparison.
// Reads come from the page cache in both cases (no cache dropping), so they compare the
// software path, not the device. get returns private buffers, so it pays for first-touching
// fresh memory; the 'fresh buffer' raw read pays the same, the 'reused buffer' one does not. Run: node --import tsx bench/store.bench.ts [--json] [dir]
// --json: one JSON line per figure (bench/support/report.ts): put against the raw write + fsync,
// get against the raw read into a fresh buffer.
import { createHash } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { open, unlink } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { AuthPolicy } from '../src/wire/auth.ts';
import { blake3Blocks } from '../src/native/addon.ts';
import { SharedDirFeatureStore } from '../src/store/shared-dir.ts';
import type { Tensor } from '../src/tensor.ts';
import { Reporter } from './support/report.ts';

const report = Reporter.forBench(import.meta.url);
const base = process.argv.slice(2).find((a) => !a.startsWith('--')) ?? tmpdir();
const dir = mkdtempSync(join(base, 'dw-bench-store-'));
const MB = 1 << 20;

function sample(bytes: number): Record<string, Tensor> {
  // bf16 aux [T, 3H] + f32 last [T, H] with H = 256: 3.5 KiB per token... sized to `bytes`.
  const T = Math.max(1, Math.floor(bytes / (3 * 256 * 2 + 256 * 4)));
  const aux = new Uint16Array(T * 3 * 256);
  const last = new Float32Array(T * 256);
  for (let i = 0; i < aux.length; i++) aux[i] = (i * 2654435761) & 0xffff;
  for (let i = 0; i < last.length; i++) last[i] = i % 977;
  return { aux: { dtype: 'bf16', shape: [T, 768], data: aux }, last: { dtype: 'f32', shape: [T, 256], data: last } };
}

async function rawWrite(path: string, buf: Uint8Array): Promise<void> {
  const fh = await open(path, 'w');
  try { await fh.write(buf, 0, buf.byteLength, 0); await fh.sync(); } finally { await fh.close(); }
}
async function rawRead(path: string, n: number, into?: Uint8Array): Promise<Uint8Array> {
  const fh = await open(path, 'r');
  try { const b = into ?? new Uint8Array(n); await fh.read(b, 0, n, 0); return b; } finally { await fh.close(); }
}

async function time(n: number, fn: (i: number) => Promise<unknown>): Promise<number> {
  await fn(-1); // warm up
  const t0 = performance.now();
  for (let i = 0; i < n; i++) await fn(i);
  return (performance.now() - t0) / 1000 / n;
}

const attach = (blockChecksum: 'blake3' | 'sha256') => SharedDirFeatureStore.attach({
  dir: join(dir, blockChecksum), storeId: 'bench', job: 'bench', auth: AuthPolicy.fromSecret('bench-secret-0123456789abcdef'), producer: { node: 'n', actor: 'bench', incarnation: 1 }, blockChecksum,
});
const store = await attach('blake3');
const shaStore = await attach('sha256');

/** put, get (verify) and get (no verify) seconds per sample of one store. */
async function storeTimes(s: SharedDirFeatureStore, t: Record<string, Tensor>, iters: number) {
  const refs: Awaited<ReturnType<typeof s.put>>[] = [];
  const put = await time(iters, async (i) => { const r = await s.put(`s${i + 1}`, t); if (i >= 0) refs.push(r); });
  const get = await time(iters, (i) => s.get(refs[Math.max(0, i)]!));
  const getNoVerify = await time(iters, (i) => s.get(refs[Math.max(0, i)]!, { verify: false }));
  const part = await time(iters, (i) => s.get(refs[Math.max(0, i)]!, { names: ['aux'], rows: [0, Math.max(1, Math.floor(t.aux!.shape[0]! / 8))] }));
  for (const r of refs) await s.release(r);
  await s.gc(Date.now() + 1e9);
  return { put, get, getNoVerify, part };
}
const rows: string[][] = [];
const gbps = (bytes: number, s: number) => (bytes / s / 1e9).toFixed(2);
try {
  for (const [label, size, iters] of [['1 MiB', MB, 40], ['64 MiB', 64 * MB, 4]] as const) {
    const t = sample(size);
    const bytes = Object.values(t).reduce((a, x) => a + x.data.byteLength, 0);
    const flat = new Uint8Array(bytes);
    const p = join(dir, 'raw.bin');
    const wRaw = await time(iters, () => rawWrite(p, flat));
    const rRaw = await time(iters, () => rawRead(p, bytes));
    const reuse = new Uint8Array(bytes);
    const rRawReuse = await time(iters, () => rawRead(p, bytes, reuse));
    const hash = await time(iters, async () => createHash('sha256').update(flat).digest());
    await unlink(p);
    const lens = Array.from({ length: Math.ceil(bytes / MB) }, (_, b) => Math.min(MB, bytes - b * MB));
    const b3 = await time(iters, () => blake3Blocks(flat, lens));
    const sha = await storeTimes(shaStore, t, iters);
    const { put: wStore, get: rStore, getNoVerify: rNoVerify, part: rPart } = await storeTimes(store, t, iters);
    const ctx = { sample: label, bytes, iters }, gb = (s: number) => bytes / s / 1e9;
    const rawW = report.add({ name: `raw write+fsync, ${label}`, value: gb(wRaw), unit: 'GB/s', ...ctx });
    const rawR = report.add({ name: `raw read, fresh buffer, ${label}`, value: gb(rRaw), unit: 'GB/s', ...ctx });
    report.add({ name: `raw read, reused buffer, ${label}`, value: gb(rRawReuse), unit: 'GB/s', baseline: rawR, ...ctx });
    report.add({ name: `sha256, ${label}`, value: gb(hash), unit: 'GB/s', baseline: rawR, ...ctx });
    report.add({ name: `blake3 (native, 1 MiB blocks in parallel), ${label}`, value: gb(b3), unit: 'GB/s', baseline: rawR, ...ctx });
    report.add({ name: `store put, sha256 blocks, ${label}`, value: gb(sha.put), unit: 'GB/s', baseline: rawW, ...ctx });
    report.add({ name: `store get (verify), sha256 blocks, ${label}`, value: gb(sha.get), unit: 'GB/s', baseline: rawR, ...ctx });
    report.add({ name: `store put, ${label}`, value: gb(wStore), unit: 'GB/s', baseline: rawW, ...ctx });
    report.add({ name: `store get (verify), ${label}`, value: gb(rStore), unit: 'GB/s', baseline: rawR, ...ctx });
    report.add({ name: `store get (no verify), ${label}`, value: gb(rNoVerify), unit: 'GB/s', baseline: rawR, ...ctx });
    report.add({ name: `store get of 1/8 rows of aux, ${label}`, value: rPart * 1e3, unit: 'ms', ...ctx });
    rows.push([label, gbps(bytes, hash), gbps(bytes, b3), gbps(bytes, wRaw), gbps(bytes, sha.put), gbps(bytes, wStore), gbps(bytes, rRawReuse), gbps(bytes, rRaw), gbps(bytes, sha.get), gbps(bytes, rStore), gbps(bytes, rNoVerify), `${(rPart * 1e3).toFixed(2)} ms`, `${(wStore * 1e3).toFixed(1)} / ${(rStore * 1e3).toFixed(1)} ms`]);
  }
} finally {
  rmSync(dir, { recursive: true, force: true });
}
report.context({ dir: base });
report.log(`dir: ${base} (page cache warm for reads; fsync on for writes)`);
report.markdown(['sample', 'sha256 GB/s', 'blake3 GB/s', 'raw write+fsync GB/s', 'store put, sha256 GB/s', 'store put GB/s', 'raw read, reused buffer GB/s', 'raw read, fresh buffer GB/s', 'store get, sha256 GB/s (verify)', 'store get GB/s (verify)', 'store get GB/s (no verify)', 'get 1/8 rows of aux', 'put / get latency'], rows);
report.end();
