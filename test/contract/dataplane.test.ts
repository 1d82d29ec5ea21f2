// The HTTP data plane between two processes with separate store directories (no shared
// path): a producer's node (test/support/dataplane-child.ts) writes samples into its own
// directory and serves them on a real port; this process reads them through HttpFeatureStore
// (undici, keep-alive pools) with a store directory of its own. The B5 guarantees across the
// wire, request tokens, corruption, malformed requests and files that are not the store's.
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, mkdirSync, mkdtempSync, openSync, readdirSync, readFileSync, readSync, rmSync, statSync, symlinkSync, unlinkSync, writeFileSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { request as httpRequest, type IncomingHttpHeaders } from 'node:http';
import { AuthPolicy } from '../../src/wire/auth.ts';
import { AuthError, ChecksumError, DecodeError, InvalidArgumentError, SampleGoneError, StaleGenerationError, UnavailableError } from '../../src/errors.ts';
import { decodeSampleRef, parseSampleUri, type SampleRef } from '../../src/wire/sampleref.ts';
import { SharedDirFeatureStore } from '../../src/store/shared-dir.ts';
import { HttpFeatureStore } from '../../src/store/http-store.ts';
import { authorizationFor } from '../../src/store/store-token.ts';
import { storeRequestTarget } from '../../src/store/http-protocol.ts';
import { digestTensors, makeSample, sliceRows } from '../support/store-fixtures.ts';

const SECRET = 'dataplane-contract-secret-0123456789';
const CHILD = join(import.meta.dirname, '..', 'support', 'dataplane-child.ts');
const SECRET_TEXT = 'root:x:0:0:the-private-content-of-another-file\n';

interface Served { proc: ChildProcess; port: number; dir: string; put(sampleId: string, seed: number, T: number, H: number): Promise<{ ref: SampleRef; file: string }>; stats(): Promise<{ connections: number; requests: number }>; stop(): Promise<void> }

function env(secret: string | null): NodeJS.ProcessEnv {
  const e = { ...process.env };
  delete e.DRAFTWIRE_SECRET; delete e.DRAFTWIRE_SECRET_FILE;
  if (secret !== null) e.DRAFTWIRE_SECRET = secret;
  return e;
}

/** Starts a producer's node serving its own directory `dir`. */
async function serve(dir: string, secret: string | null, blockBytes = 4096): Promise<Served> {
  const proc = spawn(process.execPath, ['--import', 'tsx', CHILD, JSON.stringify({ dir, storeId: 'store-a', job: 'job1', blockBytes })], { env: env(secret), stdio: ['pipe', 'pipe', 'pipe'] });
  let buf = '', err = '';
  const waiters: { resolve(line: any): void; reject(e: Error): void }[] = [];
  proc.once('exit', (c) => { for (const w of waiters.splice(0)) w.reject(new Error(`server child exited (${c}): ${err}`)); });
  proc.stderr!.on('data', (d) => { err += d; });
  proc.stdout!.on('data', (d) => {
    buf += d;
    let nl: number;
    while ((nl = buf.indexOf('\n')) >= 0) { const line = JSON.parse(buf.slice(0, nl)); buf = buf.slice(nl + 1); waiters.shift()?.resolve(line); }
  });
  const next = () => new Promise<any>((resolve, reject) => { waiters.push({ resolve, reject }); });
  const first = await next();
  assert.ok(first.serving, JSON.stringify(first));
  return {
    proc, port: first.serving.port, dir,
    async put(sampleId, seed, T, H) {
      const p = next();
      proc.stdin!.write(JSON.stringify({ op: 'put', sampleId, seed, T, H }) + '\n');
      const r = await p;
      assert.ok(r.ok, JSON.stringify(r));
      return { ref: decodeSampleRef(Buffer.from(r.ok.ref, 'base64')), file: r.ok.file };
    },
    async stats() {
      const p = next();
      proc.stdin!.write(JSON.stringify({ op: 'stats' }) + '\n');
      return (await p).ok;
    },
    async stop() {
      if (proc.exitCode !== null || proc.signalCode !== null) return;
      const gone = new Promise((r) => proc.once('exit', r));
      proc.kill('SIGKILL');
      await gone;
    },
  };
}

