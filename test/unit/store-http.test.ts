// The HTTP data plane's pure parts, alone: request tokens (store-token.ts), request parsing,
// range planning from a real sample file's header and manifest, the frame reader that
// verifies blocks while it streams (http-protocol.ts), and the http:// sample uri.
import assert from 'node:assert/strict';
import { createHmac } from 'node:crypto';
import { AuthPolicy } from '../../src/wire/auth.ts';
import { AuthError, ChecksumError, DecodeError, InvalidArgumentError, SampleGoneError, StaleGenerationError, BackpressureError } from '../../src/errors.ts';
import { decodeSampleRef, encodeSampleRef, httpUri, parseSampleUri, validateSampleRef, type SampleRef } from '../../src/wire/sampleref.ts';
import { TOKEN_MAX_AHEAD_MS, authorizationFor, checkAuthorization, requestMac } from '../../src/store/store-token.ts';
import { FrameReader, httpStatusOf, parseStoreRequest, planSampleResponse, storeRequestTarget } from '../../src/store/http-protocol.ts';
import { buildManifest, buildManifestAsync, checksumOfManifestJson, manifestJson, type BlockAlg } from '../../src/store/checksum.ts';
import { encodeSafetensorsBuffer, parseHeader } from '../../src/store/safetensors.ts';
import { bytesOf, type Tensor } from '../../src/tensor.ts';
import { digestTensors, makeSample, sliceRows } from '../support/store-fixtures.ts';

const SECRET = 'store-http-unit-secret-0123456789';
const auth = AuthPolicy.fromSecret(SECRET);

function fieldOf(f: () => unknown): string {
  try { f(); } catch (e) {
    assert.ok(e instanceof InvalidArgumentError, `expected InvalidArgumentError, got ${(e as Error).constructor.name}: ${(e as Error).message}`);
    return String(e.detail?.field);
  }
  return assert.fail('did not throw');
}

/** A sample file in memory (as the store writes it, or as the sha256 writers do) and its signed http ref. */
async function sampleFile(tensors: Record<string, Tensor>, blockBytes: number, alg: BlockAlg = 'blake3', sampleId = 'row-1', generation = 5) {
  const items = Object.entries(tensors).map(([name, t]) => ({ name, dtype: t.dtype, shape: [...t.shape], bytes: bytesOf(t) }));
  const mjson = manifestJson(alg === 'sha256' ? buildManifest(items, blockBytes) : await buildManifestAsync(items, blockBytes, 'blake3'));
  const file = encodeSafetensorsBuffer(tensors, { format: 'draftwire/1', 'draftwire.manifest': mjson });
  const n = Number(file.readBigUInt64LE(0));
  const header = parseHeader(file.subarray(8, 8 + n), file.byteLength, 'mem');
  const features = Object.fromEntries(items.map((it) => [it.name, { dtype: it.dtype as 'f32', shape: it.shape }]));
  const ref = auth.signRef(validateSampleRef({
    v: 1, job: 'job1', sampleId, generation, uri: httpUri('127.0.0.1', 9, 'store-a', sampleId, generation), features,
    numTokens: 0, bytes: items.reduce((a, it) => a + it.bytes.byteLength, 0), checksum: checksumOfManifestJson(mjson),
    producer: { node: 'a', actor: 't', incarnation: 1 }, createdAt: 0,
  }));
  return { file, header, manifest: JSON.parse(mjson), manifestJson: mjson, ref };
}

type SampleFile = Awaited<ReturnType<typeof sampleFile>>;

/** The body a server would send for `req`, from the in-memory file. */
function body(f: SampleFile, names: string[] | null, rows: [number, number] | null): Buffer {
  const plan = planSampleResponse(f, { sampleId: f.ref.sampleId, generation: f.ref.generation, names, rows });
  const out = Buffer.concat([plan.head, ...plan.ranges.map((r) => f.file.subarray(r.offset, r.offset + r.length))]);
  assert.equal(out.byteLength, plan.contentLength);
  return out;
}

async function read(ref: SampleRef, names: string[] | null, rows: [number, number] | null, bytes: Uint8Array, chunk = 1 << 30, verify = true): Promise<Record<string, Tensor>> {
  const r = new FrameReader(ref, names, rows, verify);
  for (let off = 0; off < bytes.byteLength; off += chunk) r.push(bytes.subarray(off, Math.min(bytes.byteLength, off + chunk)));
  return r.end();
}

