// `draftwire node`: one per machine. Hosts the actors its roles name and spawns rank
// processes, on start (--ranks) or when asked on `dw.<job>.node.<nodeId>.spawn`. Runs until
// SIGINT/SIGTERM, then stops its ranks and actors.
import { hostname } from 'node:os';
import { Command } from 'commander';
import { AuthPolicy } from '../../src/wire/auth.ts';
import { InvalidArgumentError } from '../../src/errors.ts';
import { loadJobSpec } from '../../src/job/spec.ts';
import { createLogger } from '../../src/log.ts';
import type { GlobalOptions } from '../options.ts';
import { natsUrl, nodeId } from '../options.ts';
import { NodeAgent, parseRoles, ROLES } from '../node.ts';

const log = createLogger('node');

export function command(): Command {
  return new Command('node')
    .summary('run this machine\'s node agent: host actors by role, spawn rank processes')
    .requiredOption('--job-file <file>', 'the job spec (job.json written by `draftwire run` or by hand)')
    .requiredOption('--nats <url>', 'NATS server (cluster) of the job', natsUrl)
    .option('--roles <list>', `comma-separated roles (${ROLES.join(', ')}); none = ranks only`, '')
    .option('--node-id <id>', 'this node\'s id', nodeId, hostname().replace(/[^A-Za-z0-9_-]/g, '-').slice(0, 64))
    .option('--ranks <list>', 'ranks to start now, e.g. 0,1')
    .action(async (_o: unknown, cmd: Command) => {
      const o = cmd.optsWithGlobals<GlobalOptions & { jobFile: string; nats: string; roles: string; nodeId: string; ranks?: string }>();
      const spec = loadJobSpec(o.jobFile);
      const ranks = (o.ranks ?? '').split(',').filter(Boolean).map((r) => {
        if (!/^\d+$/.test(r)) throw new InvalidArgumentError(`--ranks: "${r}" is not a rank number`);
        return Number(r);
      });
      const node = await NodeAgent.start({ spec, nats: o.nats, nodeId: o.nodeId, roles: parseRoles(o.roles), auth: AuthPolicy.fromEnv() });
      for (const r of ranks) node.spawnRank(r);
      log.info('node running', { job: spec.job, node: o.nodeId, roles: o.roles, ranks });
      await new Promise<void>((resolve) => { process.once('SIGINT', resolve); process.once('SIGTERM', resolve); });
      await node.stop();
    });
}
