// `draftwire node`: one per machine. Hosts the actors its roles name and spawns rank
// processes, on start (--ranks) or when asked on `dw.<job>.node.<nodeId>.spawn`. Runs until
// SIGINT/SIGTERM, then stops its ranks and actors. With --listen it serves its own store over
// HTTP (the data plane between machines that share no directory) and the refs its producers
// write name it (--advertise, default the listening address).
//
// The control plane: an existing NATS server or cluster (`--nats url1,url2,url3`: the client
// gets every address and fails over), or a member of the job's NATS cluster that this node
// starts itself (`--nats-cluster --nats-listen H:P --cluster-listen H:P --routes ...`:
// JetStream on, server name = the node id, cluster name `dw-<job>`, route connections
// authenticated with credentials derived from the secret, restarted on its store if it dies).
// TLS files (--tls-cert/--tls-key/--tls-ca) serve the member (clients and routes) and this
// node's connections; they are handed to the rank processes in DRAFTWIRE_TLS_CA/CERT/KEY, and
// the replica count of the job's streams and KV buckets in DRAFTWIRE_NATS_REPLICAS, so every
// process of the node creates them alike.
import { mkdirSync } from 'node:fs';
import { hostname } from 'node:os';
import { join, resolve } from 'node:path';
import { Command, InvalidArgumentError as OptionError } from 'commander';
import { AuthPolicy } from '../../src/wire/auth.ts';
import { InvalidArgumentError } from '../../src/errors.ts';
import { loadJobSpec } from '../../src/job/spec.ts';
import { createLogger } from '../../src/log.ts';
import { Bus, isLoopbackHost, replicasFor, REPLICAS_ENV, splitServers, TLS_ENV } from '../../src/bus/bus.ts';
import { clusterSizeFromRoutes, startNatsServer, type NatsServerHandle, type NatsTlsFiles } from '../nats-launcher.ts';
import type { GlobalOptions } from '../options.ts';
import { addressOption, hostPortOption, intInRange, natsUrl, nodeId, routeList } from '../options.ts';
import { NodeAgent, parseRoles, ROLES } from '../node.ts';

const log = createLogger('node');

interface NodeCliOptions extends GlobalOptions {
  jobFile: string; nats?: string; roles: string; nodeId: string; ranks?: string;
  natsCluster?: boolean; natsListen?: { host: string; port: number }; clusterListen?: { host: string; port: number };
  routes?: string[]; natsStore?: string; natsReplicas?: number;
  tlsCert?: string; tlsKey?: string; tlsCa?: string;
  listen?: { host: string; port: number }; advertise?: { host: string; port: number }; storeDir?: string; commHost?: string;
  metrics?: { host: string; port: number };
}

const WILDCARD = new Set(['0.0.0.0', '[::]', '[::0]']);

