// `draftwire status --job J [--json]`: actors, partitions, leases and rates of a running job,
// asked of its queue, coordinator and janitor over NATS.
import { Command } from 'commander';
import { AuthPolicy } from '../../src/wire/auth.ts';
import { Bus } from '../../src/bus/bus.ts';
import { CoordinatorClient, JanitorClient, QueueClient } from '../../src/bus/clients.ts';
import { InvalidArgumentError } from '../../src/errors.ts';
import { readRoleLeases } from '../../src/bus/role-lease.ts';
import type { GlobalOptions } from '../options.ts';
import { dirOption, jobId, natsUrl } from '../options.ts';
import { liveNatsUrl } from './audit.ts';

export async function jobStatus(bus: Bus): Promise<Record<string, unknown>> {
  const o = { timeoutMs: 2000, retries: 1 };
  const ask = (p: Promise<unknown>) => p.catch((e: unknown) => ({ error: (e as Error).message }));
  const roles = bus.kv(bus.subjects.kvBucket).then((kv) => readRoleLeases(kv));
  const [queue, coordinator, janitor, held] = await Promise.all([ask(new QueueClient(bus).status(o)), ask(new CoordinatorClient(bus).status(o)), ask(new JanitorClient(bus).status(o)), ask(roles)]);
  return { job: bus.job, at: Date.now(), roles: held, queue, coordinator, janitor };
}

export function command(): Command {
  return new Command('status')
    .summary('show the actors, partitions, leases and rates of a running job')
    .requiredOption('--job <id>', 'job id', jobId)
    .option('--workdir <dir>', 'where run directories are', dirOption('--workdir'), 'runs')
    .option('--nats <url>', 'NATS server of the job (default: from the run directory)', natsUrl)
    .action(async (_o: unknown, cmd: Command) => {
      const o = cmd.optsWithGlobals<GlobalOptions & { job: string; workdir: string; nats?: string }>();
      const url = o.nats ?? liveNatsUrl(o.workdir, o.job);
      if (!url) throw new InvalidArgumentError(`job ${o.job} is not running here (no run.json under ${o.workdir}/${o.job}); pass --nats URL`);
      const bus = await Bus.connect({ servers: url, job: o.job, auth: AuthPolicy.fromEnv(), name: 'status', reconnect: false });
      try {
        const s = await jobStatus(bus);
        if (o.json) { process.stdout.write(JSON.stringify(s) + '\n'); return; }
        process.stdout.write(renderStatus(s));
      } finally { await bus.close(); }
    });
}

function renderStatus(s: Record<string, any>): string {
  const q = s.queue ?? {}, c = s.coordinator ?? {}, j = s.janitor ?? {};
  const lines = [`job ${s.job}`];
  if (Array.isArray(s.roles)) {
    lines.push('roles: ' + s.roles.map((r: any) => `${r.role} ${r.node ? `on ${r.node} (term ${r.term}, renewed ${(r.ageMs / 1000).toFixed(1)} s ago)` : r.term ? `released (term ${r.term})` : 'never held'}`).join('; '));
  } else if (s.roles?.error) lines.push(`roles: unreadable (${s.roles.error})`);
  if (q.error) lines.push(`queue: unreachable (${q.error})`);
  else {
    lines.push(`queue: epoch ${q.epoch} num ${q.num}  samples ${q.samples}  pending ${q.pending}  leased ${q.leased}  consumed ${q.consumed}  dead ${q.dead}  (granted ${q.leasesGranted}, acks ${q.acks}, expired ${q.expired})`);
    if (q.input) {
      const i = q.input;
      lines.push(`  input (external producers): ${i.closed ? `closed (${i.closed.reason === 'samples' ? '--samples reached' : 'producers ended'}) at ${i.closed.samples} samples` : 'open'}; producers open [${i.open.join(', ')}], ended [${i.ended.join(', ')}]; budget ${q.budget ?? 'open'}`);
    }
    lines.push(`  rates: ${Number(q.commitsPerSec ?? 0).toFixed(1)} commits/s, ${Number(q.acksPerSec ?? 0).toFixed(1)} acks/s (last 10 s); queue restarts: ${q.incarnation ?? 0}`);
    for (const cr of q.credits ?? []) lines.push(`  credit ${cr.consumer}: partition ${cr.partition[0]}/${cr.partition[1]} epoch ${cr.epoch} wants ${cr.remaining}`);
    for (const l of (q.leases ?? []).slice(0, 20)) lines.push(`  lease ${l.leaseId} ${l.sampleId} -> ${l.consumer} (epoch ${l.epoch}, delivery ${l.delivery}, ${Math.round((l.deadline - s.at) / 1000)} s left)`);
  }
  if (c.error) lines.push(`coordinator: unreachable (${c.error})`);
  else {
    lines.push(`coordinator: epoch ${c.epoch?.epoch}, data-parallel width ${c.epoch?.partitions}, members (world rank order) [${(c.epoch?.members ?? []).join(', ')}]`);
    for (const m of c.members ?? []) {
      const where = m.member ? `world rank ${(c.epoch?.members ?? []).indexOf(m.rank)} of ${c.epoch?.partitions}` : 'not a member';
      lines.push(`  rank ${m.rank} pid ${m.pid}${m.node ? ` on ${m.node}` : ''}: ${m.dead ? 'DEAD (no heartbeat)' : m.alive ? m.state : 'SILENT'} at step ${m.step}, epoch ${m.epoch ?? '-'}, ${where}, holds ${m.held} leases (last heard ${(m.silentMs / 1000).toFixed(1)} s ago)`);
    }
    for (const n of c.nodes ?? []) lines.push(`  node ${n.node} pid ${n.pid}: ${n.alive ? 'alive' : 'SILENT'}, rank processes [${n.ranks.join(', ')}]`);
    for (const d of c.deaths ?? []) lines.push(`  declared dead: rank ${d.rank} pid ${d.pid} after ${(d.silentMs / 1000).toFixed(1)} s of silence`);
  }
  if (j.error) lines.push(`janitor: unreachable (${j.error})`);
  else lines.push(`janitor: freed ${j.freed}, aborted ${j.aborted}, sweeps ${j.sweeps}; store ${((j.usage?.bytes ?? 0) / 1048576).toFixed(1)} MB in ${j.usage?.samples ?? 0} samples`);
  return lines.join('\n') + '\n';
}
