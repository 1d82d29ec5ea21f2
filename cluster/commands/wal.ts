// `draftwire wal skip --job J --seq N --reason "..."`: the operator's way past a write-ahead
// log record that replay cannot use (bad MAC, wrong shape: `draftwire audit` lists them by
// stream seq). Appends a sealed skip record naming N; replay (the queue, audit, run --resume)
// then ignores record N explicitly and the audit reports it as skipped by the operator.
// Skipping a well-formed record loses its events, so that needs --force.
import { Argument, Command } from 'commander';
import { appendWalSkip, readWal } from '../../src/ledger/wal.ts';
import type { Bus } from '../../src/bus/bus.ts';
import { InvalidArgumentError } from '../../src/errors.ts';
import type { GlobalOptions } from '../options.ts';
import { jobId, positiveInt } from '../options.ts';
import { withJobBus } from './audit.ts';

interface SkipOptions extends GlobalOptions { job: string; seq: number; reason: string; workdir: string; nats?: string; force?: boolean }

export interface SkipOutcome { seq: number; status: 'skipped' | 'already-skipped' | 'duplicate'; skipRecord: number | null; was: string }

/** Checks what record `seq` is, then appends the skip record (see the header). */
export async function walSkip(bus: Bus, seq: number, reason: string, force = false): Promise<SkipOutcome> {
  const w = await readWal(bus);
  const kind = w.kinds.get(seq);
  if (kind === undefined) throw new InvalidArgumentError(`wal skip: the write-ahead log of job ${bus.job} has no record at stream seq ${seq}`);
  if (kind === 'skip') throw new InvalidArgumentError(`wal skip: stream seq ${seq} is itself a skip record`);
  if (kind === 'skipped') return { seq, status: 'already-skipped', skipRecord: w.skipped.find((k) => k.streamSeq === seq)!.skipStreamSeq, was: 'skipped' };
  if (kind === 'duplicate') return { seq, status: 'duplicate', skipRecord: null, was: 'a replayed copy (replay ignores it already)' };
  const bad = w.bad.find((b) => b.streamSeq === seq);
  if (!bad && !force) throw new InvalidArgumentError(`wal skip: stream seq ${seq} is a well-formed ledger record; skipping it drops its events (pass --force if the ledger refuses it)`);
  const at = await appendWalSkip(bus, seq, reason);
  return { seq, status: 'skipped', skipRecord: at, was: bad ? bad.reason : 'a well-formed ledger record' };
}

export function command(): Command {
  // One command with an action argument (not a nested subcommand), so cli.ts's error
  // handling (exitOverride, exit 2 on bad input) applies to it as to every other command.
  return new Command('wal')
    .summary('repair a job\'s write-ahead log: `wal skip` tells replay to ignore one record (by stream seq, as `audit` lists it)')
    .addArgument(new Argument('<action>', 'what to do').choices(['skip']))
    .requiredOption('--job <id>', 'job id', jobId)
    .requiredOption('--seq <n>', 'stream seq of the record', positiveInt('--seq'))
    .requiredOption('--reason <text>', 'why (kept in the log and shown by audit)')
    .option('--workdir <dir>', 'where run directories are', 'runs')
    .option('--nats <url>', 'the NATS server of the job (default: the running job\'s run.json)')
    .option('--force', 'also skip a well-formed record (its events are lost)')
    .action(async (_action: string, _o: unknown, cmd: Command) => {
      const o = cmd.optsWithGlobals<SkipOptions>();
      if (o.reason.trim() === '') throw new InvalidArgumentError('--reason must say why the record is skipped');
      const done = await withJobBus(o.job, o.workdir, o.nats, 'wal-skip', async (bus) => {
        const r = await walSkip(bus, o.seq, o.reason, o.force === true);
        if (o.json) process.stdout.write(JSON.stringify(r) + '\n');
        else process.stdout.write(r.status === 'skipped' ? `skipped stream seq ${r.seq} (${r.was}); skip record at stream seq ${r.skipRecord}\n`
          : r.status === 'already-skipped' ? `stream seq ${r.seq} was skipped already (skip record ${r.skipRecord})\n`
          : `stream seq ${r.seq} is ${r.was}; nothing to do\n`);
        return true;
      });
      if (!done) throw new InvalidArgumentError(`job ${o.job}: no running job and no unfinished run under ${o.workdir} (no ${o.job}/run.json, no ${o.job}/nats); pass --nats URL`);
    });
}