describe('data plane: request tokens', () => {
  const target = '/store-a/row-1?g=5&names=aux&rows=0:8';
  const now = 1_800_000_000_000;

  it('binds method, target and expiry, under the store token as key', async () => {
    const h = authorizationFor(auth, 'store-a', 'GET', target, now)!;
    const m = /^Draftwire v1 exp=(\d+) mac=([0-9a-f]{64})$/.exec(h)!;
    assert.ok(m, h);
    assert.equal(Number(m[1]), now + 30_000);
    // Recomputed from docs/wire.md alone: HMAC(hex-decoded store token, method \0 target \0 exp).
    const key = Buffer.from(auth.storeToken('store-a'), 'hex');
    assert.equal(m[2], createHmac('sha256', key).update(`GET\0${target}\0${m[1]}`).digest('hex'));
    assert.equal(requestMac(auth, 'store-a', 'GET', target, Number(m[1])).toString('hex'), m[2]);
    assert.doesNotThrow(() => checkAuthorization(auth, 'store-a', 'GET', target, h, now));
    assert.doesNotThrow(() => checkAuthorization(auth, 'store-a', 'GET', target, h, now + 30_000), 'good until exp');
  });

  it('refuses a token for anything else, expired, too long-lived, malformed or absent, as one AuthError', async () => {
    const h = authorizationFor(auth, 'store-a', 'GET', target, now)!;
    const refusals: [string, () => void][] = [
      ['no header', () => checkAuthorization(auth, 'store-a', 'GET', target, undefined, now)],
      ['another method', () => checkAuthorization(auth, 'store-a', 'DELETE', target, h, now)],
      ['another path', () => checkAuthorization(auth, 'store-a', 'GET', target.replace('row-1', 'row-2'), h, now)],
      ['another query', () => checkAuthorization(auth, 'store-a', 'GET', target.replace('0:8', '0:9'), h, now)],
      ['another store', () => checkAuthorization(auth, 'store-b', 'GET', target, h, now)],
      ['expired', () => checkAuthorization(auth, 'store-a', 'GET', target, h, now + 30_001)],
      ['too far ahead', () => checkAuthorization(auth, 'store-a', 'GET', target, authorizationFor(auth, 'store-a', 'GET', target, now, TOKEN_MAX_AHEAD_MS + 1), now)],
      ['another secret', () => checkAuthorization(auth, 'store-a', 'GET', target, authorizationFor(AuthPolicy.fromSecret('another-secret-0123456789abcdef'), 'store-a', 'GET', target, now), now)],
      ['uppercase hex', () => checkAuthorization(auth, 'store-a', 'GET', target, h.replace(/mac=(.*)$/, (_m, x: string) => `mac=${x.toUpperCase()}`), now)],
      ['a bearer token', () => checkAuthorization(auth, 'store-a', 'GET', target, `Bearer ${auth.storeToken('store-a')}`, now)],
      ['garbage', () => checkAuthorization(auth, 'store-a', 'GET', target, 'x'.repeat(10_000), now)],
      ['an array', () => checkAuthorization(auth, 'store-a', 'GET', target, [h], now)],
    ];
    for (const [what, f] of refusals) {
      assert.throws(f, (e: unknown) => e instanceof AuthError && e.message === 'authentication failed' && e.detail === null, what);
    }
  });

  it('with auth off no token is needed and none is made', async () => {
    const off = AuthPolicy.disabled();
    assert.equal(authorizationFor(off, 'store-a', 'GET', target), null);
    assert.doesNotThrow(() => checkAuthorization(off, 'store-a', 'GET', target, undefined));
  });
});

