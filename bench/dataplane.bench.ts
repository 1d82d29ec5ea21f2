// The HTTP data plane between two processes over loopback, against a raw TCP stream of the
// same bytes between the same two processes in the same run. The producer's process
// (test/support/dataplane-child.ts) writes the samples into its own store directory and serves
// them over HTTP and, for the baseline, as a raw TCP stream ("<offset> <length>\n" -> those
// bytes of the file, read in the same 1 MiB chunks). This process reads them: through
// HttpFeatureStore (undici keep-alive pool, frame parsing, sha256 of every block, straight into
// fresh exactly-sized buffers) and, for the baseline, from one kept-alive socket into a fresh
// buffer of the same size. Samples of 1 MiB and 64 MiB (bf16 aux [T, 3072] + f32 last [T, 1024])
// and a sequence-parallel slice (a quarter of the rows of both, as an sp = 4 rank reads it).
// GB/s counts the tensor bytes delivered. Auth on (request tokens, ref MACs).
// --hosts (root): the producer runs in a network namespace of its own (test/support/netns.ts),
// so both streams cross a veth pair and a bridge between two network stacks, as between hosts.
// --tls: the data plane serves HTTPS with certificates made by `draftwire certs` and asks for
// the reader's (mutual TLS, as nodes with the job's CA do); the raw baseline stays plain TCP.
// Run: node --import tsx bench/dataplane.bench.ts [--hosts] [--tls] [--json]
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { AuthPolicy } from '../src/wire/auth.ts';
import { decodeSampleRef, type SampleRef } from '../src/wire/sampleref.ts';
import { SharedDirFeatureStore } from '../src/store/shared-dir.ts';
import { HttpFeatureStore } from '../src/store/http-store.ts';
import { readHeader } from '../src/store/safetensors.ts';
import { blockSpan, parseManifest } from '../src/store/checksum.ts';
import { open } from 'node:fs/promises';
import { Netns } from '../test/support/netns.ts';
import { makeCerts } from '../cluster/commands/certs.ts';
import { readTlsFiles } from '../src/tls.ts';
import { Reporter } from './support/report.ts';

const report = Reporter.forBench(import.meta.url);
const SECRET = 'dataplane-bench-secret-0123456789abcdef';
const MB = 1 << 20;
const CHILD = join(import.meta.dirname, '..', 'test', 'support', 'dataplane-child.ts');
const root = mkdtempSync(join(tmpdir(), 'dw-bench-dataplane-'));
const auth = AuthPolicy.fromSecret(SECRET);

const net = process.argv.includes('--hosts') ? Netns.create(1) : null;
const at = net ? net.hosts[0]!.addr : '127.0.0.1';
const TLS = process.argv.includes('--tls');
const certs = TLS ? await makeCerts({ out: join(root, 'certs'), hosts: [at] }) : null;
const tlsFiles = certs ? { ca: certs.ca.cert, cert: certs.nodes[0]!.cert, key: certs.nodes[0]!.key } : undefined;
const childArgs = ['--import', 'tsx', CHILD, JSON.stringify({ dir: join(root, 'producer'), storeId: 'bench', job: 'bench', raw: true, host: at, tls: tlsFiles })];
const child = spawn(net ? 'ip' : process.execPath, net ? ['netns', 'exec', net.hosts[0]!.ns, process.execPath, ...childArgs] : childArgs, {
  env: { ...process.env, DRAFTWIRE_SECRET: SECRET, DRAFTWIRE_SECRET_FILE: '' }, stdio: ['pipe', 'pipe', 'inherit'],
});
let lineBuf = '';
const waiters: ((x: any) => void)[] = [];
child.stdout!.on('data', (d) => {
  lineBuf += d;
  let nl: number;
  while ((nl = lineBuf.indexOf('\n')) >= 0) { const x = JSON.parse(lineBuf.slice(0, nl)); lineBuf = lineBuf.slice(nl + 1); waiters.shift()?.(x); }
});
const next = () => new Promise<any>((r) => waiters.push(r));
const serving = (await next()).serving as { port: number; rawPort: number };

async function put(sampleId: string, bytes: number): Promise<{ ref: SampleRef; file: string }> {
  const p = next();
  child.stdin!.write(JSON.stringify({ op: 'put', sampleId, bytes, seed: 1 }) + '\n');
  const r = await p;
  if (!r.ok) throw new Error(JSON.stringify(r));
  return { ref: decodeSampleRef(Buffer.from(r.ok.ref, 'base64')), file: r.ok.file };
}

// The raw baseline's client: one socket kept open, each fetch into a fresh buffer.
const sock: Socket = await new Promise((resolve, reject) => { const s = connect(serving.rawPort, at, () => resolve(s)); s.once('error', reject); });
sock.setNoDelay(true);
let rawSink: { buf: Uint8Array; off: number; done: () => void; ranges: number } | null = null;
sock.on('data', (d: Buffer) => {
  const s = rawSink!;
  s.buf.set(d, s.off);
  s.off += d.byteLength;
  if (s.off === s.buf.byteLength) { rawSink = null; s.done(); }
});
function rawFetch(ranges: { offset: number; length: number }[]): Promise<Uint8Array> {
  const total = ranges.reduce((n, r) => n + r.length, 0);
  return new Promise((resolve) => {
    const buf = new Uint8Array(total);
    rawSink = { buf, off: 0, done: () => resolve(buf), ranges: ranges.length };
    sock.write(ranges.map((r) => `${r.offset} ${r.length}\n`).join(''));
  });
}

