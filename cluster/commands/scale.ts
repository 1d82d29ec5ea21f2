// `draftwire scale --job J --dp N`: changes the data-parallel width of a running job. The
// coordinator bumps the epoch by compare-and-set in the job's KV bucket; the queue stops
// granting under the old epoch; ranks checkpoint and ack what they trained, release the rest
// and re-join under the new partition count (actors/coordinator.ts, actors/rank.ts).
// This build trains with one rank: dp other than 1 is refused (exit 2) with the reason.
import { Command } from 'commander';
import { AuthPolicy } from '../../src/auth.ts';
import { Bus } from '../../src/bus.ts';
import { InvalidArgumentError } from '../../src/errors.ts';
import type { GlobalOptions } from '../cli.ts';
import { jobId, positiveInt } from '../options.ts';
import { liveNatsUrl } from './audit.ts';

export function command(): Command {
  return new Command('scale')
    .summary('change the data-parallel width of a running job (epoch bump + reshard)')
    .requiredOption('--job <id>', 'job id', jobId)
    .requiredOption('--dp <n>', 'new data-parallel width', positiveInt('--dp'))
    .option('--workdir <dir>', 'where run directories are', 'runs')
    .option('--nats <url>', 'NATS server of the job (default: from the run directory)')
    .action(async (_o: unknown, cmd: Command) => {
      const o = cmd.optsWithGlobals<GlobalOptions & { job: string; dp: number; workdir: string; nats?: string }>();
      const url = o.nats ?? liveNatsUrl(o.workdir, o.job);
      if (!url) throw new InvalidArgumentError(`job ${o.job} is not running here (no run.json under ${o.workdir}/${o.job}); pass --nats URL`);
      const bus = await Bus.connect({ servers: url, job: o.job, auth: AuthPolicy.fromEnv(), name: 'scale', reconnect: false });
      try {
        const r = await bus.request<{ from: { epoch: number; num: number }; to: { epoch: number; num: number } }>(`dw.${o.job}.coord.scale`, { dp: o.dp }, { timeoutMs: 10_000, retries: 2, idempotencyKey: `scale:${o.dp}:${Date.now()}` });
        if (o.json) process.stdout.write(JSON.stringify(r) + '\n');
        else process.stdout.write(`job ${o.job}: epoch ${r.from.epoch} (dp ${r.from.num}) -> epoch ${r.to.epoch} (dp ${r.to.num})\n`);
      } finally { await bus.close(); }
    });
}
