import assert from 'node:assert/strict';
import { decideStep, roundInput, stepSeq, type RankFacts, type WorldFacts } from '../../trainer/step-decision.ts';
import type { Round } from '../../trainer/world.ts';

// A world of `size` ranks, batch 4, checkpoint every 4 steps, no evaluation.
const world = (o: Partial<WorldFacts> = {}): WorldFacts => ({
  batch: 4, batchWaitMs: 2000, worldSize: 2, stepNo: 0, checkpointEvery: 4, evalEvery: 0, evalPending: false, seqLen: 64, sp: 1, ...o,
});
const round = (o: Partial<Round> = {}): Round => ({
  total: 8, maxHeld: 4, window: 0, stale: false, waitedOut: false, outstanding: 100, short: false, longest: 64, tokens: 512, ...o,
});
const rank = (o: Partial<RankFacts> = {}): RankFacts => ({
  held: 4, window: 0, staleEpoch: false, waitedMs: 0, outstanding: 100, leader: true, partitionExhausted: false, longest: 64, tokens: 256, ...o,
});

describe('step decision: what a rank contributes to a round', () => {
  it('a leader with less than a full batch is short while its partition may get more', () => {
    assert.equal(roundInput(rank({ held: 3 }), world()).short, true);
    assert.equal(roundInput(rank({ held: 4 }), world()).short, false);
  });

  it('an exhausted partition is never short: nothing more will come to it', () => {
    assert.equal(roundInput(rank({ held: 1, partitionExhausted: true }), world()).short, false);
    assert.equal(roundInput(rank({ held: 0, partitionExhausted: true }), world()).short, false);
  });

  it('a cell rank that is not the leader holds nothing and is never short', () => {
    const r = roundInput(rank({ held: 0, leader: false }), world());
    assert.equal(r.short, false);
    assert.equal(r.held, 0);
  });

  it('waited out once batchWaitMs has passed since the first round of the step', () => {
    assert.equal(roundInput(rank({ waitedMs: 1999 }), world()).waitedOut, false);
    assert.equal(roundInput(rank({ waitedMs: 2000 }), world()).waitedOut, true);
  });

  it('passes the window, the outstanding count and a seen newer epoch through', () => {
    const r = roundInput(rank({ window: 7, outstanding: 42, staleEpoch: true }), world());
    assert.deepEqual([r.window, r.outstanding, r.stale], [7, 42, true]);
  });
});

describe('step decision: the positions a step pads to', () => {
  it('the longest sample of the world, rounded up to a multiple of sp, at most seqLen', () => {
    assert.equal(stepSeq(37, { seqLen: 64, sp: 1 }), 37);
    assert.equal(stepSeq(37, { seqLen: 64, sp: 2 }), 38);
    assert.equal(stepSeq(37, { seqLen: 64, sp: 4 }), 40);
    assert.equal(stepSeq(64, { seqLen: 64, sp: 4 }), 64);
    assert.equal(stepSeq(1, { seqLen: 64, sp: 4 }), 4);
  });

  it('the step carries the agreed seq and token count', () => {
    const d = decideStep(round({ longest: 21, tokens: 77 }), world({ sp: 2 }));
    assert.equal(d.kind, 'step');
    assert.deepEqual(d.kind === 'step' && [d.seq, d.tokens], [22, 77]);
  });
});

