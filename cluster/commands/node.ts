// `draftwire node`: one per machine. Hosts the actors its roles name and spawns rank
// processes, on start (--ranks) or when asked on `dw.<job>.node.<nodeId>.spawn`. Runs until
// SIGINT/SIGTERM, then stops its ranks and actors. With --listen it serves its own store over
// HTTP (the data plane between machines that share no directory) and the refs its producers
// write name it (--advertise, default the listening address).
import { hostname } from 'node:os';
import { Command, InvalidArgumentError as OptionError } from 'commander';
import { AuthPolicy } from '../../src/wire/auth.ts';
import { InvalidArgumentError } from '../../src/errors.ts';
import { loadJobSpec } from '../../src/job/spec.ts';
import { createLogger } from '../../src/log.ts';
import type { GlobalOptions } from '../options.ts';
import { natsUrl, nodeId } from '../options.ts';
import { NodeAgent, parseRoles, ROLES } from '../node.ts';

const log = createLogger('node');

/** HOST:PORT (an IPv6 host in brackets); the message names the option. */
export function hostPort(name: string, allowZeroPort: boolean) {
  return (v: string): { host: string; port: number } => {
    const m = /^(\[[0-9A-Fa-f:.]{2,45}\]|[A-Za-z0-9.-]{1,253}):([0-9]{1,5})$/.exec(v.trim());
    const port = m ? Number(m[2]) : NaN;
    if (!m || port > 65535 || (port === 0 && !allowZeroPort)) throw new OptionError(`${name} must be HOST:PORT (an IPv6 host in brackets, port ${allowZeroPort ? '0' : '1'}..65535), got "${v}"`);
    return { host: m[1]!, port };
  };
}

const WILDCARD = new Set(['0.0.0.0', '[::]', '[::0]']);

export function command(): Command {
  return new Command('node')
    .summary('run this machine\'s node agent: host actors by role, spawn rank processes')
    .requiredOption('--job-file <file>', 'the job spec (job.json written by `draftwire run` or by hand)')
    .requiredOption('--nats <url>', 'NATS server (cluster) of the job', natsUrl)
    .option('--roles <list>', `comma-separated roles (${ROLES.join(', ')}); none = ranks only`, '')
    .option('--node-id <id>', 'this node\'s id', nodeId, hostname().replace(/[^A-Za-z0-9_-]/g, '-').slice(0, 64))
    .option('--ranks <list>', 'ranks to start now, e.g. 0,1')
    .option('--listen <host:port>', 'serve this node\'s store over HTTP here, for nodes that share no directory (port 0: any free port)', hostPort('--listen', true))
    .option('--advertise <host:port>', 'the address other machines reach --listen at, carried by the refs this node writes (default the listening address)', hostPort('--advertise', false))
    .option('--store-dir <dir>', 'this node\'s store directory (default the job\'s storeDir)')
    .action(async (_o: unknown, cmd: Command) => {
      const o = cmd.optsWithGlobals<GlobalOptions & { jobFile: string; nats: string; roles: string; nodeId: string; ranks?: string; listen?: { host: string; port: number }; advertise?: { host: string; port: number }; storeDir?: string }>();
      if (o.advertise && !o.listen) throw new InvalidArgumentError('--advertise needs --listen (the address it advertises)');
      if (o.listen && !o.advertise && WILDCARD.has(o.listen.host)) throw new InvalidArgumentError(`--listen ${o.listen.host} binds every interface: say which address other machines reach it at with --advertise HOST:PORT`);
      if (o.storeDir !== undefined && o.storeDir.trim() === '') throw new InvalidArgumentError('--store-dir must be a non-empty path');
      const spec = loadJobSpec(o.jobFile);
      const ranks = (o.ranks ?? '').split(',').filter(Boolean).map((r) => {
        if (!/^\d+$/.test(r)) throw new InvalidArgumentError(`--ranks: "${r}" is not a rank number`);
        return Number(r);
      });
      const node = await NodeAgent.start({ spec, nats: o.nats, nodeId: o.nodeId, roles: parseRoles(o.roles), auth: AuthPolicy.fromEnv(), listen: o.listen, advertise: o.advertise, storeDir: o.storeDir });
      for (const r of ranks) node.spawnRank(r);
      log.info('node running', { job: spec.job, node: o.nodeId, roles: o.roles, ranks, ...(node.dataPlane ? { dataPlane: node.store.advertisedAt } : {}) });
      await new Promise<void>((resolve) => { process.once('SIGINT', resolve); process.once('SIGTERM', resolve); });
      await node.stop();
    });
}
