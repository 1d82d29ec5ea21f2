// Data-parallel partitioning of samples: a stable 64-bit hash of the sample id fed to jump
// consistent hash (Lamping & Veach, "A Fast, Minimal Memory, Consistent Hash Algorithm",
// 2014). Same answer on every node, every run and every Node version (sha256 + integer math
// only). When `num` grows from n to n+1, only ~1/(n+1) of the keys move, all to index n.
import { createHash } from 'node:crypto';
import { InvalidArgumentError } from '../errors.ts';

const MASK64 = (1n << 64n) - 1n;
const JUMP_MULT = 2862933555777941757n;
/** Largest partition count accepted (jump hash itself works up to 2^31). */
export const MAX_PARTITIONS = 1 << 20;

/** The stable 64-bit hash of a sample id: the first 8 bytes of sha256(utf8(id)), big-endian. */
export function hash64(sampleId: string): bigint {
  if (typeof sampleId !== 'string') throw new InvalidArgumentError(`sampleId must be a string, got ${typeof sampleId}`);
  return createHash('sha256').update(sampleId, 'utf8').digest().readBigUInt64BE(0);
}

function checkNum(num: number): void {
  if (!Number.isInteger(num) || num < 1 || num > MAX_PARTITIONS) {
    throw new InvalidArgumentError(`partition count must be an integer in [1, ${MAX_PARTITIONS}], got ${String(num)}`);
  }
}

/** Jump consistent hash of a 64-bit key into [0, num). */
export function jumpHash(key: bigint, num: number): number {
  checkNum(num);
  let k = BigInt.asUintN(64, key);
  let b = -1;
  let j = 0;
  while (j < num) {
    b = j;
    k = (k * JUMP_MULT + 1n) & MASK64;
    j = Math.floor((b + 1) * (2147483648 / (Number(k >> 33n) + 1)));
  }
  return b;
}

/** The data-parallel index (in [0, num)) that owns `sampleId` when there are `num` ranks. */
export function dpPartition(sampleId: string, num: number): number {
  checkNum(num);
  return jumpHash(hash64(sampleId), num);
}