describe('data plane: request parsing', () => {
  it('parses GET with names and rows, and DELETE with why; the client builds what it parses', async () => {
    assert.deepEqual(parseStoreRequest('GET', '/store-a/row-1?g=17'), { op: 'get', storeId: 'store-a', sampleId: 'row-1', generation: 17, names: null, rows: null });
    assert.deepEqual(parseStoreRequest('GET', '/s/x.y:z-1?g=0&names=aux,last&rows=3:9'), { op: 'get', storeId: 's', sampleId: 'x.y:z-1', generation: 0, names: ['aux', 'last'], rows: [3, 9] });
    assert.deepEqual(parseStoreRequest('GET', '/s/x?rows=0:0&g=2'), { op: 'get', storeId: 's', sampleId: 'x', generation: 2, names: null, rows: [0, 0] });
    assert.deepEqual(parseStoreRequest('DELETE', '/s/x?g=4'), { op: 'free', storeId: 's', sampleId: 'x', generation: 4, why: 'consumed' });
    assert.deepEqual(parseStoreRequest('DELETE', '/s/x?g=4&why=dead'), { op: 'free', storeId: 's', sampleId: 'x', generation: 4, why: 'dead' });
    const t = storeRequestTarget('s', 'x', 9, { names: ['a/b', 'c:d'], rows: [1, 2] });
    assert.equal(t, '/s/x?g=9&names=a%2Fb,c%3Ad&rows=1:2');
    assert.deepEqual(parseStoreRequest('GET', t), { op: 'get', storeId: 's', sampleId: 'x', generation: 9, names: ['a/b', 'c:d'], rows: [1, 2] });
    assert.deepEqual(parseStoreRequest('DELETE', storeRequestTarget('s', 'x', 9, { why: 'dead' })).op, 'free');
  });

  it('a malformed request is an InvalidArgumentError naming the field', async () => {
    const cases: [string, string, string][] = [
      ['PUT', '/s/x?g=1', 'method'], ['POST', '/s/x?g=1', 'method'], ['HEAD', '/s/x?g=1', 'method'],
      ['GET', '/s/x', 'g'], ['GET', '/s/x?', 'g'], ['GET', '/s/x?names=a', 'g'], ['GET', '/s/x?g=', 'g'], ['GET', '/s/x?g=01', 'g'],
      ['GET', '/s/x?g=-1', 'g'], ['GET', '/s/x?g=1e3', 'g'], ['GET', '/s/x?g=99999999999999999', 'g'], ['GET', '/s/x?g=1&g=2', 'g'], ['GET', '/s/x?g', 'g'],
      ['GET', '/s/x?g=1&rows=5:2', 'rows'], ['GET', '/s/x?g=1&rows=5', 'rows'], ['GET', '/s/x?g=1&rows=-1:2', 'rows'], ['GET', '/s/x?g=1&rows=a:b', 'rows'],
      ['GET', '/s/x?g=1&names=a,,b', 'names'], ['GET', '/s/x?g=1&names=', 'names'], ['GET', '/s/x?g=1&names=a,a', 'names'], ['GET', '/s/x?g=1&names=%ZZ', 'names'],
      ['GET', `/s/x?g=1&names=${Array.from({ length: 65 }, (_, i) => `t${i}`).join(',')}`, 'names'],
      ['GET', '/s/x?g=1&foo=1', 'foo'], ['GET', '/s/x?g=1&why=dead', 'why'], ['DELETE', '/s/x?g=1&rows=0:1', 'rows'], ['DELETE', '/s/x?g=1&why=maybe', 'why'],
      ['GET', '/s/x?g=1&%00=1', 'query'],
      ['GET', '/a/b/c?g=1', 'path'], ['GET', '/s?g=1', 'path'], ['GET', 's/x?g=1', 'path'], ['GET', '//x?g=1', 'storeId'], ['GET', '/s/x/?g=1', 'path'],
      ['GET', '/s/%2e%2e?g=1', 'path'], ['GET', '/s/..%2f..%2fetc%2fpasswd?g=1', 'path'], ['GET', '/s/x#frag?g=1', 'path'], ['GET', `/s/${'x'.repeat(5000)}?g=1`, 'path'],
      ['GET', '/s/..?g=1', 'sampleId'], ['GET', '/s/.?g=1', 'sampleId'], ['GET', '/s/.draftwire-store.json?g=1', 'sampleId'], ['GET', '/s/.tmp-1-ab?g=1', 'sampleId'],
      ['GET', '/s/a*b?g=1', 'sampleId'], ['GET', '/../x?g=1', 'storeId'], ['GET', '/s%20/x?g=1', 'path'],
    ];
    for (const [m, t, field] of cases) assert.equal(fieldOf(() => parseStoreRequest(m, t)), field, `${m} ${t}`);
    assert.match((() => { try { parseStoreRequest('GET', '/s/x?g=1&rows=5:2'); } catch (e) { return (e as Error).message; } return ''; })(), /rows must be r0:r1/);
  });

  it('maps typed errors to statuses', async () => {
    assert.equal(httpStatusOf(new AuthError()), 401);
    assert.equal(httpStatusOf(new InvalidArgumentError('x', { detail: { field: 'g' } })), 400);
    assert.equal(httpStatusOf(new InvalidArgumentError('x', { detail: { field: 'method' } })), 405);
    assert.equal(httpStatusOf(new SampleGoneError('x')), 404);
    assert.equal(httpStatusOf(new StaleGenerationError('x')), 410);
    assert.equal(httpStatusOf(new BackpressureError('x')), 503);
    assert.equal(httpStatusOf(new DecodeError('x')), 500);
    assert.equal(httpStatusOf(new Error('x')), 500);
  });
});

