// A producer's node for the data plane tests and bench: its own store directory, served over
// HTTP on 127.0.0.1 or spec.host (a free port), refs carrying its http:// uri (HTTPS and https://
// with spec.tls: PEM paths). Secret from the environment.
// Usage: node --import tsx test/support/dataplane-child.ts '<json spec>'
// Prints {"serving": {port, address}} once listening, then one JSON line per command read on
// stdin: {"op":"put","sampleId","seed","T","H"} (or "bytes" for a bench sample) -> {"ok": {ref
// (base64), file}}, {"op":"stats"} -> {"ok": the server's stats}; errors as {"error"}.
// With spec.rawPort it also serves a raw TCP stream for the bench's baseline: a client sends
// "<offset> <length>\n" and gets exactly those bytes of the file last put, and nothing else.
import { createServer, type Socket } from 'node:net';
import { createInterface } from 'node:readline';
import { open } from 'node:fs/promises';
import { join } from 'node:path';
import { AuthPolicy } from '../../src/wire/auth.ts';
import { DraftwireError } from '../../src/errors.ts';
import { encodeSampleRef } from '../../src/wire/sampleref.ts';
import { SharedDirFeatureStore } from '../../src/store/shared-dir.ts';
import { StoreHttpServer } from '../../src/store/http-server.ts';
import type { Tensor } from '../../src/tensor.ts';
import { readTlsFiles, type TlsFiles } from '../../src/tls.ts';
import { makeSample } from './store-fixtures.ts';

interface Spec { dir: string; storeId: string; job: string; blockBytes?: number; raw?: boolean; tls?: TlsFiles; /** Listening address (default 127.0.0.1; a namespace host's own in the cross-host bench). */ host?: string }
interface Cmd { op: 'put' | 'stats'; sampleId: string; seed?: number; T?: number; H?: number; bytes?: number }

const out = (x: unknown) => process.stdout.write(JSON.stringify(x) + '\n');

/** A bench sample of about `bytes`: bf16 aux [T, 3H] and f32 last [T, H], H = 1024. */
function benchSample(bytes: number, seed: number): Record<string, Tensor> {
  const H = 1024;
  const T = Math.max(1, Math.round(bytes / (3 * H * 2 + H * 4)));
  const aux = new Uint16Array(T * 3 * H);
  const last = new Float32Array(T * H);
  for (let i = 0; i < aux.length; i++) aux[i] = (i * 2654435761 + seed) & 0xffff;
  for (let i = 0; i < last.length; i++) last[i] = (i + seed) % 977;
  return { aux: { dtype: 'bf16', shape: [T, 3 * H], data: aux }, last: { dtype: 'f32', shape: [T, H], data: last } };
}

async function main(): Promise<void> {
  const spec = JSON.parse(process.argv[2] ?? '{}') as Spec;
  const auth = AuthPolicy.fromEnv();
  const store = await SharedDirFeatureStore.attach({
    dir: spec.dir, storeId: spec.storeId, job: spec.job, auth, producer: { node: `child-${process.pid}`, actor: 'dataplane-child', incarnation: 1 },
    blockBytes: spec.blockBytes, fsync: false,
  });
  const pem = spec.tls ? readTlsFiles(spec.tls, 'data plane TLS') : null;
  const srv = await StoreHttpServer.start({ store, auth, host: spec.host ?? '127.0.0.1', port: 0, tls: pem ? { cert: pem.cert!, key: pem.key!, ca: pem.ca ?? null } : null });
  store.advertiseAt(srv.host, srv.port, { tls: !!pem });
  let lastFile: string | null = null;
  let rawPort: number | null = null;
  if (spec.raw) {
    const raw = createServer((sock: Socket) => {
      let line = '';
      sock.on('data', (d: Buffer) => {
        line += d.toString('latin1');
        let nl: number;
        while ((nl = line.indexOf('\n')) >= 0) {
          const [off, len] = line.slice(0, nl).split(' ').map(Number) as [number, number];
          line = line.slice(nl + 1);
          void sendRange(sock, lastFile!, off, len);
        }
      });
      sock.on('error', () => undefined);
    });
    await new Promise<void>((r) => raw.listen(0, spec.host ?? '127.0.0.1', r));
    rawPort = (raw.address() as { port: number }).port;
  }
  out({ serving: { port: srv.port, address: srv.address, rawPort } });
  const rl = createInterface({ input: process.stdin });
  for await (const l of rl) {
    if (!l.trim()) continue;
    try {
      const c = JSON.parse(l) as Cmd;
      if (c.op === 'stats') { out({ ok: srv.stats }); continue; }
      const t = c.bytes ? benchSample(c.bytes, c.seed ?? 1) : makeSample(c.seed ?? 1, c.T ?? 16, c.H ?? 8);
      const ref = await store.put(c.sampleId, t);
      lastFile = join(spec.dir, `${ref.sampleId}.g${ref.generation}.safetensors`);
      out({ ok: { ref: Buffer.from(encodeSampleRef(ref)).toString('base64'), file: lastFile } });
    } catch (e) {
      out({ error: e instanceof DraftwireError ? { name: e.name, code: e.code, message: e.message } : { name: 'Error', code: 'UNEXPECTED', message: String(e) } });
    }
  }
  await srv.close();
  await store.close();
  process.exit(0);
}

/** The raw baseline: the same file bytes, read in the same 1 MiB chunks, written with backpressure. */
async function sendRange(sock: Socket, path: string, offset: number, length: number): Promise<void> {
  const fh = await open(path, 'r');
  try {
    let off = 0;
    while (off < length) {
      const n = Math.min(1 << 20, length - off);
      const buf = Buffer.allocUnsafe(n);
      const { bytesRead } = await fh.read(buf, 0, n, offset + off);
      if (bytesRead === 0) break;
      off += bytesRead;
      if (!sock.write(bytesRead === n ? buf : buf.subarray(0, bytesRead))) await new Promise((r) => sock.once('drain', r));
    }
  } finally {
    await fh.close();
  }
}

main().catch((e: unknown) => { out({ fatal: String((e as Error)?.stack ?? e) }); process.exit(1); });
