// A node's operator endpoint (`--metrics HOST:PORT`, ops-server.ts), fed from what the node
// hears: world rank 0's step reports for the live page's series, the queue's depth every 2 s,
// and, when the page asks, who holds each role and the coordinator's view of hosts and ranks.
import { CoordinatorClient, QueueClient, listen } from '../src/bus/clients.ts';
import type { Bus } from '../src/bus/bus.ts';
import { readRoleLeases } from '../src/bus/role-lease.ts';
import { createLogger } from '../src/log.ts';
import type { NodeMetrics } from './node-metrics.ts';
import { OpsServer, type OpsState } from './ops-server.ts';

export async function startOps(o: { bus: Bus; node: string; metrics: NodeMetrics; at: { host: string; port: number } }): Promise<{ server: OpsServer; stop(): Promise<void> }> {
  const { bus, metrics } = o;
  const sub = listen(bus, 'metrics', (m) => metrics.step(m));
  const queue = new QueueClient(bus), coord = new CoordinatorClient(bus);
  const timer = setInterval(() => { void queue.status({ timeoutMs: 1500, retries: 0 }).then((q) => metrics.queueSample(q), () => {}); }, 2000);
  timer.unref();
  const state = async (): Promise<OpsState> => {
    const [roles, st] = await Promise.all([
      bus.kv(bus.subjects.kvBucket).then((kv) => readRoleLeases(kv)).catch(() => []),
      coord.status({ timeoutMs: 1500, retries: 0 }).catch(() => null),
    ]);
    return {
      job: bus.job, node: o.node, at: Date.now(), series: metrics.series,
      roles: roles.map((r) => ({ role: r.role, node: r.node, term: r.term, host: r.host })),
      nodes: (st?.nodes ?? []).map((n) => ({ node: n.node, alive: n.alive, ranks: n.ranks })),
      ranks: (st?.members ?? []).map((m) => ({ rank: m.rank, node: m.node, step: m.step, state: m.state, epoch: m.epoch, alive: m.alive })),
      epoch: st?.epoch ? { epoch: st.epoch.epoch, partitions: st.epoch.partitions } : null,
    };
  };
  const server = await OpsServer.start({ host: o.at.host, port: o.at.port, metrics, state });
  createLogger('node').info('metrics and live page', { metrics: `http://${server.address}/metrics`, page: `http://${server.address}/` });
  return { server, async stop() { clearInterval(timer); sub.unsubscribe(); await server.close(); } };
}
