// `draftwire audit --job J [--dump]`: checks a job's ledger independently of the ledger's
// own code: every committed sample consumed exactly once or dead-lettered, no two leases of
// a sample overlapping, only current holders' acks accepted. It reads the live write-ahead
// log from NATS (--nats, or the running job's run.json) or, after a run, <run>/ledger.jsonl.
// A log record that fails its MAC or its shape is listed by stream seq (and the audit fails);
// records the operator skipped (`draftwire wal skip`) and replayed copies are listed too.
import { existsSync, readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { Command } from 'commander';
import { readWal } from '../../src/ledger/wal.ts';
import { writeFileMode } from '../../src/files.ts';
import { AuthPolicy } from '../../src/wire/auth.ts';
import { Bus } from '../../src/bus/bus.ts';
import { startNatsServer, type NatsServerHandle } from '../nats-launcher.ts';
import { DecodeError, DraftwireError, InvalidArgumentError } from '../../src/errors.ts';
import { auditEvents, type LedgerEvent } from '../../src/ledger/ledger.ts';
import { ledgerEventProblem, type WalFindings } from '../../src/ledger/events.ts';
import type { GlobalOptions } from '../options.ts';
import { dirOption, jobId, natsUrl } from '../options.ts';

// Bytes (a ref's mac) as hex. `this[k]` is the value before its toJSON: a Buffer's toJSON would
// otherwise hand the replacer {type: 'Buffer', data: [...]} instead of the bytes.
function hex(this: Record<string, unknown>, k: string, v: unknown): unknown {
  const raw = this[k];
  return raw instanceof Uint8Array ? Buffer.from(raw).toString('hex') : v;
}

export async function writeLedgerJsonl(path: string, events: LedgerEvent[]): Promise<void> {
  await writeFileMode(path, events.map((e) => JSON.stringify(e, hex)).join('\n') + (events.length ? '\n' : ''));
}

export function readLedgerJsonl(path: string): LedgerEvent[] {
  return readFileSync(path, 'utf8').split('\n').filter((l) => l.trim() !== '').map((l, i) => {
    let x: unknown;
    try { x = JSON.parse(l); } catch { throw new DecodeError(`${path} line ${i + 1}: not valid JSON`); }
    // A file of events is input: a line of the wrong shape is bad input naming the line and the
    // field (the WAL's own validator), not a TypeError inside the audit.
    const problem = ledgerEventProblem(x);
    if (problem !== null) throw new DecodeError(`${path} line ${i + 1}: ledger event ${problem}`);
    // writeLedgerJsonl wrote a ref's mac as hex: back to bytes, so the ref validates.
    const ref = (x as { ref?: { mac?: unknown } }).ref;
    if (ref && typeof ref === 'object' && typeof ref.mac === 'string' && /^[0-9a-f]{64}$/.test(ref.mac)) ref.mac = new Uint8Array(Buffer.from(ref.mac, 'hex'));
    return x as LedgerEvent;
  });
}

/** The NATS URL of a running job (from its run.json), or null. */
export function liveNatsUrl(workdir: string, job: string): string | null {
  const f = join(resolve(workdir), job, 'run.json');
  if (!existsSync(f)) return null;
  try { return (JSON.parse(readFileSync(f, 'utf8')) as { nats?: string }).nats ?? null; } catch { return null; }
}

/**
 * Runs `fn` with a bus to the job's NATS: --nats, the running job's (run.json), or, for a
 * stopped run that did not finish (its ledger still in <run>/nats), a private nats-server on
 * that store for the length of `fn` (so `audit` and `wal skip` work after a failed --resume).
 * null when there is none of those.
 */
export async function withJobBus<T>(job: string, workdir: string, nats: string | undefined, name: string, fn: (bus: Bus, source: string) => Promise<T>): Promise<T | null> {
  const auth = AuthPolicy.fromEnv();
  let url = nats ?? liveNatsUrl(workdir, job);
  let server: NatsServerHandle | null = null;
  const store = join(resolve(workdir), job, 'nats');
  if (!url && existsSync(store)) {
    server = await startNatsServer({ credentials: auth.natsCredentials(), storeDir: store });
    url = server.url;
  }
  if (!url) return null;
  try {
    const bus = await Bus.connect({ servers: url, job, auth, name, reconnect: false });
    try { return await fn(bus, server ? `${store} (stream dw_${job}_wal)` : `${url} (stream dw_${job}_wal)`); } finally { await bus.close(); }
  } finally { await server?.stop(); }
}

export async function loadEvents(job: string, workdir: string, nats?: string): Promise<{ events: LedgerEvent[]; source: string; wal?: WalFindings }> {
  const live = await withJobBus(job, workdir, nats, 'audit', async (bus, source) => {
    const { events, bad, skipped, duplicates } = await readWal(bus);
    return { events, source, wal: { bad, skipped, duplicates } };
  });
  if (live) return live;
  const file = join(resolve(workdir), job, 'ledger.jsonl');
  if (!existsSync(file)) throw new InvalidArgumentError(`job ${job}: no running job (no ${join(workdir, job, 'run.json')}) and no ledger export at ${file}; pass --nats URL for a job elsewhere`);
  return { events: readLedgerJsonl(file), source: file };
}

export function command(): Command {
  return new Command('audit')
    .summary('check a job\'s ledger: every sample consumed once or dead-lettered, no overlapping leases, no stale acks')
    .requiredOption('--job <id>', 'job id', jobId)
    .option('--workdir <dir>', 'where run directories are', dirOption('--workdir'), 'runs')
    .option('--nats <url>', 'read the live write-ahead log from this NATS server', natsUrl)
    .option('--dump', 'print the raw ledger events as JSON lines (stdout)')
    .action(async (_o: unknown, cmd: Command) => {
      const o = cmd.optsWithGlobals<GlobalOptions & { job: string; workdir: string; nats?: string; dump?: boolean }>();
      const { events, source, wal } = await loadEvents(o.job, o.workdir, o.nats);
      if (o.dump) for (const e of events) process.stdout.write(JSON.stringify(e, hex) + '\n');
      const report = auditEvents(events, wal);
      if (o.json) process.stdout.write(JSON.stringify({ source, events: events.length, ...report }) + '\n');
      else if (!o.dump) {
        process.stdout.write(`${report.ok ? 'clean' : 'PROBLEMS'}: ${events.length} events from ${source}\n` +
          `committed ${report.committed}, consumed ${report.consumed}, dead ${report.dead}, pending ${report.pending}, leased ${report.leased}, complete ${report.complete}\n` +
          report.problems.map((p) => `  problem: ${p}\n`).join('') +
          report.wal.skipped.map((k) => `  skipped by the operator: stream seq ${k.streamSeq} (skip record ${k.skipStreamSeq}: ${k.reason})\n`).join('') +
          report.wal.duplicates.map((d) => `  replayed copy ignored: stream seq ${d.streamSeq} repeats stream seq ${d.original} (events #${d.events[0]}..#${d.events[1]})\n`).join('') +
          (report.wal.bad.length ? `  to go on past a bad record: draftwire wal skip --job ${o.job} --seq N --reason "..."\n` : ''));
      }
      if (!report.ok) throw new DraftwireError('AUDIT', `${report.problems.length} problem(s) in the ledger of job ${o.job}`, false);
    });
}