/** The file ranges holding rows [r0, r1) of every tensor (the useful bytes, without block rounding). */
async function rangesOf(file: string, rows: [number, number] | null): Promise<{ offset: number; length: number }[]> {
  const fh = await open(file, 'r');
  try {
    const h = await readHeader(fh, file);
    const m = parseManifest(h.metadata['draftwire.manifest']!, file);
    return m.tensors.map((t) => {
      const e = h.entries.get(t.name)!;
      const [r0, r1] = rows ?? [0, t.shape[0]!];
      const rowBytes = blockSpan(t, m.blockBytes, 0, 0).rowBytes;
      return { offset: h.dataStart + e.begin + r0 * rowBytes, length: (r1 - r0) * rowBytes };
    });
  } finally { await fh.close(); }
}

async function median(iters: number, fn: () => Promise<unknown>): Promise<number> {
  for (let i = 0; i < Math.min(3, iters); i++) await fn(); // warm up (page cache, pool, JIT)
  const times: number[] = [];
  for (let i = 0; i < iters; i++) { const t0 = performance.now(); await fn(); times.push((performance.now() - t0) / 1000); }
  times.sort((a, b) => a - b);
  return times[Math.floor(times.length / 2)]!;
}

const reader = new HttpFeatureStore({ auth, tls: tlsFiles ? readTlsFiles(tlsFiles, 'bench') : null, local: await SharedDirFeatureStore.attach({ dir: join(root, 'reader'), storeId: 'bench', job: 'bench', auth, producer: { node: 'reader', actor: 'bench', incarnation: 1 } }) });
interface Row { case: string; bytes: number; httpGBps: number; httpNoVerifyGBps: number; rawTcpGBps: number; ratio: number; httpMs: number; rawMs: number }
const rows: Row[] = [];
try {
  const cases: [string, number, number, boolean][] = [['1 MiB sample', MB, 200, false], ['64 MiB sample', 64 * MB, 12, false], ['64 MiB sample, sp=4 slice', 64 * MB, 24, true]];
  for (const [label, size, iters, slice] of cases) {
    const { ref, file } = await put(`s-${size}-${slice ? 'sp' : 'full'}`, size);
    const T = ref.features.aux!.shape[0]!;
    const r: [number, number] | null = slice ? [Math.floor(T / 4), Math.floor(T / 2)] : null;
    const ranges = await rangesOf(file, r);
    const bytes = ranges.reduce((n, x) => n + x.length, 0);
    const opts = r ? { rows: r } : {};
    const got = await reader.get(ref, opts);
    if (Object.values(got).reduce((n, t) => n + t.data.byteLength, 0) !== bytes) throw new Error('byte count mismatch');
    const http = await median(iters, () => reader.get(ref, opts));
    const httpNv = await median(iters, () => reader.get(ref, { ...opts, verify: false }));
    const rawT = await median(iters, () => rawFetch(ranges));
    rows.push({ case: label, bytes, httpGBps: bytes / http / 1e9, httpNoVerifyGBps: bytes / httpNv / 1e9, rawTcpGBps: bytes / rawT / 1e9, ratio: rawT / http, httpMs: http * 1e3, rawMs: rawT * 1e3 });
  }
} finally {
  await reader.close();
  sock.destroy();
  child.stdin!.end();
  child.kill('SIGTERM');
  net?.destroySync();
  rmSync(root, { recursive: true, force: true });
}
const transport = (net ? 'two network namespaces (veth + bridge)' : 'loopback, two processes') + (TLS ? ', HTTPS (mutual TLS)' : '');
report.context({ transport });
for (const x of rows) {
  const ctx = { case: x.case, bytes: x.bytes };
  const raw = report.add({ name: `raw TCP stream, ${x.case}`, value: x.rawTcpGBps, unit: 'GB/s', ...ctx });
  report.add({ name: `HTTP get (verified), ${x.case}`, value: x.httpGBps, unit: 'GB/s', baseline: raw, ...ctx });
  report.add({ name: `HTTP get (no verify), ${x.case}`, value: x.httpNoVerifyGBps, unit: 'GB/s', baseline: raw, ...ctx });
}
report.log(`HTTP data plane (HttpFeatureStore <- StoreHttpServer) vs raw TCP stream of the same bytes, ${transport}, same run`);
report.markdown(['case', 'tensor bytes', 'HTTP GB/s (verified)', 'HTTP GB/s (no verify)', 'raw TCP GB/s', 'HTTP / raw', 'HTTP ms', 'raw ms'],
  rows.map((x) => [x.case, String(x.bytes), x.httpGBps.toFixed(2), x.httpNoVerifyGBps.toFixed(2), x.rawTcpGBps.toFixed(2), `${(x.ratio * 100).toFixed(0)}%`, x.httpMs.toFixed(2), x.rawMs.toFixed(2)]));
report.end();
process.exit(0);
