// `draftwire scale --job J --dp N`: changes the data-parallel width of a running job. The
// coordinator bumps the epoch by compare-and-set in the job's KV bucket; the queue stops
// granting under the old epoch; the world checkpoints and acks what it trained, releases the
// rest; new ranks are spawned on the node agents, dropped ones retire, and the new world
// forms (weights and AdamW state broadcast from the most advanced rank) and re-subscribes
// under the new partition count (actors/coordinator.ts, trainer/rank-worker.ts, trainer/world.ts).
import { Command } from 'commander';
import { AuthPolicy } from '../../src/wire/auth.ts';
import { Bus } from '../../src/bus/bus.ts';
import { InvalidArgumentError } from '../../src/errors.ts';
import type { GlobalOptions } from '../options.ts';
import { dirOption, intInRange, jobId, natsUrl } from '../options.ts';
import { MAX_DP } from '../../src/job/epoch.ts';
import { CoordinatorClient } from '../../src/bus/clients.ts';
import { liveNatsUrl } from './audit.ts';

export function command(): Command {
  return new Command('scale')
    .summary('change the data-parallel width of a running job (epoch bump + reshard)')
    .description('Changes the data-parallel width of a running job: the coordinator bumps the epoch, the node agents spawn the new ranks (a whole TP x SP cell per DP index), dropped ranks retire after checkpointing and acking what they trained, and the new world forms and re-subscribes under the new partition count. Watch it with `draftwire status --job J`.\n\nExample: draftwire scale --job dw-20261128 --dp 3')
    .requiredOption('--job <id>', 'job id', jobId)
    .requiredOption('--dp <n>', `new data-parallel width (1..${MAX_DP})`, intInRange('--dp', 1, MAX_DP))
    .option('--workdir <dir>', 'where run directories are', dirOption('--workdir'), 'runs')
    .option('--nats <url>', 'NATS server of the job (default: from the run directory)', natsUrl)
    .action(async (_o: unknown, cmd: Command) => {
      const o = cmd.optsWithGlobals<GlobalOptions & { job: string; dp: number; workdir: string; nats?: string }>();
      const url = o.nats ?? liveNatsUrl(o.workdir, o.job);
      if (!url) throw new InvalidArgumentError(`job ${o.job} is not running here (no run.json under ${o.workdir}/${o.job}); pass --nats URL`);
      const bus = await Bus.connect({ servers: url, job: o.job, auth: AuthPolicy.fromEnv(), name: 'scale', reconnect: false });
      try {
        const r = await new CoordinatorClient(bus).scale(o.dp);
        if (o.json) process.stdout.write(JSON.stringify(r) + '\n');
        else {
          const extra = [r.spawned.length ? `spawned ${r.spawned.map((x) => `rank ${x.rank} on ${x.node}`).join(', ')}` : '', r.retiring.length ? `retiring ranks ${r.retiring.join(', ')}` : ''].filter(Boolean).join('; ');
          process.stdout.write(`job ${o.job}: epoch ${r.from.epoch} (dp ${r.from.partitions}) -> epoch ${r.to.epoch} (dp ${r.to.partitions})${extra ? `; ${extra}` : ''}\n`);
        }
      } finally { await bus.close(); }
    });
}
