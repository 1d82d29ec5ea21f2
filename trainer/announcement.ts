// ctl.epoch announcements, as a rank reads them. An announcement is only a hint (the epoch
// record in KV is the truth, read by RankWorker.joinEpoch); it wakes a rank early. Replays are
// harmless: one that is not newer than the rank's epoch (a replayed or late copy, a repeat) is
// ignored, and a newer one can only be a real epoch (announcements are MAC'd), so acting on
// it twice is acting once.

/** The epoch `msg` announces when it is newer than `current`; null for anything else. */
export function newerEpochAnnounced(msg: unknown, current: number): number | null {
  if (msg === null || typeof msg !== 'object') return null;
  const epoch = (msg as { epoch?: unknown }).epoch;
  return typeof epoch === 'number' && Number.isInteger(epoch) && epoch > current ? epoch : null;
}
