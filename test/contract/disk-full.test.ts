// A full disk (issue 5): the shared-directory store on a real small filesystem (a tmpfs, as
// in store.test.ts) with no page left. A refused put leaves nothing behind, not even its lock
// (so the next put of that sample does not wait for a stale lock); freeing space does not
// need space (release and abort work on a full disk); the rollout tells ENOSPC from other
// write failures (it waits the former out and restarts on the latter).
import assert from 'node:assert/strict';
import { readdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { diskFullBackoffMs, isDiskFull } from '../../actors/rollout.ts';
import { AuthPolicy } from '../../src/wire/auth.ts';
import { BackpressureError, SampleGoneError, StoreWriteError } from '../../src/errors.ts';
import { SharedDirFeatureStore } from '../../src/store/shared-dir.ts';
import { mountTmpfs, newWorkdir, unmountTmpfs } from '../support/chaos.ts';

const sample = (n: number, v = 7) => ({ x: { dtype: 'u8' as const, shape: [n], data: new Uint8Array(n).fill(v) } });

describe('store and rollout on a full disk (ENOSPC)', function () {
  this.timeout(30_000);
  const root = newWorkdir();
  const mnt = join(root, 'disk');
  const dir = join(mnt, 'store');
  let ballast = 0;
  before(() => mountTmpfs(mnt, 256));
  after(() => { unmountTmpfs(mnt); rmSync(root, { recursive: true, force: true }); });
  const attach = () => SharedDirFeatureStore.attach({ dir, storeId: 'full-store', job: 'full', auth: AuthPolicy.disabled(), producer: { node: 'n', actor: 'rollout', incarnation: 0 } });
  /** Fills the filesystem to its last page. */
  const fill = () => {
    for (;;) {
      try { writeFileSync(join(mnt, `ballast-${ballast}`), Buffer.alloc(4096)); ballast++; } catch (e) { assert.equal((e as NodeJS.ErrnoException).code, 'ENOSPC'); return; }
    }
  };
  const drain = () => { for (; ballast > 0; ballast--) rmSync(join(mnt, `ballast-${ballast - 1}`), { force: true }); };
  const leftovers = () => readdirSync(dir).filter((f) => f.startsWith('.tmp-') || f.endsWith('.lock') || f.endsWith('.safetensors'));

  it('a put refused for a full disk publishes nothing and leaves no lock; the rollout sees it as disk full', async () => {
    const s = await attach();
    fill();
    let err: unknown = null;
    try { await s.put('row-1', sample(100)); } catch (e) { err = e; }
    assert.ok(err instanceof StoreWriteError, `StoreWriteError, got ${String(err)}`);
    assert.match((err as Error).message, /ENOSPC/);
    assert.equal(isDiskFull(err), true, 'classified as disk full');
    assert.deepEqual(leftovers(), [], 'no temp file, lock or sample file');
    drain();
    const t0 = Date.now();
    const ref = await s.put('row-1', sample(100, 9));
    assert.ok(Date.now() - t0 < 2000, `the next put of the sample did not wait for a stale lock (${Date.now() - t0} ms)`);
    assert.equal((await s.get(ref)).x!.data[99], 9);
    assert.equal(await s.release(ref), true);
  });

  it('release and abort free space on a full disk (no tombstone needed)', async () => {
    const s = await attach();
    const a = await s.put('row-a', sample(20_000));
    await s.put('row-b', sample(20_000));
    fill();
    assert.equal(await s.release(a), true, 'released on a full disk');
    await assert.rejects(s.get(a), SampleGoneError);
    fill(); // what the release freed is taken again
    assert.equal(await s.abort('row-b', 'dead-lettered'), true, 'aborted on a full disk');
    assert.deepEqual(leftovers(), []);
    drain();
  });

  it('the rollout retries only ENOSPC write failures, with a bounded back-off', () => {
    const enospc = Object.assign(new Error('no space left on device'), { code: 'ENOSPC' });
    assert.equal(isDiskFull(new StoreWriteError('could not write: ENOSPC (disk full)', { cause: enospc, detail: { sampleId: 'r', errno: 'ENOSPC' } })), true);
    assert.equal(isDiskFull(new StoreWriteError('cannot create lock: ENOSPC', { cause: enospc })), true);
    assert.equal(isDiskFull(new StoreWriteError('could not write: EIO', { detail: { sampleId: 'r', errno: 'EIO' } })), false);
    assert.equal(isDiskFull(new StoreWriteError('locked by another writer', { detail: { sampleId: 'r' } })), false);
    assert.equal(isDiskFull(new BackpressureError('over the watermark')), false);
    assert.equal(isDiskFull(enospc), false, 'only a store write error (nothing published) is retried');
    const b = [1, 2, 3, 4, 5, 6, 7, 50].map(diskFullBackoffMs);
    assert.deepEqual(b, [100, 200, 400, 800, 1600, 2000, 2000, 2000]);
  });
});