async function rejectsWith<T extends Error>(p: Promise<unknown>, cls: new (...a: any[]) => T, re?: RegExp): Promise<T> {
  try { await p; } catch (e) {
    assert.ok(e instanceof cls, `expected ${cls.name}, got ${(e as Error)?.constructor?.name}: ${(e as Error)?.message}`);
    if (re) assert.match((e as Error).message, re);
    return e as T;
  }
  return assert.fail(`expected ${cls.name}, but it resolved`);
}

/** A raw request to the server, its target sent exactly as given (as curl --path-as-is would). */
function raw(port: number, method: string, target: string, authorization?: string): Promise<{ status: number; headers: IncomingHttpHeaders; body: Buffer; json(): Record<string, any> }> {
  return new Promise((resolve, reject) => {
    const req = httpRequest({ host: '127.0.0.1', port, method, path: target, headers: authorization ? { authorization } : {}, agent: false }, (res) => {
      const parts: Buffer[] = [];
      res.on('data', (d: Buffer) => parts.push(d));
      res.on('end', () => {
        const body = Buffer.concat(parts);
        resolve({ status: res.statusCode!, headers: res.headers, body, json: () => JSON.parse(body.toString()) as Record<string, any> });
      });
    });
    req.on('error', reject);
    req.end();
  });
}

