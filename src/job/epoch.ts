// The job's epoch record: the KV key `epoch` in bucket `dw_<job>`, {epoch, partitions, members,
// cellSize}, written only by compare-and-set and announced on `dw.<job>.ctl.epoch`. `members[i]`
// is world rank i; a cell (one data-parallel index) is `cellSize` = tp·sp consecutive world
// ranks, and cell d trains partition d of `partitions` = members / cellSize. Every change of
// the world is a new epoch.
// The coordinator, the trainer and the CLI read and change it through these functions only.
import type { Bus } from '../bus/bus.ts';
import { ConflictError, InvalidArgumentError, UnavailableError } from '../errors.ts';

// The record's shape is part of the wire protocol (ctl.epoch carries it too).
import type { EpochInfo } from '../wire/protocol.ts';
export type { EpochInfo };

/** The largest data-parallel width `scale` accepts (one rank process per DP index). */
export const MAX_DP = 64;

const range = (n: number) => Array.from({ length: n }, (_, i) => i);

/** Ranks per data-parallel index (tp·sp) of a record (older records: 1). */
export const cellSizeOf = (e: EpochInfo): number => (Number.isInteger(e.cellSize) && e.cellSize! >= 1 ? e.cellSize! : 1);

/** Normalises a KV record (older records have no member list: ranks 0..partitions·cellSize-1). */
export function epochMembers(e: EpochInfo): number[] {
  const n = e.partitions * cellSizeOf(e);
  return Array.isArray(e.members) && e.members.length === n && e.members.every((m) => Number.isInteger(m)) ? e.members as number[] : range(n);
}

/** Creates the epoch record if absent (epoch 1, ranks 0..dp·cellSize-1); returns the current one. */
export async function ensureEpoch(bus: Bus, dp: number, cellSize = 1): Promise<EpochInfo> {
  const kv = await bus.kv(bus.subjects.kvBucket);
  for (;;) {
    const cur = await kv.get<EpochInfo>('epoch');
    if (cur) return cur.value;
    try {
      const info: EpochInfo = { epoch: 1, partitions: dp, members: range(dp * cellSize), cellSize };
      await kv.create('epoch', info);
      bus.publish(bus.subjects.ctlEpoch, info);
      return info;
    } catch (e) {
      if (!(e instanceof ConflictError)) throw e; // another coordinator won the race: read it
    }
  }
}

/**
 * Writes epoch + 1 with the members `next` computes from the current record (compare-and-set
 * on the KV revision; retried on a lost race). `next` returning null leaves the record as is;
 * it returns whole cells (a multiple of the record's cell size).
 */
export async function changeEpoch(bus: Bus, next: (cur: EpochInfo) => number[] | null): Promise<{ from: EpochInfo; to: EpochInfo; changed: boolean }> {
  const kv = await bus.kv(bus.subjects.kvBucket);
  for (let i = 0; i < 20; i++) {
    const cur = await kv.get<EpochInfo>('epoch');
    if (!cur) throw new UnavailableError('the job has no epoch record yet (is the coordinator running?)');
    const members = next(cur.value);
    if (members === null) return { from: cur.value, to: cur.value, changed: false };
    const cellSize = cellSizeOf(cur.value);
    if (members.length === 0 || members.length % cellSize !== 0) throw new InvalidArgumentError(`an epoch needs whole cells of ${cellSize} ranks, got ${members.length} members`);
    const to: EpochInfo = { epoch: cur.value.epoch + 1, partitions: members.length / cellSize, members, cellSize };
    try {
      await kv.update('epoch', to, cur.revision);
      bus.publish(bus.subjects.ctlEpoch, to);
      return { from: cur.value, to, changed: true };
    } catch (e) {
      if (!(e instanceof ConflictError)) throw e; // someone else changed it: read again
    }
  }
  throw new ConflictError('lost the epoch compare-and-set 20 times in a row');
}

/** Bumps the epoch to data-parallel width dp (members 0..dp-1). */
export async function bumpEpoch(bus: Bus, dp: number): Promise<{ from: EpochInfo; to: EpochInfo }> {
  if (!Number.isInteger(dp) || dp < 1 || dp > MAX_DP) throw new InvalidArgumentError(`scale: dp must be an integer in [1, ${MAX_DP}], got ${String(dp)}`);
  return changeEpoch(bus, (cur) => range(dp * cellSizeOf(cur)));
}

/** The members without the cell that holds `rank` (its other ranks cannot train without it). */
export function withoutGroupOf(e: EpochInfo, rank: number): number[] {
  const m = epochMembers(e), g = cellSizeOf(e), i = m.indexOf(rank);
  if (i < 0) return m;
  const d = Math.floor(i / g);
  return m.filter((_, j) => Math.floor(j / g) !== d);
}
