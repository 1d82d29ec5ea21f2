// The one mode policy for everything a job writes (run directory, job.json, weights,
// checkpoints, optimizer state, logs, summary, ledger export, the feature store): files 0640,
// directories 0750: the owner writes, the job's group may read (a shared-filesystem reader
// in the same group), nobody else sees anything. The modes are set exactly (chmod after
// create), so a permissive umask (000) cannot make a run's outputs world-writable and a
// strict one does not change what a reader in the group can rely on. (The embedded
// nats-server's store, <run>/nats, is the launcher's: 0700, the server's own files inside.)
import { closeSync, createWriteStream, fchmodSync, openSync, type WriteStream } from 'node:fs';
import { chmod, mkdir, open, rename, rm, type FileHandle } from 'node:fs/promises';
import { join, relative, sep } from 'node:path';

export const FILE_MODE = 0o640;
export const DIR_MODE = 0o750;

/** `mkdir -p`: every directory it creates gets DIR_MODE (existing ones are left as they are). */
export async function makeDir(dir: string): Promise<void> {
  const first = await mkdir(dir, { recursive: true, mode: DIR_MODE });
  if (first === undefined) return;
  let cur = first;
  await chmod(cur, DIR_MODE);
  for (const part of relative(first, dir).split(sep).filter(Boolean)) {
    cur = join(cur, part);
    await chmod(cur, DIR_MODE);
  }
}

/** Opens a file for writing (created or truncated by `flags`) and gives it FILE_MODE. */
export async function openForWrite(path: string, flags = 'w'): Promise<FileHandle> {
  const fh = await open(path, flags, FILE_MODE);
  try { await fh.chmod(FILE_MODE); } catch (e) { await fh.close(); throw e; }
  return fh;
}

/** Writes a whole file in place with FILE_MODE. */
export async function writeFileMode(path: string, data: string | Uint8Array): Promise<void> {
  const fh = await openForWrite(path);
  try { await fh.writeFile(data); } finally { await fh.close(); }
}

/** Writes a file atomically (temp + optional fsync + rename) with FILE_MODE. */
export async function writeFileAtomic(path: string, data: string | Uint8Array, opts: { fsync?: boolean } = {}): Promise<void> {
  await writeAtomic(path, (fh) => fh.writeFile(data), opts);
}

/**
 * Writes a file atomically with `write` (temp + optional fsync + rename), FILE_MODE: a reader
 * (or a crash) sees the previous file or the whole new one, never a part.
 */
export async function writeAtomic(path: string, write: (fh: FileHandle) => Promise<unknown>, opts: { fsync?: boolean } = {}): Promise<void> {
  const tmp = `${path}.tmp-${process.pid}`;
  try {
    const fh = await openForWrite(tmp);
    try { await write(fh); if (opts.fsync) await fh.sync(); } finally { await fh.close(); }
    await rename(tmp, path);
  } catch (e) {
    await rm(tmp, { force: true });
    throw e;
  }
}

/** An append stream (a log) whose file has FILE_MODE. */
export function appendStream(path: string): WriteStream {
  const fd = openSync(path, 'a', FILE_MODE);
  try { fchmodSync(fd, FILE_MODE); } catch (e) { closeSync(fd); throw e; }
  return createWriteStream(path, { fd, flags: 'a' });
}