describe('HTTP data plane between two processes (separate store directories)', function () {
  this.timeout(120_000);
  const auth = AuthPolicy.fromSecret(SECRET);
  let root: string;
  let srv: Served;
  let reader: HttpFeatureStore;
  const T = 300, H = 32;

  before(async () => {
    root = mkdtempSync(join(tmpdir(), 'dw-dataplane-'));
    srv = await serve(join(root, 'producer-store'), SECRET);
    reader = new HttpFeatureStore({ auth, local: await SharedDirFeatureStore.attach({ dir: join(root, 'reader-store'), storeId: 'store-a', job: 'job1', auth, producer: { node: 'reader', actor: 'test', incarnation: 1 } }) });
  });
  after(async () => {
    await reader?.close();
    await srv?.stop();
    rmSync(root, { recursive: true, force: true });
  });

  it('fetches a full sample and sequence-parallel row slices; bytes equal, only the slice\'s blocks travel', async () => {
    const { ref } = await srv.put('row-1', 7, T, H);
    assert.equal(ref.uri, `http://127.0.0.1:${srv.port}/store-a/row-1?g=${ref.generation}`);
    const want = makeSample(7, T, H);
    let before = reader.stats.bytesFetched;
    assert.deepEqual(digestTensors(await reader.get(ref)), digestTensors(want));
    const full = reader.stats.bytesFetched - before;
    assert.ok(full > ref.bytes && full < ref.bytes + 8192, `a full read moves the sample and a small frame header (${full} for ${ref.bytes})`);
    // Four SP ranks, each its own rows of aux and last; together they are the sample.
    const sp = 4, per = T / sp;
    before = reader.stats.bytesFetched;
    for (let r = 0; r < sp; r++) {
      const got = await reader.get(ref, { names: ['aux', 'last'], rows: [r * per, (r + 1) * per] });
      const w = sliceRows(want, r * per, (r + 1) * per);
      assert.deepEqual(digestTensors(got), digestTensors({ aux: w.aux!, last: w.last! }), `SP rank ${r}`);
      assert.deepEqual(got.aux!.shape, [per, 3 * H]);
    }
    const sliced = (reader.stats.bytesFetched - before) / sp;
    assert.ok(sliced < full / 3, `an SP rank fetches about its share (${sliced.toFixed(0)} of ${full} bytes per rank)`);
    // The reader's own directory holds nothing of it: nothing is shared.
    assert.deepEqual(readdirSync(join(root, 'reader-store')).filter((f) => f.endsWith('.safetensors')), []);
    // What is asked is checked against the ref before anything is sent.
    await rejectsWith(reader.get(ref, { names: ['nope'] }), InvalidArgumentError, /has no tensor "nope"/);
    await rejectsWith(reader.get(ref, { rows: [0, T + 1] }), InvalidArgumentError, /outside tensor/);
  });

  it('after release a fetch is SampleGoneError; an older generation is StaleGenerationError (404 and 410 as JSON)', async () => {
    const { ref, file } = await srv.put('row-2', 2, 40, 8);
    assert.ok((await reader.get(ref)).ids);
    assert.equal(await reader.release(ref), true, 'DELETE frees it on the node that wrote it');
    assert.throws(() => statSync(file), /ENOENT/);
    const gone = await rejectsWith(reader.get(ref), SampleGoneError, /was released/);
    assert.equal(gone.code, 'SAMPLE_GONE');
    assert.equal(await reader.release(ref), false, 'a second release frees nothing');
    const r = await raw(srv.port, 'GET', storeRequestTarget('store-a', 'row-2', ref.generation), authorizationFor(auth, 'store-a', 'GET', storeRequestTarget('store-a', 'row-2', ref.generation))!);
    assert.equal(r.status, 404);
    assert.deepEqual(Object.keys(r.json()).slice(0, 3), ['code', 'message', 'retryable']);
    assert.deepEqual([r.json().code, r.json().retryable], ['SAMPLE_GONE', false]);

    const old = await srv.put('row-3', 1, 16, 8);
    const cur = await srv.put('row-3', 2, 16, 8);
    assert.ok(cur.ref.generation > old.ref.generation);
    await rejectsWith(reader.get(old.ref), StaleGenerationError, /superseded by generation/);
    assert.deepEqual(digestTensors(await reader.get(cur.ref)), digestTensors(makeSample(2, 16, 8)));
    const t = storeRequestTarget('store-a', 'row-3', old.ref.generation);
    const s = await raw(srv.port, 'GET', t, authorizationFor(auth, 'store-a', 'GET', t)!);
    assert.deepEqual([s.status, s.json().code], [410, 'STALE_GENERATION']);
    // A stale release never frees the newer generation.
    assert.equal(await reader.release(old.ref), false);
    assert.ok((await reader.get(cur.ref)).ids);
  });

  it('without a valid token: 401, and the body reveals nothing, not even whether the sample exists', async () => {
    const { ref } = await srv.put('row-4', 4, 16, 8);
    const there = storeRequestTarget('store-a', 'row-4', ref.generation);
    const missing = storeRequestTarget('store-a', 'never-put', 1);
    const other = AuthPolicy.fromSecret('another-secret-0123456789abcdefgh');
    const now = Date.now();
    const variants = (t: string): [string, string | undefined][] => [
      ['absent', undefined],
      ['wrong mac', authorizationFor(auth, 'store-a', 'GET', t)!.replace(/mac=./, (m) => m.slice(0, -1) + (m.endsWith('0') ? '1' : '0'))],
      ['expired', authorizationFor(auth, 'store-a', 'GET', t, now - 60_000)!],
      ['another secret', authorizationFor(other, 'store-a', 'GET', t)!],
      ['another path', authorizationFor(auth, 'store-a', 'GET', t.replace('?g=', '?rows=0:1&g='))!],
      ['another method', authorizationFor(auth, 'store-a', 'DELETE', t)!],
      ['a bearer store token', `Bearer ${auth.storeToken('store-a')}`],
    ];
    const bodies = new Set<string>();
    for (const t of [there, missing]) {
      for (const [what, a] of variants(t)) {
        const r = await raw(srv.port, 'GET', t, a);
        assert.equal(r.status, 401, `${what}: ${r.body}`);
        bodies.add(r.body.toString() + JSON.stringify([r.headers['content-type'], r.headers['content-length'], r.headers['www-authenticate']]));
      }
    }
    assert.equal(bodies.size, 1, 'every refusal is the same bytes, for a sample that exists and one that does not');
    const only = JSON.parse([...bodies][0]!.split('["')[0]!) as Record<string, unknown>;
    assert.deepEqual(only, { code: 'AUTH', message: 'authentication failed', retryable: false });
    // A DELETE without a token frees nothing; a malformed request without one is 401 too, not 400.
    assert.equal((await raw(srv.port, 'DELETE', there)).status, 401);
    assert.equal((await raw(srv.port, 'GET', '/store-a/x?g=banana')).status, 401);
    assert.equal((await raw(srv.port, 'PUT', there)).status, 401);
    assert.ok((await reader.get(ref)).ids, 'the sample is still there');
    // With a valid token a missing sample is a typed 404.
    const ok = await raw(srv.port, 'GET', missing, authorizationFor(auth, 'store-a', 'GET', missing)!);
    assert.deepEqual([ok.status, ok.json().code], [404, 'SAMPLE_GONE']);
    // A reader with another secret refuses the ref itself (its MAC) before sending anything.
    const stranger = new HttpFeatureStore({ auth: other, local: await SharedDirFeatureStore.attach({ dir: join(root, 'stranger'), storeId: 'store-a', job: 'job1', auth: other, producer: { node: 'x', actor: 'y', incarnation: 1 } }) });
    await rejectsWith(stranger.get(ref), AuthError);
    await stranger.close();
  });

  it('a corrupted block on the producer\'s disk is a ChecksumError at the reader; slices off it still verify', async () => {
    const { ref, file } = await srv.put('row-5', 5, T, H);
    const header = 8 + Number(readFileSync(file).readBigUInt64LE(0));
    // Flip one byte near the end of the data section (inside `mask` or `last`'s last block).
    const size = statSync(file).size;
    const fd = openSync(file, 'r+');
    const pos = size - 1;
    const b = Buffer.alloc(1);
    readSync(fd, b, 0, 1, pos);
    writeSync(fd, Buffer.from([b[0]! ^ 0xff]), 0, 1, pos);
    closeSync(fd);
    assert.ok(pos > header);
    const e = await rejectsWith(reader.get(ref), ChecksumError, /does not match its checksum/);
    assert.equal(e.code, 'CHECKSUM');
    // Tensors and rows away from the flipped byte verify: a reader checks exactly its blocks.
    assert.deepEqual(digestTensors(await reader.get(ref, { names: ['aux'], rows: [0, 10] })), digestTensors({ aux: sliceRows(makeSample(5, T, H), 0, 10).aux! }));
    // Replacing the manifest itself is caught against the ref's checksum.
    const text = readFileSync(file);
    const at = 'digests\\":[\\"'; // inside the header's JSON string: escaped quotes
    const i = text.indexOf(at) + at.length;
    assert.ok(i > at.length && i < header);
    text[i] = text[i] === 0x61 ? 0x62 : 0x61;
    writeFileSync(file, text);
    await rejectsWith(reader.get(ref, { names: ['ids'] }), ChecksumError, /manifest does not match the ref's checksum/);
  });

  it('a malformed path or query is a typed 400 naming the field; another method 405', async () => {
    const cases: [string, string, number, string][] = [
      ['GET', '/store-a/row-1', 400, 'g'], ['GET', '/store-a/row-1?g=x', 400, 'g'], ['GET', '/store-a/row-1?g=1&rows=9:3', 400, 'rows'],
      ['GET', '/store-a/row-1?g=1&names=a,,b', 400, 'names'], ['GET', '/store-a/row-1?g=1&color=red', 400, 'color'],
      ['GET', '/store-a/row-1/x?g=1', 400, 'path'], ['GET', '/store-a/%2e%2e%2f%2e%2e%2fetc%2fpasswd?g=1', 400, 'path'],
      ['GET', '/store-a/.draftwire-store.json?g=1', 400, 'sampleId'], ['GET', '/store-b/row-1?g=1', 400, 'storeId'],
      ['DELETE', '/store-a/row-1?g=1&why=later', 400, 'why'], ['PUT', '/store-a/row-1?g=1', 405, 'method'], ['POST', '/store-a/row-1?g=1', 405, 'method'],
    ];
    for (const [m, t, status, field] of cases) {
      const r = await raw(srv.port, m, t, authorizationFor(auth, 'store-a', m, t)!);
      assert.equal(r.status, status, `${m} ${t}: ${r.body}`);
      assert.deepEqual([r.json().code, r.json().detail?.field, r.json().retryable], ['INVALID_ARGUMENT', field, false], `${m} ${t}: ${r.body}`);
      if (status === 405) assert.equal(r.headers.allow, 'GET, DELETE');
    }
  });

  it('never follows a symlink or serves a file outside the store directory', async () => {
    const { ref, file } = await srv.put('row-6', 6, 16, 8);
    const outside = join(root, 'outside-passwd');
    writeFileSync(outside, SECRET_TEXT.repeat(200));
    unlinkSync(file);
    symlinkSync(outside, file);
    const t = storeRequestTarget('store-a', 'row-6', ref.generation);
    const r = await raw(srv.port, 'GET', t, authorizationFor(auth, 'store-a', 'GET', t)!);
    assert.equal(r.status, 500);
    assert.equal(r.json().code, 'DECODE');
    assert.match(r.json().message, /sample "row-6" generation \d+: its store file is a symbolic link; refused/);
    assert.ok(!r.body.includes('private-content') && !r.body.includes('root:x') && !r.body.includes(root), `the body quotes nothing of the file or its path: ${r.body}`);
    await rejectsWith(reader.get(ref), DecodeError, /symbolic link/);
    // A symlink to a real sample of another directory is refused all the same.
    unlinkSync(file);
    const { file: realFile } = await srv.put('row-7', 7, 16, 8);
    symlinkSync(realFile, file);
    await rejectsWith(reader.get(ref), DecodeError, /symbolic link/);
    // A directory at a sample's path, and ids that would name something outside, are refused.
    unlinkSync(file);
    mkdirSync(file);
    await rejectsWith(reader.get(ref), DecodeError, /not a regular file/);
    for (const t2 of ['/store-a/..?g=1', '/store-a/.?g=1', '/store-a/%2F..%2Foutside-passwd?g=1', '/..%2F..%2Fetc/passwd?g=1', '/store-a/.tmp-1?g=1']) {
      const x = await raw(srv.port, 'GET', t2, authorizationFor(auth, 'store-a', 'GET', t2)!);
      assert.equal(x.status, 400, `${t2}: ${x.body}`);
      assert.ok(!x.body.includes('private-content'));
    }
    assert.equal(readFileSync(outside, 'utf8'), SECRET_TEXT.repeat(200), 'the outside file is untouched');
  });

  it('keeps connections alive across requests and rethrows a dead node as UnavailableError (retryable)', async () => {
    const { ref } = await srv.put('row-8', 8, 64, 8);
    const s0 = await srv.stats();
    const gets = await Promise.all(Array.from({ length: 32 }, (_, i) => reader.get(ref, { names: ['ids'], rows: [i, i + 1] })));
    for (let i = 0; i < 32; i++) assert.equal((await reader.get(ref, { names: ['ids'], rows: [i, i + 1] })).ids!.data[0], gets[i]!.ids!.data[0]);
    const s1 = await srv.stats();
    assert.equal(s1.requests - s0.requests, 64);
    assert.ok(s1.connections - s0.connections <= 8, `64 requests over at most the pool's 8 connections (opened ${s1.connections - s0.connections})`);
    const other = await serve(join(root, 'doomed-store'), SECRET);
    const { ref: r2 } = await other.put('row-9', 9, 16, 8);
    assert.ok((await reader.get(r2)).ids);
    await other.stop();
    const e = await rejectsWith(reader.get(r2), UnavailableError);
    assert.equal(e.retryable, true);
    assert.match(e.message, new RegExp(`GET http://127.0.0.1:${parseSampleUri(r2.uri).port}/store-a/row-9`));
    assert.ok(!/authorization|mac=/i.test(e.message), 'the error names the request, not its token');
  });

  it('with auth off no token is needed', async () => {
    const open = await serve(join(root, 'open-store'), null);
    const off = AuthPolicy.disabled();
    const r = new HttpFeatureStore({ auth: off, local: await SharedDirFeatureStore.attach({ dir: join(root, 'open-reader'), storeId: 'store-a', job: 'job1', auth: off, producer: { node: 'r', actor: 't', incarnation: 1 } }) });
    try {
      const { ref } = await open.put('row-1', 3, 20, 8);
      assert.equal(ref.mac, undefined);
      assert.deepEqual(digestTensors(await r.get(ref, { rows: [5, 15] })), digestTensors(sliceRows(makeSample(3, 20, 8), 5, 15)));
      const t = storeRequestTarget('store-a', 'row-1', ref.generation, { names: ['ids'] });
      const x = await raw(open.port, 'GET', t);
      assert.equal(x.status, 200);
      assert.equal(x.headers['content-type'], 'application/vnd.draftwire.sample-frame');
      assert.equal(await r.release(ref), true);
      await rejectsWith(r.get(ref), SampleGoneError);
    } finally {
      await r.close();
      await open.stop();
    }
  });
});
