// The HTTP data plane over TLS (issue 13, item 5): a producer's node (a real process,
// test/support/dataplane-child.ts) serves HTTPS with a certificate made by `draftwire certs`
// and asks readers for one signed by the job's CA (mutual TLS); its refs carry https://. A
// reader with the job's files reads full samples and slices and frees them; a reader without
// TLS files, with another CA, or without a certificate of its own is refused with a typed
// error saying what to give; plain HTTP to the port gets nothing; `draftwire node --listen`
// off loopback with a secret and no TLS files refuses to start.
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { request as httpRequest } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { AuthError, InvalidArgumentError, SampleGoneError, UnavailableError } from '../../src/errors.ts';
import { jobFile, saveJobSpec } from '../../src/job/spec.ts';
import { HttpFeatureStore } from '../../src/store/http-store.ts';
import { SharedDirFeatureStore } from '../../src/store/shared-dir.ts';
import { readTlsFiles, type TlsFiles } from '../../src/tls.ts';
import { AuthPolicy } from '../../src/wire/auth.ts';
import { decodeSampleRef, type SampleRef } from '../../src/wire/sampleref.ts';
import { testSpec } from '../support/jobs.ts';
import { runCli } from '../support/procs.ts';
import { digestTensors, makeSample, sliceRows } from '../support/store-fixtures.ts';

const SECRET = 'dataplane-tls-secret-0123456789abcdef';
const CHILD = join(import.meta.dirname, '..', 'support', 'dataplane-child.ts');

