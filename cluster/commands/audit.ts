// `draftwire audit --job J [--dump]`: checks a job's ledger independently of the ledger's
// own code: every committed sample consumed exactly once or dead-lettered, no two leases of
// a sample overlapping, only current holders' acks accepted. It reads the live write-ahead
// log from NATS (--nats, or the running job's run.json) or, after a run, <run>/ledger.jsonl.
import { existsSync, readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { Command } from 'commander';
import { readLedgerEvents } from '../../src/ledger/wal.ts';
import { writeFileMode } from '../../src/job/files.ts';
import { AuthPolicy } from '../../src/wire/auth.ts';
import { Bus } from '../../src/bus/bus.ts';
import { DecodeError, DraftwireError, InvalidArgumentError } from '../../src/errors.ts';
import { auditEvents, type LedgerEvent } from '../../src/ledger/ledger.ts';
import type { GlobalOptions } from '../options.ts';
import { dirOption, jobId, natsUrl } from '../options.ts';

const hex = (_k: string, v: unknown) => (v instanceof Uint8Array ? Buffer.from(v).toString('hex') : v);

export async function writeLedgerJsonl(path: string, events: LedgerEvent[]): Promise<void> {
  await writeFileMode(path, events.map((e) => JSON.stringify(e, hex)).join('\n') + (events.length ? '\n' : ''));
}

export function readLedgerJsonl(path: string): LedgerEvent[] {
  return readFileSync(path, 'utf8').split('\n').filter((l) => l.trim() !== '').map((l, i) => {
    let x: unknown;
    try { x = JSON.parse(l); } catch { throw new DecodeError(`${path} line ${i + 1}: not valid JSON`); }
    return checkEventShape(x, `${path} line ${i + 1}`);
  });
}

// The fields of each event type the audit reads (src/ledger/events.ts): a file of events is
// input, and a line of the wrong shape is bad input (exit 2, naming the line and the field),
// not a TypeError inside the audit.
const S = 'string', N = 'number', B = 'boolean';
const EVENT_FIELDS: Record<string, Record<string, string>> = {
  put: { ref: 'ref' },
  lease: { epoch: N, consumer: S, partition: 'partition', leases: 'grants' },
  ack: { leaseId: S, sampleId: S, epoch: N },
  release: { leaseId: S, sampleId: S, epoch: N },
  fail: { leaseId: S, sampleId: S, epoch: N, retryable: B, reason: S, dead: B },
  renew: { leaseId: S, sampleId: S, epoch: N, deadline: N },
  expire: { leases: 'expired' },
  dead: { sampleId: S, generation: N, deliveries: N, reason: S },
  epoch: { epoch: N },
};
const isObj = (v: unknown): v is Record<string, unknown> => v !== null && typeof v === 'object' && !Array.isArray(v);
const listOf = (v: unknown, fields: Record<string, string>) => Array.isArray(v) && v.every((g) => isObj(g) && Object.entries(fields).every(([k, t]) => typeof g[k] === t));

export function checkEventShape(x: unknown, where: string): LedgerEvent {
  if (!isObj(x)) throw new DecodeError(`${where}: a ledger event must be a JSON object`);
  const bad = (field: string, want: string) => new DecodeError(`${where}: ledger event${typeof x.type === 'string' ? ` "${x.type}"` : ''}: "${field}" must be ${want}, got ${JSON.stringify(x[field]) ?? 'nothing'}`);
  if (!Number.isSafeInteger(x.seq) || (x.seq as number) < 1) throw bad('seq', 'an integer ≥ 1');
  if (typeof x.type !== 'string' || !(x.type in EVENT_FIELDS)) throw bad('type', `one of ${Object.keys(EVENT_FIELDS).join(', ')}`);
  for (const [k, t] of Object.entries(EVENT_FIELDS[x.type]!)) {
    const v = x[k];
    const ok = t === 'ref' ? isObj(v) && typeof v.sampleId === 'string'
      : t === 'partition' ? Array.isArray(v) && v.length === 2 && v.every((n) => Number.isInteger(n))
        : t === 'grants' ? listOf(v, { leaseId: S, sampleId: S })
          : t === 'expired' ? listOf(v, { leaseId: S, sampleId: S })
            : typeof v === t;
    if (!ok) {
      const want = { ref: 'a sample ref ({sampleId, ...})', partition: '[index, partitions]', grants: 'a list of {leaseId, sampleId}', expired: 'a list of {leaseId, sampleId}' }[t] ?? `a ${t}`;
      throw bad(k, want);
    }
  }
  return x as unknown as LedgerEvent;
}

/** The NATS URL of a running job (from its run.json), or null. */
export function liveNatsUrl(workdir: string, job: string): string | null {
  const f = join(resolve(workdir), job, 'run.json');
  if (!existsSync(f)) return null;
  try { return (JSON.parse(readFileSync(f, 'utf8')) as { nats?: string }).nats ?? null; } catch { return null; }
}

export async function loadEvents(job: string, workdir: string, nats?: string): Promise<{ events: LedgerEvent[]; source: string }> {
  const url = nats ?? liveNatsUrl(workdir, job);
  if (url) {
    const bus = await Bus.connect({ servers: url, job, auth: AuthPolicy.fromEnv(), name: 'audit', reconnect: false });
    try { return { events: await readLedgerEvents(bus), source: `${url} (stream dw_${job}_wal)` }; } finally { await bus.close(); }
  }
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
      const { events, source } = await loadEvents(o.job, o.workdir, o.nats);
      if (o.dump) for (const e of events) process.stdout.write(JSON.stringify(e, hex) + '\n');
      const report = auditEvents(events);
      if (o.json) process.stdout.write(JSON.stringify({ source, events: events.length, ...report }) + '\n');
      else if (!o.dump) {
        process.stdout.write(`${report.ok ? 'clean' : 'PROBLEMS'}: ${events.length} events from ${source}\n` +
          `committed ${report.committed}, consumed ${report.consumed}, dead ${report.dead}, pending ${report.pending}, leased ${report.leased}, complete ${report.complete}\n` +
          report.problems.map((p) => `  problem: ${p}\n`).join(''));
      }
      if (!report.ok) throw new DraftwireError('AUDIT', `${report.problems.length} problem(s) in the ledger of job ${o.job}`, false);
    });
}
