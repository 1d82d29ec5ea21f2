// The input policy of a job (pure): when an external job's input closes, and the sample
// budget the queue tells the ranks. A job with its own rollout has a fixed budget (its rows);
// an external job's is open (null) until its producers end or its sample cap is committed,
// then it is the count committed. The ledger records the close (a WAL event) and refuses new
// samples after it; this decides when.
import type { InputCloseReason, InputState } from './events.ts';

export type QueueInput =
  | { kind: 'fixed'; samples: number }
  | { kind: 'external'; samples: number | null; producers: number; highBytes?: number; lowBytes?: number };

/**
 * Backpressure for producers of their own (they write into the store without asking it): a
 * new sample is refused (retryably) once the bytes committed and not yet consumed would pass
 * `highBytes`, until they fell to `lowBytes`. Returns the new pressured state and whether to refuse.
 */
export function commitPressure(input: QueueInput | null, pressured: boolean, liveBytes: number, refBytes: number): { pressured: boolean; refuse: boolean } {
  if (!input || input.kind !== 'external' || input.highBytes === undefined) return { pressured: false, refuse: false };
  const low = input.lowBytes ?? Math.floor(input.highBytes * 0.8);
  if (pressured && liveBytes > low) return { pressured: true, refuse: true };
  // One sample bigger than the whole watermark still goes through an empty store.
  if (liveBytes > 0 && liveBytes + refBytes > input.highBytes) return { pressured: true, refuse: true };
  return { pressured: false, refuse: false };
}

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