describe('step decision: from one agreed round', () => {
  it('a stale epoch reshards, whatever else the round says', () => {
    assert.deepEqual(decideStep(round({ stale: true }), world()), { kind: 'reshard' });
    assert.deepEqual(decideStep(round({ stale: true, total: 0, outstanding: 0 }), world()), { kind: 'reshard' });
  });

  it('steps on a full batch: width min(batch, most held), averaged over the world total', () => {
    const d = decideStep(round({ total: 7, maxHeld: 4 }), world());
    assert.deepEqual(d, { kind: 'step', width: 4, samples: 7, seq: 64, tokens: 512, checkpointAfter: false, evaluateAfter: false });
  });

  it('waits while short of samples that may still come and not waited out', () => {
    assert.deepEqual(decideStep(round({ total: 3, maxHeld: 3, short: true }), world()), { kind: 'wait' });
  });

  it('waits while nothing is held but samples are left', () => {
    assert.deepEqual(decideStep(round({ total: 0, maxHeld: 0, outstanding: 5 }), world()), { kind: 'wait' });
  });

  it('waited out (dp > 1): steps on what it holds, padded short cells to the widest', () => {
    const d = decideStep(round({ total: 3, maxHeld: 2, short: true, waitedOut: true }), world());
    assert.deepEqual(d, { kind: 'step', width: 2, samples: 3, seq: 64, tokens: 512, checkpointAfter: false, evaluateAfter: false });
  });

  it('a world of one rank never steps short for waiting: it waits for a full batch or the end', () => {
    const w = world({ worldSize: 1 });
    assert.deepEqual(decideStep(round({ total: 3, maxHeld: 3, short: true, waitedOut: true }), w), { kind: 'wait' });
  });

  it('the last step: everything left is in hand, so it steps even if short', () => {
    // 10 outstanding, 7 trained and awaiting their checkpoint: 3 left, and 3 held.
    const d = decideStep(round({ total: 3, maxHeld: 3, short: true, window: 7, outstanding: 10 }), world({ worldSize: 1 }));
    assert.equal(d.kind, 'step');
    assert.equal(decideStep(round({ total: 2, maxHeld: 2, short: true, window: 7, outstanding: 10 }), world({ worldSize: 1 })).kind, 'wait');
  });

  it('an exhausted partition (not short) steps at once on a partial batch', () => {
    const d = decideStep(round({ total: 2, maxHeld: 2, short: false }), world());
    assert.deepEqual(d, { kind: 'step', width: 2, samples: 2, seq: 64, tokens: 512, checkpointAfter: false, evaluateAfter: false });
  });

  it('nothing held or left but a window unacked: checkpoint (the acks finish the job)', () => {
    assert.deepEqual(decideStep(round({ total: 0, maxHeld: 0, window: 5, outstanding: 5 }), world()), { kind: 'checkpoint' });
    // left = outstanding - window <= 0 also when the count is below the window.
    assert.deepEqual(decideStep(round({ total: 0, maxHeld: 0, window: 5, outstanding: 3 }), world()), { kind: 'checkpoint' });
  });

  it('nothing held, left or unacked: done, measuring the final weights only if a step was taken since', () => {
    assert.deepEqual(decideStep(round({ total: 0, maxHeld: 0, outstanding: 0 }), world({ evalPending: true })), { kind: 'done', evaluate: true });
    assert.deepEqual(decideStep(round({ total: 0, maxHeld: 0, outstanding: 0 }), world()), { kind: 'done', evaluate: false });
  });

  it('checkpoints after every checkpointEvery-th step', () => {
    const after = (stepNo: number, every: number) => {
      const d = decideStep(round(), world({ stepNo, checkpointEvery: every }));
      assert.equal(d.kind, 'step');
      return d.kind === 'step' && d.checkpointAfter;
    };
    assert.deepEqual([0, 1, 2, 3, 4, 6, 7].map((s) => after(s, 4)), [false, false, false, true, false, false, true]);
    assert.deepEqual([0, 1, 2].map((s) => after(s, 1)), [true, true, true]);
  });

  it('evaluates after every evalEvery-th step, never with evalEvery 0', () => {
    const after = (stepNo: number, evalEvery: number) => {
      const d = decideStep(round(), world({ stepNo, evalEvery }));
      return d.kind === 'step' && d.evaluateAfter;
    };
    assert.deepEqual([0, 1, 2, 3].map((s) => after(s, 2)), [false, true, false, true]);
    assert.deepEqual([0, 1, 2, 3].map((s) => after(s, 0)), [false, false, false, false]);
  });
});
