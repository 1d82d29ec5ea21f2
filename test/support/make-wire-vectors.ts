// Golden vectors of the wire protocol (docs/wire.md), computed with the library from fixed
// inputs. `node --import tsx test/support/make-wire-vectors.ts` rewrites
// test/fixtures/wire/vectors.json; test/unit/wire-vectors.test.ts recomputes them (here and,
// from the document's rules alone, in Python: test/fixtures/wire/check_vectors.py) and fails
// on any difference. Regenerate only for a deliberate protocol change, and say so in docs/wire.md.
import { createHmac, hkdfSync } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { AuthPolicy } from '../../src/wire/auth.ts';
import { sealRecordBytes } from '../../src/bus/bus.ts';
import { buildManifest, checksumOfManifestJson, manifestJson } from '../../src/store/checksum.ts';
import { encodeSafetensorsBuffer } from '../../src/store/safetensors.ts';
import { tensor, bytesOf, type Tensor } from '../../src/tensor.ts';
import { canonicalRefBytes, encodeMessage, encodeSampleRef, type SampleRef } from '../../src/wire/sampleref.ts';

export const VECTORS_PATH = fileURLToPath(new URL('../fixtures/wire/vectors.json', import.meta.url));

const hex = (b: Uint8Array) => Buffer.from(b).toString('hex');
const enc = new TextEncoder();

/** The fixed inputs: every output below is a function of these alone. */
export const INPUTS = {
  secret: 'draftwire-golden-vector-secret-v1',
  storeId: 'store-a',
  ref: {
    v: 1, job: 'job1', sampleId: 'row-000042', generation: 1_733_000_000_123, uri: 'dir://store-a/row-000042?g=1733000000123',
    features: { aux: { dtype: 'bf16', shape: [128, 192] }, ids: { dtype: 'i32', shape: [128] }, last: { dtype: 'f32', shape: [128, 64] }, mask: { dtype: 'u8', shape: [128] } },
    numTokens: 128, bytes: 128 * 192 * 2 + 128 * 4 + 128 * 64 * 4 + 128,
    checksum: 'sha256m:' + 'ab'.repeat(32), producer: { node: 'node-1', actor: 'rollout.0', incarnation: 7 }, createdAt: 1_733_000_000_000,
  } satisfies SampleRef,
  request: { subject: 'dw.job1.queue.commit', reply: '_INBOX.GOLDENVECTORREPLY0001', idempotencyKey: 'commit:row-000042:1733000000123', attempt: 0, ts: 1_733_000_000_500, nonce: '000102030405060708090a0b0c0d0e0f' },
  reply: { ts: 1_733_000_000_510, nonce: 'f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff', result: { sampleId: 'row-000042', generation: 1_733_000_000_123, status: 'added' } },
  kv: { bucket: 'dw_job1', key: 'epoch', version: 1_733_000_000_777, value: { epoch: 3, num: 2, members: [0, 1], group: 1 } },
  // A tiny training sample (T = 4, H = 2) with a small block size, so tensors span several blocks.
  sample: {
    T: 4, H: 2, blockBytes: 16,
    ids: [101, 102, 103, 104],
    aux: Array.from({ length: 4 * 6 }, (_, i) => 0x3f80 + i), // bf16 bit patterns (0x3f80 = 1.0)
    last: Array.from({ length: 4 * 2 }, (_, i) => i * 0.5 - 1), // f32
    mask: [0, 1, 1, 1],
  },
} as const;

export interface WireVectors {
  inputs: typeof INPUTS;
  keys: { macKey: string; natsUser: string; natsPass: string; storeToken: string };
  ref: { unsignedHex: string; mac: string; encodedHex: string };
  request: { frameHex: string; macInputHex: string; mac: string; sealedHex: string };
  reply: { frameHex: string; mac: string; sealedHex: string };
  kv: { bodyHex: string; macInputHex: string; mac: string; recordHex: string };
  sample: { manifestJson: string; checksum: string; fileHex: string };
}