// Both block digests: blake3 (what the store writes) and sha256 (older and Python writers).
for (const alg of ['blake3', 'sha256'] as const) describe(`data plane: planning ranges and reading frames (${alg} blocks)`, () => {
  // Small blocks so every tensor spans several: aux is 96 B per row (48 bf16), 64 B blocks hold 1 row of it.
  const T = 37, H = 16;
  const tensors = makeSample(11, T, H);
  let f: SampleFile;
  before(async () => { f = await sampleFile(tensors, 256, alg); });

  it('a full read and every row slice come back equal to the source, whatever the chunking', async () => {
    assert.deepEqual(digestTensors(await read(f.ref, null, null, body(f, null, null))), digestTensors(tensors));
    for (const [r0, r1] of [[0, T], [0, 1], [5, 6], [7, 30], [36, 37], [10, 10], [0, 0], [37, 37]] as [number, number][]) {
      for (const names of [null, ['aux'], ['mask', 'last']]) {
        const want = sliceRows(tensors, r0, r1);
        const got = await read(f.ref, names, [r0, r1], body(f, names, [r0, r1]), 7);
        const keys = names ?? Object.keys(tensors);
        assert.deepEqual(digestTensors(got), digestTensors(Object.fromEntries(keys.map((k) => [k, want[k]!]))), `${names} ${r0}:${r1}`);
      }
    }
    // One byte at a time.
    assert.deepEqual(digestTensors(await read(f.ref, ['aux'], [3, 9], body(f, ['aux'], [3, 9]), 1)), digestTensors({ aux: sliceRows(tensors, 3, 9).aux! }));
  });

  it('sends only the blocks spanning the rows asked, located by the file header', async () => {
    const plan = planSampleResponse(f, { sampleId: 'row-1', generation: 5, names: ['last'], rows: [10, 12] });
    const e = f.header.entries.get('last')!;
    // last is 64 B per row; 256 B blocks hold 4 rows: rows 10..12 lie in block 2 (rows 8..11).
    assert.deepEqual(plan.ranges, [{ offset: f.header.dataStart + e.begin + 8 * 64, length: 4 * 64 }]);
    const head = JSON.parse(plan.head.subarray(8).toString()) as { tensors: unknown[]; manifest: string };
    assert.deepEqual(head.tensors, [{ name: 'last', dtype: 'f32', shape: [T, H], rows: [10, 12], blocks: [2, 3], bytes: 256 }]);
    assert.equal(head.manifest, f.manifestJson);
    assert.equal(fieldOf(() => planSampleResponse(f, { sampleId: 'row-1', generation: 5, names: ['nope'], rows: null })), 'names');
    assert.equal(fieldOf(() => planSampleResponse(f, { sampleId: 'row-1', generation: 5, names: null, rows: [0, T + 1] })), 'rows');
  });

  it('a corrupted block is a ChecksumError; a slice that does not span it verifies', async () => {
    const b = body(f, ['last'], null);
    const plan = planSampleResponse(f, { sampleId: 'row-1', generation: 5, names: ['last'], rows: null });
    b[plan.head.byteLength + 5 * 256 + 3]! ^= 1; // block 5 of last
    await assert.rejects(() => read(f.ref, ['last'], null, b, 1000), (e: unknown) => e instanceof ChecksumError && /tensor "last" block 5/.test(e.message));
    await assert.doesNotReject(() => read(f.ref, ['last'], null, b, 1000, false), 'verify: false skips the block digests');
    const b2 = body(f, ['last'], [0, 8]);
    await assert.doesNotReject(() => read(f.ref, ['last'], [0, 8], b2));
  });

  it('a frame that is not what the ref and the request say is refused', async () => {
    const good = body(f, ['aux'], [2, 4]);
    const hlen = Number(good.readBigUInt64LE(0));
    const head = JSON.parse(good.subarray(8, 8 + hlen).toString()) as Record<string, any>;
    const reframe = (h: Record<string, unknown>) => {
      const j = Buffer.from(JSON.stringify(h));
      const p = Buffer.alloc(8); p.writeBigUInt64LE(BigInt(j.byteLength));
      return Buffer.concat([p, j, good.subarray(8 + hlen)]);
    };
    const refuse = (bytes: Buffer, cls: new (...a: any[]) => Error, re: RegExp, ref: SampleRef = f.ref) =>
      assert.rejects(() => read(ref, ['aux'], [2, 4], bytes, 13), (e: unknown) => e instanceof cls && re.test((e as Error).message), re.source);
    await refuse(good.subarray(0, good.byteLength - 1), DecodeError, /ended early/);
    await refuse(Buffer.concat([good, Buffer.from([0])]), DecodeError, /runs past its last block/);
    await refuse(good.subarray(0, 5), DecodeError, /ended early/);
    const huge = Buffer.from(good); huge.writeBigUInt64LE(1n << 40n, 0);
    await refuse(huge, DecodeError, /over the \d+-byte bound/);
    await refuse(reframe({ ...head, manifest: head.manifest.replace(/"v":\d/, (v: string) => v + ' ') }), ChecksumError, /manifest does not match the ref's checksum/);
    await refuse(reframe({ ...head, generation: 4 }), DecodeError, /another sample or generation/);
    await refuse(reframe({ ...head, tensors: [{ ...head.tensors[0], rows: [2, 5] }] }), DecodeError, /disagrees with the manifest/);
    await refuse(reframe({ ...head, tensors: [{ ...head.tensors[0], blocks: [0, 9] }] }), DecodeError, /disagrees with the manifest/);
    await refuse(reframe({ ...head, tensors: [] }), DecodeError, /holds 0 tensors/);
    // A ref whose features differ from the (authentic) manifest: the manifest is not this ref's.
    const other = auth.signRef({ ...f.ref, features: { ...f.ref.features, aux: { dtype: 'bf16', shape: [T, 3 * H + 1] } } });
    await refuse(good, ChecksumError, /does not match the ref/, other);
    // The destination buffers are exactly sized private memory.
    const got = await read(f.ref, ['aux'], [2, 4], good);
    assert.equal(got.aux!.data.byteOffset, 0);
    assert.equal(got.aux!.data.buffer.byteLength, 2 * 3 * H * 2);
  });

  it('zero-byte tensors and scalars travel too', async () => {
    const t: Record<string, Tensor> = {
      empty: { dtype: 'f32', shape: [0, 4], data: new Float32Array(0) },
      flat: { dtype: 'f32', shape: [3, 0], data: new Float32Array(0) },
      scalar: { dtype: 'i32', shape: [], data: new Int32Array([42]) },
      ids: { dtype: 'i32', shape: [3], data: new Int32Array([1, 2, 3]) },
    };
    const g = await sampleFile(t, 8, alg);
    assert.deepEqual(digestTensors(await read(g.ref, null, null, body(g, null, null), 1)), digestTensors(t));
    assert.deepEqual(digestTensors(await read(g.ref, ['flat', 'ids'], [1, 3], body(g, ['flat', 'ids'], [1, 3]), 1)), digestTensors(sliceRows({ flat: t.flat!, ids: t.ids! }, 1, 3)));
    assert.equal(fieldOf(() => planSampleResponse(g, { sampleId: 'row-1', generation: 5, names: ['scalar'], rows: [0, 1] })), 'rows');
  });
});

describe('data plane: the http:// sample uri', () => {
  it('parses, builds and round-trips in a ref', async () => {
    assert.deepEqual(parseSampleUri('http://10.0.0.5:7001/store-a/row-1?g=3'), { scheme: 'http', host: '10.0.0.5', port: 7001, storeId: 'store-a', sampleId: 'row-1', generation: 3 });
    assert.deepEqual(parseSampleUri('http://[::1]:9/s/x?g=0'), { scheme: 'http', host: '[::1]', port: 9, storeId: 's', sampleId: 'x', generation: 0 });
    assert.equal(httpUri('node-a.example', 80, 's', 'x', 1), 'http://node-a.example:80/s/x?g=1');
    // A node serving TLS: https://, the same shape.
    assert.equal(httpUri('node-a.example', 443, 's', 'x', 1, true), 'https://node-a.example:443/s/x?g=1');
    assert.deepEqual(parseSampleUri('https://10.0.0.5:7001/store-a/row-1?g=3'), { scheme: 'https', host: '10.0.0.5', port: 7001, storeId: 'store-a', sampleId: 'row-1', generation: 3 });
    const f = await sampleFile(makeSample(1, 4, 2), 64);
    assert.deepEqual(decodeSampleRef(encodeSampleRef(f.ref)).uri, f.ref.uri);
    for (const bad of ['http://h:0/s/x?g=1', 'http://h:70000/s/x?g=1', 'http://h/s/x?g=1', 'http://h:1/s/x', 'httpx://h:1/s/x?g=1', 'https://h/s/x?g=1', 'http://h:1/s/../x?g=1', 'http://a b:1/s/x?g=1']) {
      assert.throws(() => parseSampleUri(bad), DecodeError, bad);
    }
  });
});
