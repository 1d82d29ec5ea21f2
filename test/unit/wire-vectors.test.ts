// The golden vectors of docs/wire.md (test/fixtures/wire/vectors.json): recomputed with the
// library, recomputed in Python from the document's rules alone (check_vectors.py: hashlib,
// hmac and the msgpack package, nothing of Draftwire), and opened by the library's readers.
// Any drift between code, document and vectors fails here. Python is required, not optional.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { computeWireVectors, VECTORS_PATH, type WireVectors } from '../support/make-wire-vectors.ts';
import { AuthPolicy } from '../../src/wire/auth.ts';
import { decodeMessage, decodeSampleRef } from '../../src/wire/sampleref.ts';
import { openRecordBytes } from '../../src/bus/bus.ts';

const stored = JSON.parse(readFileSync(VECTORS_PATH, 'utf8')) as WireVectors;
const PY_CHECK = fileURLToPath(new URL('../fixtures/wire/check_vectors.py', import.meta.url));
const bytes = (h: string) => new Uint8Array(Buffer.from(h, 'hex'));
const outputs = (v: Omit<WireVectors, 'inputs'> & { inputs?: unknown }) => { const { inputs: _, ...rest } = v; return rest; };

describe('wire golden vectors (docs/wire.md)', function () {
  this.timeout(30_000);

  it('the library computes exactly the stored vectors', () => {
    const now = computeWireVectors();
    assert.deepEqual(JSON.parse(JSON.stringify(now.inputs)), stored.inputs, 'inputs changed: regenerate deliberately (test/support/make-wire-vectors.ts) and update docs/wire.md');
    assert.deepEqual(outputs(now), outputs(stored));
  });

  it('Python, from the document alone, computes the same bytes', () => {
    const probe = spawnSync('python3', ['-c', 'import msgpack'], { encoding: 'utf8' });
    if (probe.error || probe.status !== 0) {
      assert.fail(`this test needs python3 with the msgpack package (pip install msgpack): ${probe.error?.message ?? probe.stderr.trim()}`);
    }
    const r = spawnSync('python3', [PY_CHECK, VECTORS_PATH], { encoding: 'utf8' });
    assert.equal(r.status, 0, `check_vectors.py failed: ${r.stderr}`);
    const py = JSON.parse(r.stdout) as Record<string, Record<string, string>>;
    const want = outputs(stored) as unknown as Record<string, Record<string, string>>;
    assert.deepEqual(Object.keys(py).sort(), Object.keys(want).sort());
    for (const section of Object.keys(want)) {
      for (const k of Object.keys(want[section]!)) assert.equal(py[section]?.[k], want[section]![k], `${section}.${k}`);
    }
  });

  it('the library reads the vectors back: keys, ref, sealed request and reply, KV record', () => {
    const auth = AuthPolicy.fromSecret(stored.inputs.secret);
    assert.deepEqual(auth.natsCredentials(), { user: stored.keys.natsUser, pass: stored.keys.natsPass });
    assert.doesNotThrow(() => auth.verifyStoreToken(stored.inputs.storeId, stored.keys.storeToken));
    const ref = decodeSampleRef(bytes(stored.ref.encodedHex));
    assert.doesNotThrow(() => auth.verifyRef(ref));
    assert.equal(Buffer.from(ref.mac!).toString('hex'), stored.ref.mac);
    const rq = stored.inputs.request;
    const u = auth.unseal(bytes(stored.request.sealedHex), rq.ts + 1000);
    assert.equal(Buffer.from(u.body).toString('hex'), stored.request.frameHex);
    assert.equal(u.ts, rq.ts);
    const frame = decodeMessage(u.body);
    assert.deepEqual([frame.k, frame.s, frame.r, frame.i, frame.a], ['q', rq.subject, rq.reply, rq.idempotencyKey, rq.attempt]);
    assert.doesNotThrow(() => auth.verifyRef((frame.d as { ref: never }).ref));
    assert.throws(() => AuthPolicy.fromSecret('another-secret-for-the-vectors').unseal(bytes(stored.request.sealedHex), rq.ts));
    const rp = decodeMessage(auth.unseal(bytes(stored.reply.sealedHex), stored.inputs.reply.ts).body);
    assert.deepEqual(rp, { k: 'r', i: rq.idempotencyKey, d: stored.inputs.reply.result, r: rq.reply });
    const kv = stored.inputs.kv;
    assert.deepEqual(openRecordBytes(auth, `kv:${kv.bucket}:${kv.key}`, bytes(stored.kv.recordHex)), { value: kv.value, version: kv.version });
    assert.throws(() => openRecordBytes(auth, `kv:${kv.bucket}:other`, bytes(stored.kv.recordHex)), /authentication failed/, 'the key is bound');
  });
});
