// The shared-dir store against files that are not its own (real files, a real symlink out of
// the store, a real sparse file): get never follows a symlink, never quotes a file's bytes in
// an error, and bounds what it allocates by the ref and by the bytes really on disk.
import assert from 'node:assert/strict';
import { copyFileSync, existsSync, mkdtempSync, readFileSync, rmSync, statSync, symlinkSync, unlinkSync, writeFileSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { AuthPolicy } from '../../src/wire/auth.ts';
import { DecodeError } from '../../src/errors.ts';
import { checksumOfManifestJson, manifestJson, type Manifest } from '../../src/store/checksum.ts';
import { validateSampleRef, type SampleRef } from '../../src/wire/sampleref.ts';
import { SharedDirFeatureStore } from '../../src/store/shared-dir.ts';
import { makeSample } from '../support/store-fixtures.ts';

const SECRET = 'store-hardening-secret-012345678';
const producer = { node: 'n', actor: 'test', incarnation: 1 };
const SECRET_TEXT = 'root:x:0:0:the-private-content-of-another-file\nuser:x:1000:1000::/home/user:/bin/sh\n';

async function refusal(p: Promise<unknown>): Promise<Error> {
  try { await p; } catch (e) { return e as Error; }
  return assert.fail('get resolved');
}
/** The message must not carry the file's bytes: not as text, not as the number its first 8 bytes make. */
function assertNoContent(e: Error, content: string): void {
  const first8 = Buffer.from(content).readBigUInt64LE(0).toString();
  for (const bit of [content.slice(0, 8), content.slice(0, 4), 'private-content', first8]) {
    assert.ok(!e.message.includes(bit), `message quotes the file: ${e.message}`);
    assert.ok(!JSON.stringify((e as { detail?: unknown }).detail ?? null).includes(bit), 'detail quotes the file');
  }
}

describe('SharedDirFeatureStore hardening (real files)', function () {
  this.timeout(60_000);
  let root: string;
  let n = 0;
  before(() => { root = mkdtempSync(join(tmpdir(), 'dw-store-hard-')); });
  after(() => rmSync(root, { recursive: true, force: true }));
  const attach = (auth = AuthPolicy.fromSecret(SECRET)) =>
    SharedDirFeatureStore.attach({ dir: join(root, `s${++n}`), storeId: 'store-a', job: 'job1', auth, producer, usageRefreshMs: 0 });
  const fileOf = (dir: string, ref: SampleRef) => join(dir, `${ref.sampleId}.g${ref.generation}.safetensors`);

  it('refuses a sample file that is a symlink out of the store, naming the sample, not the file', async () => {
    const s = await attach();
    const dir = join(root, `s${n}`);
    const ref = await s.put('row-1', makeSample(1, 8, 4));
    assert.ok((await s.get(ref)).ids);
    const outside = join(root, 'outside-passwd');
    writeFileSync(outside, SECRET_TEXT);
    for (const target of [outside, ...(existsSync('/etc/passwd') ? ['/etc/passwd'] : [])]) {
      unlinkSync(fileOf(dir, ref));
      symlinkSync(target, fileOf(dir, ref));
      const e = await refusal(s.get(ref));
      assert.ok(e instanceof DecodeError, `${e.constructor.name}: ${e.message}`);
      assert.match(e.message, /sample "row-1" generation \d+: its store file is a symbolic link; refused/);
      assertNoContent(e, readFileSync(target, 'utf8'));
    }
    assert.equal(readFileSync(outside, 'utf8'), SECRET_TEXT, 'the target is untouched');
    await s.close();
  });

  it('a regular file of foreign bytes at a sample path: the error quotes none of them', async () => {
    const s = await attach();
    const dir = join(root, `s${n}`);
    const ref = await s.put('row-2', makeSample(2, 8, 4));
    const size = statSync(fileOf(dir, ref)).size;
    // Same size (so the size bound does not catch it first): the decoder has to.
    writeFileSync(fileOf(dir, ref), Buffer.concat([Buffer.from(SECRET_TEXT), Buffer.alloc(Math.max(0, size - SECRET_TEXT.length), 0x41)]).subarray(0, size));
    const e = await refusal(s.get(ref));
    assert.ok(e instanceof DecodeError, `${e.constructor.name}: ${e.message}`);
    assertNoContent(e, SECRET_TEXT);
    if (existsSync('/etc/passwd')) {
      copyFileSync('/etc/passwd', fileOf(dir, ref));
      const e2 = await refusal(s.get(ref));
      assert.ok(e2 instanceof DecodeError);
      assertNoContent(e2, readFileSync('/etc/passwd', 'utf8'));
    }
    // A file larger than its ref declares is refused before reading it.
    writeFileSync(fileOf(dir, ref), Buffer.alloc(size + (4 << 20)));
    assert.match((await refusal(s.get(ref))).message, /more than its ref declares/);
    await s.close();
  });

  it('auth off: a sparse file with a lying header is refused before anything is allocated for it', async () => {
    const s = await attach(AuthPolicy.disabled());
    const dir = join(root, `s${n}`);
    // A ref (unsigned: auth is off) and a header for 252 MB of f32, on a file of a few KiB on disk.
    const shape = [63_000, 1_000], rowBytes = 4_000, blockBytes = 1 << 20;
    const blockRows = Math.max(1, Math.floor(blockBytes / rowBytes));
    const blocks = Math.ceil(shape[0]! / blockRows);
    const m: Manifest = { v: 1, blockBytes, tensors: [{ name: 'aux', dtype: 'f32', shape, blockRows, digests: Array.from({ length: blocks }, () => 'ab'.repeat(32)) }] } as Manifest;
    const mjson = manifestJson(m);
    const bytes = 63_000 * 1_000 * 4;
    const ref = validateSampleRef({
      v: 1, job: 'job1', sampleId: 'sparse', generation: 1, uri: 'dir://store-a/sparse?g=1', features: { aux: { dtype: 'f32', shape } },
      numTokens: shape[0], bytes, checksum: checksumOfManifestJson(mjson), producer, createdAt: 0,
    });
    const header = Buffer.from(JSON.stringify({ __metadata__: { format: 'draftwire/1', 'draftwire.manifest': mjson }, aux: { dtype: 'F32', shape, data_offsets: [0, bytes] } }));
    const fh = await open(fileOf(dir, ref), 'w');
    const len = Buffer.alloc(8);
    len.writeBigUInt64LE(BigInt(header.length));
    await fh.write(Buffer.concat([len, header]), 0, 8 + header.length, 0);
    await fh.truncate(8 + header.length + bytes);
    await fh.close();
    const st = statSync(fileOf(dir, ref));
    assert.equal(st.size, 8 + header.length + bytes);
    assert.ok(st.blocks * 512 < 1 << 20, `the file is sparse here (${st.blocks * 512} bytes on disk)`);
    const before = process.memoryUsage().arrayBuffers;
    const e = await refusal(s.get(ref));
    const grew = process.memoryUsage().arrayBuffers - before;
    assert.ok(e instanceof DecodeError, `${e.constructor.name}: ${e.message}`);
    assert.match(e.message, /sample "sparse" generation 1: its store file is sparse/);
    assert.ok(grew < 16 << 20, `get allocated ${grew} bytes for a sparse file`);
    // A ref whose features do not add up to its bytes is refused before the file is opened.
    const lying = validateSampleRef({ ...ref, bytes: 10 });
    assert.match((await refusal(s.get(lying))).message, /declares 10 bytes but its features hold 252000000/);
    await s.close();
  });
});