function envelopeMacInput(ts: number, nonce: Uint8Array, body: Uint8Array): Uint8Array {
  const head = Buffer.alloc(8); head.writeBigInt64BE(BigInt(ts));
  return Buffer.concat([enc.encode('draftwire/v1/envelope\0'), head, nonce, body]);
}

export function computeWireVectors(): WireVectors {
  const auth = AuthPolicy.fromSecret(INPUTS.secret);
  const macKey = Buffer.from(hkdfSync('sha256', enc.encode(INPUTS.secret), enc.encode('draftwire/v1'), enc.encode('draftwire/v1/mac'), 32));
  // The library's MAC key is not exposed; check that this derivation is the one it uses.
  const probe = enc.encode('probe');
  if (hex(auth.mac(probe)) !== createHmac('sha256', macKey).update(probe).digest('hex')) throw new Error('the documented MAC key derivation is not the library\'s');
  const creds = auth.natsCredentials()!;

  const ref = { ...INPUTS.ref } as SampleRef;
  const signed = auth.signRef(ref);
  const unsigned = canonicalRefBytes(ref, false);

  const rq = INPUTS.request;
  const frame = encodeMessage({ k: 'q', s: rq.subject, r: rq.reply, i: rq.idempotencyKey, a: rq.attempt, d: { ref: signed } });
  const rqNonce = Buffer.from(rq.nonce, 'hex');
  const sealed = auth.seal(frame, rq.ts, rqNonce);

  const rp = INPUTS.reply;
  const replyFrame = encodeMessage({ k: 'r', i: rq.idempotencyKey, d: rp.result, r: rq.reply });
  const rpNonce = Buffer.from(rp.nonce, 'hex');
  const replySealed = auth.seal(replyFrame, rp.ts, rpNonce);

  const kv = INPUTS.kv;
  const kvBody = encodeMessage({ d: kv.value, v: kv.version });
  const kvMacInput = Buffer.concat([enc.encode(`kv:${kv.bucket}:${kv.key}\0`), kvBody]);
  const kvMac = auth.mac(kvMacInput);

  const sm = INPUTS.sample;
  const tensors: Record<string, Tensor> = {
    ids: tensor('i32', [sm.T], Int32Array.from(sm.ids)),
    aux: tensor('bf16', [sm.T, 3 * sm.H], Uint16Array.from(sm.aux)),
    last: tensor('f32', [sm.T, sm.H], Float32Array.from(sm.last)),
    mask: tensor('u8', [sm.T], Uint8Array.from(sm.mask)),
  };
  const mjson = manifestJson(buildManifest(Object.entries(tensors).map(([name, t]) => ({ name, dtype: t.dtype, shape: t.shape, bytes: bytesOf(t) })), sm.blockBytes));
  const file = encodeSafetensorsBuffer(tensors, { format: 'draftwire/1', 'draftwire.manifest': mjson });

  return {
    inputs: INPUTS,
    keys: { macKey: hex(macKey), natsUser: creds.user, natsPass: creds.pass, storeToken: auth.storeToken(INPUTS.storeId) },
    ref: { unsignedHex: hex(unsigned), mac: hex(signed.mac!), encodedHex: hex(encodeSampleRef(signed)) },
    request: { frameHex: hex(frame), macInputHex: hex(envelopeMacInput(rq.ts, rqNonce, frame)), mac: hex(auth.mac(envelopeMacInput(rq.ts, rqNonce, frame))), sealedHex: hex(sealed) },
    reply: { frameHex: hex(replyFrame), mac: hex(auth.mac(envelopeMacInput(rp.ts, rpNonce, replyFrame))), sealedHex: hex(replySealed) },
    sample: { manifestJson: mjson, checksum: checksumOfManifestJson(mjson), fileHex: hex(file) },
    kv: { bodyHex: hex(kvBody), macInputHex: hex(kvMacInput), mac: hex(kvMac), recordHex: hex(sealRecordBytes(auth, `kv:${kv.bucket}:${kv.key}`, kv.value, kv.version)) },
  };
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  writeFileSync(VECTORS_PATH, JSON.stringify(computeWireVectors(), null, 2) + '\n');
  console.log(`wrote ${VECTORS_PATH}`);
}
