// The input policy of a job (pure): when an external job's input closes, and the sample
// budget the queue tells the ranks. A job with its own rollout has a fixed budget (its rows);
// an external job's is open (null) until its producers end or its sample cap is committed,
// then it is the count committed. The ledger records the close (a WAL event) and refuses new
// samples after it; this decides when.
import type { InputCloseReason, InputState } from './events.ts';

export type QueueInput =
  | { kind: 'fixed'; samples: number }
  | { kind: 'external'; samples: number | null; producers: number };

/** Why the input should close now, or null: the cap committed, or enough producers ended and none is open. */
export function inputCloseReason(input: QueueInput | null, st: InputState, committed: number): InputCloseReason | null {
  if (!input || input.kind !== 'external' || st.closed) return null;
  if (input.samples !== null && committed >= input.samples) return 'samples';
  if (st.ended.length >= input.producers && st.open.length === 0) return 'producers';
  return null;
}

/** The samples the ranks train in all (consumed or dead), or null while more may come. */
export function sampleBudgetOf(input: QueueInput | null, st: InputState): number | null {
  if (!input) return null;
  if (input.kind === 'fixed') return input.samples;
  return st.closed ? st.closed.samples : null;
}