export function command(): Command {
  return new Command('node')
    .summary('run this machine\'s node agent: host actors by role, spawn rank processes')
    .requiredOption('--job-file <file>', 'the job spec (job.json written by `draftwire run` or by hand)')
    .option('--nats <urls>', 'NATS server(s) of the job, comma-separated: the client gets all of them and fails over', natsUrl)
    .option('--roles <list>', `comma-separated roles (${ROLES.join(', ')}); none = ranks only`, '')
    .option('--node-id <id>', 'this node\'s id', nodeId, hostname().replace(/[^A-Za-z0-9_-]/g, '-').slice(0, 64))
    .option('--ranks <list>', 'ranks to start now, e.g. 0,1')
    .option('--nats-cluster', 'start a member of the job\'s NATS cluster on this machine (JetStream on)')
    .option('--nats-listen <host:port>', 'with --nats-cluster: the member\'s client address (default 0.0.0.0:4222)', hostPortOption('--nats-listen'))
    .option('--cluster-listen <host:port>', 'with --nats-cluster: the member\'s route address (default 0.0.0.0:6222)', hostPortOption('--cluster-listen'))
    .option('--routes <list>', 'with --nats-cluster: the members\' route URLs, nats-route://host:port,... (this one\'s may be among them)', routeList)
    .option('--nats-store <dir>', 'with --nats-cluster: the member\'s JetStream store (default <runDir>/nats-<node-id>)')
    .option('--nats-replicas <n>', 'replicas of the job\'s streams and KV buckets (default 3 when the cluster has 3 or more servers, else 1)', intInRange('--nats-replicas', 1, 5))
    .option('--tls-cert <file>', 'this machine\'s certificate (PEM): the NATS member serves it, this node presents it')
    .option('--tls-key <file>', 'the key of --tls-cert (PEM)')
    .option('--tls-ca <file>', 'the job\'s CA (PEM): servers and peers must be signed by it (and clients, by a member)')
    .option('--listen <host:port>', 'serve this node\'s store over HTTP here, for nodes that share no directory (port 0: any free port); HTTPS with --tls-cert/--tls-key, and with --tls-ca only for clients it signed', addressOption('--listen', true))
    .option('--metrics <host:port>', 'serve Prometheus metrics at /metrics and the job\'s live page at / here (read-only, no auth; port 0: any free port)', addressOption('--metrics', true))
    .option('--advertise <host:port>', 'the address other machines reach --listen at, carried by the refs this node writes (default the listening address)', addressOption('--advertise', false))
    .option('--store-dir <dir>', 'this node\'s store directory (default the job\'s storeDir)')
    .option('--comm-host <host>', 'the address this machine\'s ranks run their collectives (Gloo) on, reachable from the other machines (default the --advertise host, else 127.0.0.1)')
    .action(async (_o: unknown, cmd: Command) => {
      const o = cmd.optsWithGlobals<NodeCliOptions>();
      if (o.advertise && !o.listen) throw new InvalidArgumentError('--advertise needs --listen (the address it advertises)');
      if (o.listen && !o.advertise && WILDCARD.has(o.listen.host)) throw new InvalidArgumentError(`--listen ${o.listen.host} binds every interface: say which address other machines reach it at with --advertise HOST:PORT`);
      if (o.storeDir !== undefined && o.storeDir.trim() === '') throw new InvalidArgumentError('--store-dir must be a non-empty path');
      const spec = loadJobSpec(o.jobFile);
      const ranks = (o.ranks ?? '').split(',').filter(Boolean).map((r) => {
        if (!/^\d+$/.test(r)) throw new InvalidArgumentError(`--ranks: "${r}" is not a rank number`);
        return Number(r);
      });
      const roles = parseRoles(o.roles);
      const auth = AuthPolicy.fromEnv();
      const plan = planControlPlane(o, { runDir: spec.runDir, secret: auth.enabled });
      // Every Bus of this process and of the ranks it spawns reads these.
      if (plan.tls) {
        process.env[TLS_ENV.cert] = plan.tls.cert ?? '';
        process.env[TLS_ENV.key] = plan.tls.key ?? '';
        process.env[TLS_ENV.ca] = plan.tls.ca ?? '';
      }
      let member: NatsServerHandle | null = null;
      let node: NodeAgent | null = null;
      try {
        let servers = plan.servers;
        if (plan.member) {
          mkdirSync(spec.runDir, { recursive: true, mode: 0o750 });
          mkdirSync(plan.member.storeDir, { recursive: true, mode: 0o700 });
          member = await startNatsServer({
            host: plan.member.listen.host, port: plan.member.listen.port, storeDir: plan.member.storeDir,
            serverName: o.nodeId, credentials: auth.natsCredentials(), tls: plan.member.tls, autoRestart: true,
            logFile: join(spec.runDir, `nats-${o.nodeId}.log`),
            cluster: {
              name: `dw-${spec.job}`, host: plan.member.cluster.host, port: plan.member.cluster.port,
              routes: plan.member.routes, credentials: auth.natsRouteCredentials(),
            },
          });
          servers = [member.url, ...servers.filter((s) => s !== member!.url)];
          log.info('NATS cluster member started', { server: o.nodeId, cluster: `dw-${spec.job}`, url: member.url, routes: plan.member.routes.length, store: plan.member.storeDir, tls: !!plan.member.tls });
        }
        // JetStream up (a cluster: a majority of its members), then the replica count every process here uses.
        const probe = await Bus.connect({ servers, job: spec.job, auth, name: `node-${o.nodeId}-probe`, replicas: 1 });
        try {
          await probe.waitJetStream(180_000, (ms) => log.info('waiting for the NATS cluster to form (a majority of its members up)', { waited_ms: ms }));
          const size = Math.max(probe.clusterSize(), plan.routesSize);
          const replicas = o.natsReplicas ?? replicasFor(size);
          process.env[REPLICAS_ENV] = String(replicas);
          log.info('control plane ready', { servers: servers.join(','), clusterSize: size, replicas, tls: probe.tls });
        } finally { await probe.close(); }
        const reached = o.advertise ?? (o.listen && !WILDCARD.has(o.listen.host) ? o.listen : undefined);
        const commHost = o.commHost ?? reached?.host.replace(/^\[(.*)\]$/, '$1');
        node = await NodeAgent.start({ spec, nats: servers.join(','), nodeId: o.nodeId, roles, auth, listen: o.listen, advertise: o.advertise, storeDir: o.storeDir, commHost, tls: plan.tls, metrics: o.metrics });
        for (const r of ranks) node.spawnRank(r);
        log.info('node running', { job: spec.job, node: o.nodeId, roles: o.roles, ranks, ...(node.dataPlane ? { dataPlane: node.store.advertisedAt } : {}) });
        await new Promise<void>((resolve) => { process.once('SIGINT', resolve); process.once('SIGTERM', resolve); });
      } finally {
        if (node) await node.stop();
        if (member) await member.stop();
      }
    });
}

