// What the world does next, decided from one agreement round (trainer/world.ts World.agree)
// and facts every rank knows alike (job spec, step number, world size), so every rank of the
// world decides the same thing at the same moment without talking again. Pure: no bus, no
// addon; RankWorker.trainEpoch carries the decision out.
//
//   reshard     a rank saw a newer epoch: checkpoint and ack what was trained, release the
//               rest, re-form under the new epoch.
//   checkpoint  nothing left to train but trained samples await their checkpoint: flush them
//               (the acks finish the job), then agree again.
//   done        nothing held, nothing left, nothing unacked: the job's data is consumed.
//   step        train one step on `width` samples per cell (cells short of it pad with
//               fully-masked samples), averaging over the `samples` real ones of the world,
//               every sample padded to `seq` (the world's longest, rounded up for SP).
//   wait        short of samples that may still come: collect more and agree again.
import type { Round, RoundInput } from './world.ts';

/** What one rank knows before a round. */
export interface RankFacts {
  /** Ready samples this rank would step on (at most `batch`; 0 on a cell's non-leader ranks). */
  held: number;
  /** Trained samples awaiting their checkpoint. */
  window: number;
  /** A newer epoch was seen (credit refused as stale, or announced). */
  staleEpoch: boolean;
  /** Time since this step's first round. */
  waitedMs: number;
  /** The queue's last word on samples of the budget not finished (budget − consumed − dead). */
  outstanding: number;
  /** The cell's leader: it alone leases, so only it can be short. */
  leader: boolean;
  /** The queue said: the budget is committed and nothing is pending in this partition. */
  partitionExhausted: boolean;
  /** The longest of the held samples, and their tokens in all (0 on non-leaders). */
  longest: number;
  tokens: number;
}

/** What every rank of the world knows alike (the spec, the step, the world). */
export interface WorldFacts {
  batch: number;
  batchWaitMs: number;
  worldSize: number;
  /** Steps trained into the current weights, before this decision. */
  stepNo: number;
  checkpointEvery: number;
  /** 0: never evaluate during training. */
  evalEvery: number;
  /** A step was taken since the last accept-length measurement. */
  evalPending: boolean;
  /** The job's longest sample and its sequence-parallel width. */
  seqLen: number;
  sp: number;
}

export type StepDecision =
  | { kind: 'reshard' }
  | { kind: 'checkpoint' }
  | { kind: 'done'; evaluate: boolean }
  | { kind: 'step'; width: number; samples: number; seq: number; tokens: number; checkpointAfter: boolean; evaluateAfter: boolean }
  | { kind: 'wait' };

/**
 * A rank's contribution to the round. `short`: a leader with less than a full batch whose
 * partition may still get more; an exhausted partition is never short (waiting would only
 * hold the world up: nothing more will come to it).
 */
export function roundInput(r: RankFacts, w: Pick<WorldFacts, 'batch' | 'batchWaitMs'>): RoundInput {
  return {
    held: r.held, window: r.window, stale: r.staleEpoch, waitedOut: r.waitedMs >= w.batchWaitMs,
    outstanding: r.outstanding, short: r.leader && r.held < w.batch && !r.partitionExhausted,
    longest: r.longest, tokens: r.tokens,
  };
}

/** The positions a step pads its samples to: the longest, rounded up to a multiple of sp, at most seqLen. */
export function stepSeq(longest: number, w: Pick<WorldFacts, 'seqLen' | 'sp'>): number {
  return Math.min(w.seqLen, Math.max(w.sp, Math.ceil(longest / w.sp) * w.sp));
}

/** Decides from the agreed round; the same on every rank of the world. */
export function decideStep(a: Round, w: WorldFacts): StepDecision {
  if (a.stale) return { kind: 'reshard' };
  const left = a.outstanding - a.window; // samples not trained by this world yet
  if (a.total === 0 && left <= 0) {
    if (a.window > 0) return { kind: 'checkpoint' };
    return { kind: 'done', evaluate: w.evalPending };
  }
  // Every cell full (or its partition exhausted), everything left in hand (the last step), or
  // (dp > 1) waited long enough with at least one sample.
  if (a.total > 0 && (!a.short || a.total >= left || (w.worldSize > 1 && a.waitedOut))) {
    const next = w.stepNo + 1;
    return {
      kind: 'step', width: Math.min(w.batch, a.maxHeld), samples: a.total, seq: stepSeq(a.longest, w), tokens: a.tokens,
      checkpointAfter: next % w.checkpointEvery === 0,
      evaluateAfter: w.evalEvery > 0 && next % w.evalEvery === 0,
    };
  }
  return { kind: 'wait' };
}