describe('HTTP data plane over TLS (draftwire certs, mutual TLS)', function () {
  this.timeout(120_000);
  const auth = AuthPolicy.fromSecret(SECRET);
  let root = '', certs = '', other = '';
  let child: ChildProcess | null = null;
  let port = 0;
  const lines: string[] = [];
  const readers: HttpFeatureStore[] = [];

  const next = async (): Promise<any> => {
    for (let i = 0; i < 600 && lines.length === 0; i++) await new Promise((r) => setTimeout(r, 50));
    const l = lines.shift();
    if (!l) throw new Error('the server child said nothing');
    return JSON.parse(l);
  };
  const put = async (sampleId: string, seed: number): Promise<SampleRef> => {
    child!.stdin!.write(JSON.stringify({ op: 'put', sampleId, seed, T: 40, H: 8 }) + '\n');
    const r = await next();
    assert.ok(r.ok, JSON.stringify(r));
    return decodeSampleRef(Buffer.from(r.ok.ref, 'base64'));
  };
  const reader = async (name: string, tls: TlsFiles | null): Promise<HttpFeatureStore> => {
    const r = new HttpFeatureStore({
      auth, tls: tls ? readTlsFiles(tls, 'data plane TLS') : null, connectTimeoutMs: 5000,
      local: await SharedDirFeatureStore.attach({ dir: join(root, name), storeId: 'store-a', job: 'job1', auth, producer: { node: name, actor: 'test', incarnation: 1 } }),
    });
    readers.push(r);
    return r;
  };

  before(async () => {
    root = mkdtempSync(join(tmpdir(), 'dw-dataplane-tls-'));
    certs = join(root, 'certs');
    other = join(root, 'other-ca');
    for (const out of [certs, other]) {
      const r = await runCli(['certs', '--out', out, '--hosts', '127.0.0.1']);
      assert.equal(r.code, 0, r.stderr);
    }
    const tls = { cert: join(certs, '127.0.0.1.pem'), key: join(certs, '127.0.0.1.key'), ca: join(certs, 'ca.pem') };
    const env = { ...process.env, DRAFTWIRE_SECRET: SECRET, DRAFTWIRE_SECRET_FILE: '' };
    child = spawn(process.execPath, ['--import', 'tsx', CHILD, JSON.stringify({ dir: join(root, 'producer'), storeId: 'store-a', job: 'job1', tls })], { env, stdio: ['pipe', 'pipe', 'inherit'] });
    let buf = '';
    child.stdout!.on('data', (d) => { buf += d; let nl; while ((nl = buf.indexOf('\n')) >= 0) { lines.push(buf.slice(0, nl)); buf = buf.slice(nl + 1); } });
    const first = await next();
    assert.ok(first.serving, JSON.stringify(first));
    port = first.serving.port;
  });
  after(async () => {
    for (const r of readers) await r.close();
    child?.kill('SIGKILL');
    if (root) rmSync(root, { recursive: true, force: true });
  });

  it('serves https:// refs to a reader with the job\'s CA and a certificate it signed: full reads, slices, frees', async () => {
    const ref = await put('row-1', 5);
    assert.equal(ref.uri, `https://127.0.0.1:${port}/store-a/row-1?g=${ref.generation}`);
    const r = await reader('good', { ca: join(certs, 'ca.pem'), cert: join(certs, '127.0.0.1.pem'), key: join(certs, '127.0.0.1.key') });
    const want = makeSample(5, 40, 8);
    assert.deepEqual(digestTensors(await r.get(ref)), digestTensors(want));
    const half = sliceRows(want, 10, 30);
    assert.deepEqual(digestTensors(await r.get(ref, { names: ['aux', 'last'], rows: [10, 30] })), digestTensors({ aux: half.aux!, last: half.last! }));
    assert.equal(await r.release(ref), true);
    await assert.rejects(r.get(ref), SampleGoneError);
  });

  it('refuses, by a typed error that says what to give: no TLS files, another CA, no client certificate', async () => {
    const ref = await put('row-2', 6);
    const none = await reader('none', null);
    await assert.rejects(none.get(ref), (e: unknown) => e instanceof InvalidArgumentError && /served over TLS, and this reader has no TLS files/.test((e as Error).message) && /--tls-ca/.test((e as Error).message));
    const wrongCa = await reader('wrong-ca', { ca: join(other, 'ca.pem'), cert: join(other, '127.0.0.1.pem'), key: join(other, '127.0.0.1.key') });
    await assert.rejects(wrongCa.get(ref), (e: unknown) => e instanceof AuthError && !e.retryable && /TLS failed/.test((e as Error).message) && /not signed by a CA this client trusts/.test((e as Error).message));
    const noCert = await reader('no-cert', { ca: join(certs, 'ca.pem') });
    // TLS 1.3: the server closes the connection after the handshake; the reader names the likely cause.
    await assert.rejects(noCert.get(ref), (e: unknown) => e instanceof UnavailableError && /requires a client certificate signed by the job's CA/.test((e as Error).message));
    // The right CA but a certificate another CA signed: the server refuses it.
    const otherCert = await reader('other-cert', { ca: join(certs, 'ca.pem'), cert: join(other, '127.0.0.1.pem'), key: join(other, '127.0.0.1.key') });
    await assert.rejects(otherCert.get(ref), (e: unknown) => e instanceof UnavailableError && /refuses this reader's certificate: it must be signed by the job's CA/.test((e as Error).message));
    // Plain HTTP to the TLS port: no HTTP answer at all.
    const plain = await new Promise<number | string>((resolve) => {
      const req = httpRequest({ host: '127.0.0.1', port, path: '/store-a/row-2?g=1', agent: false }, (res) => { res.resume(); resolve(res.statusCode ?? 0); });
      req.on('error', (e) => resolve((e as NodeJS.ErrnoException).code ?? 'error'));
      req.setTimeout(5000, () => req.destroy(new Error('timeout')));
      req.end();
    });
    assert.ok(typeof plain === 'string' || plain === 400, `plain HTTP to the TLS port: ${plain}`);
    // The sample is untouched by all of that.
    const good = await reader('good-2', { ca: join(certs, 'ca.pem'), cert: join(certs, '127.0.0.1.pem'), key: join(certs, '127.0.0.1.key') });
    assert.deepEqual(digestTensors(await good.get(ref)), digestTensors(makeSample(6, 40, 8)));
  });

  it('draftwire node --listen off loopback with a secret and no TLS files exits 2 with the reason', async () => {
    const spec = testSpec('tlslisten');
    mkdirSync(spec.runDir, { recursive: true });
    await saveJobSpec(spec);
    const env = { DRAFTWIRE_SECRET: SECRET };
    const r = await runCli(['node', '--job-file', jobFile(spec.runDir), '--nats', 'nats://127.0.0.1:4222', '--listen', '0.0.0.0:0', '--advertise', '10.213.7.9:7000'], { env });
    assert.equal(r.code, 2, r.stderr);
    assert.match(r.stderr, /INVALID_ARGUMENT: --listen without TLS on 0\.0\.0\.0, which is not loopback.*--tls-cert, --tls-key and --tls-ca/);
    const r2 = await runCli(['node', '--job-file', jobFile(spec.runDir), '--nats', 'nats://127.0.0.1:4222', '--listen', '127.0.0.1:0', '--advertise', '10.213.7.9:7000'], { env });
    assert.equal(r2.code, 2, r2.stderr);
    assert.match(r2.stderr, /--listen without TLS on 10\.213\.7\.9/);
  });
});
