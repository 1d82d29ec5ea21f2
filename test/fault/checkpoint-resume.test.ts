// The rank checkpoint (src/checkpoint.ts) that exactly-once training rests on: weights, AdamW
// state, step and the unacked window round-trip; the manifest rename is the commit point (a
// torn write leaves the previous checkpoint); and the bus fault-injection environment parses.
import assert from 'node:assert/strict';
import { mkdirSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { checkpointDir, loadRankCheckpoint, modelState, writeRankCheckpoint } from '../../src/job/checkpoint.ts';
import { StaleEpochError } from '../../src/errors.ts';
import { faultsFromEnv } from '../../src/bus/bus.ts';
import { DraftModel, initDraftWeights, TRAINABLE_NAMES } from '../../src/native/addon.ts';
import { testSpec } from '../support/jobs.ts';

describe('rank checkpoint (exactly-once training across rank crashes)', () => {
  it('round-trips weights, optimizer state, step and the unacked window; the manifest is the commit point', async () => {
    const spec = testSpec('ckpt');
    mkdirSync(spec.runDir, { recursive: true });
    try {
      const w = initDraftWeights(spec.draft, 3);
      const d2t = Int32Array.from({ length: spec.draft.draftVocab }, (_, i) => i);
      w.d2t = d2t;
      const model = DraftModel.create(spec.draft, w);
      assert.equal(await loadRankCheckpoint(spec, w), null, 'no checkpoint yet');
      const m1 = await writeRankCheckpoint(spec, await modelState(model), d2t, 3, [{ leaseId: 'L1', sampleId: 'row-1', epoch: 1 }], 1);
      assert.equal(m1.step, 3);
      // A later checkpoint torn before its manifest was renamed: the first one still loads.
      writeFileSync(join(checkpointDir(spec), 'latest.json.tmp-999'), '{"torn":');
      writeFileSync(join(checkpointDir(spec), 'step-00000004.safetensors'), 'partial');
      let got = await loadRankCheckpoint(spec, w);
      assert.equal(got!.manifest.step, 3);
      assert.deepEqual(got!.manifest.trained, ['row-1']);
      const opt = model.optimizerState();
      for (const n of TRAINABLE_NAMES) {
        assert.deepEqual(got!.weights[n], model.weights()[n], `weights ${n}`);
        assert.deepEqual(got!.optimizer.m[n], opt.m[n], `m.${n}`);
      }
      await writeRankCheckpoint(spec, await modelState(model), d2t, 5, [], 2);
      got = await loadRankCheckpoint(spec, w);
      assert.equal(got!.manifest.step, 5);
      assert.equal(got!.manifest.epoch, 2);
      assert.deepEqual(readdirSync(checkpointDir(spec)).sort(), ['latest.json', 'step-00000003-e1.optim.safetensors', 'step-00000003-e1.safetensors', 'step-00000005-e2.optim.safetensors', 'step-00000005-e2.safetensors'],
        'torn temps are removed; the checkpoint just replaced stays one commit longer (a reader may be opening it)');
      await writeRankCheckpoint(spec, await modelState(model), d2t, 6, [], 2);
      assert.deepEqual(readdirSync(checkpointDir(spec)).filter((f) => f.startsWith('step-')).sort(), ['step-00000005-e2.optim.safetensors', 'step-00000005-e2.safetensors', 'step-00000006-e2.optim.safetensors', 'step-00000006-e2.safetensors']);
      // A writer of an older epoch (a rank frozen and resumed) cannot roll the job back.
      await assert.rejects(writeRankCheckpoint(spec, await modelState(model), d2t, 4, [], 1), (e: unknown) => e instanceof StaleEpochError && /from epoch 2/.test((e as Error).message));
      // A reader that read the previous manifest can still open its files (kept one commit longer).
      assert.equal((await loadRankCheckpoint(spec, w))!.manifest.step, 6, 'the committed checkpoint is unchanged');
      assert.deepEqual(readdirSync(checkpointDir(spec)).filter((f) => f.includes('tmp')), [], 'no temp manifest left behind');
      const other = { ...spec, job: 'another' };
      await assert.rejects(loadRankCheckpoint(other, w), /belongs to job ckpt/);
      model.close();
    } finally { rmSync(spec.runDir, { recursive: true, force: true }); }
  });

  it('DRAFTWIRE_BUS_FAULTS: seeded drops and delays on matching subjects only; bad keys refused', () => {
    const f = faultsFromEnv('seed=7,match=\\.queue\\.ack,dropRequest=0.5,dropReply=1,delayMs=10', 'x');
    let drops = 0;
    for (let i = 0; i < 200; i++) if (f.dropRequest!('dw.j.queue.ack')) drops++;
    assert.ok(drops > 60 && drops < 140, `about half dropped: ${drops}`);
    assert.equal(f.dropRequest!('dw.j.queue.credit'), false);
    assert.equal(f.dropReply!('dw.j.queue.ack'), true);
    assert.ok(f.delayMs!('dw.j.queue.ack') < 10);
    assert.equal(f.delayMs!('dw.j.hb.x'), 0);
    const again = faultsFromEnv('seed=7,match=\\.queue\\.ack,dropRequest=0.5', 'x');
    const g = faultsFromEnv('seed=7,match=\\.queue\\.ack,dropRequest=0.5', 'x');
    assert.deepEqual(Array.from({ length: 20 }, () => again.dropRequest!('dw.j.queue.ack')), Array.from({ length: 20 }, () => g.dropRequest!('dw.j.queue.ack')), 'same seed, same faults');
    assert.deepEqual(faultsFromEnv(undefined, 'x'), {});
    assert.throws(() => faultsFromEnv('dropEverything=1', 'x'), /unknown key/);
  });
});