export interface ControlPlanePlan {
  /** The servers given (--nats), split. */
  servers: string[];
  tls: { cert: string | null; key: string | null; ca: string | null } | null;
  member: null | {
    listen: { host: string; port: number }; cluster: { host: string; port: number }; routes: string[];
    storeDir: string; tls: NatsTlsFiles | null;
  };
  /** The cluster's size by the routes given (1 without --nats-cluster). */
  routesSize: number;
}

/**
 * Checks the control-plane options and says what to start and connect to; every refusal is
 * an InvalidArgumentError naming the option, before anything starts or connects.
 */
export function planControlPlane(o: Omit<NodeCliOptions, 'jobFile' | 'roles' | 'nodeId'> & { nodeId: string }, ctx: { runDir: string; secret: boolean }): ControlPlanePlan {
  const servers = o.nats ? splitServers(o.nats) : [];
  if (!o.natsCluster) {
    const stray = (['natsListen', 'clusterListen', 'routes', 'natsStore'] as const).filter((k) => o[k] !== undefined);
    if (stray.length) throw new InvalidArgumentError(`${stray.map((k) => '--' + k.replace(/[A-Z]/g, (c) => '-' + c.toLowerCase())).join(', ')} need --nats-cluster (this node starts no NATS server otherwise)`);
    if (servers.length === 0) throw new InvalidArgumentError('give --nats URL[,URL...] (an existing NATS server or cluster) or --nats-cluster (start a member here)');
  }
  const tlsGiven = !!(o.tlsCert || o.tlsKey || o.tlsCa);
  if (!!o.tlsCert !== !!o.tlsKey) throw new InvalidArgumentError('--tls-cert and --tls-key go together: give both (draftwire certs makes a pair per machine)');
  const abs = (f: string | undefined) => (f ? resolve(f) : null);
  const tls = tlsGiven ? { cert: abs(o.tlsCert), key: abs(o.tlsKey), ca: abs(o.tlsCa) } : null;
  // The data plane carries the features: off this machine, with a secret, only over TLS.
  const served = [o.listen, o.advertise].filter((a): a is { host: string; port: number } => !!a).map((a) => a.host.replace(/^\[(.*)\]$/, '$1'));
  const offMachine = served.find((h) => !isLoopbackHost(h));
  if (ctx.secret && offMachine !== undefined && !tls?.cert) {
    throw new InvalidArgumentError(`--listen without TLS on ${offMachine}, which is not loopback: a secret is set, and the features this node serves would travel in clear (MAC'd, but readable on the path). ` +
      'Fix: give --tls-cert, --tls-key and --tls-ca (draftwire certs makes them; the data plane serves HTTPS with them), or listen on loopback only (127.0.0.1, ::1, localhost)');
  }
  if (!o.natsCluster) return { servers, tls, member: null, routesSize: 1 };

  if (o.tlsCa && !o.tlsCert) throw new InvalidArgumentError('--nats-cluster with --tls-ca needs --tls-cert and --tls-key as well: the member serves TLS with them');
  const listen = o.natsListen ?? { host: '0.0.0.0', port: 4222 };
  const cluster = o.clusterListen ?? { host: listen.host, port: 6222 };
  const routes = o.routes ?? [];
  if (cluster.port === listen.port && cluster.host === listen.host) throw new InvalidArgumentError(`--cluster-listen ${cluster.host}:${cluster.port} is the client address too; give the routes another port`);
  if (ctx.secret && !tls) {
    const offMachine = [listen.host, cluster.host, ...routes.map((r) => new URL(r.replace(/^nats-route:/i, 'http:')).hostname.replace(/^\[(.*)\]$/, '$1'))].filter((h) => !isLoopbackHost(h));
    if (offMachine.length) {
      throw new InvalidArgumentError(`--nats-cluster without TLS on ${offMachine[0]}, which is not loopback: a secret is set, and the NATS passwords (clients' and routes') would travel in clear. ` +
        'Fix: give --tls-cert, --tls-key and --tls-ca (draftwire certs makes them), or listen and route on loopback only (127.0.0.1, ::1, localhost)');
    }
  }
  const routesSize = clusterSizeFromRoutes(routes, cluster);
  return {
    servers, tls, routesSize,
    member: { listen, cluster, routes, storeDir: resolve(o.natsStore ?? join(ctx.runDir, `nats-${o.nodeId}`)), tls: tls?.cert && tls.key ? { cert: tls.cert, key: tls.key, ca: tls.ca } : null },
  };
}
