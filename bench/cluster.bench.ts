// A job across three hosts that share nothing but the network against the same job on one
// host, in the same run. The three hosts are network namespaces of this machine
// (test/support/netns.ts, root needed): each with its own NATS cluster member (TLS, a secret,
// 3 replicas), its own store served over HTTP, checkpoints in the replicated JetStream, and
// one rank; the ranks' collectives cross the bridge. The one-host job is `draftwire run --dp 3`
// (one nats-server, a shared store directory, checkpoints in the run directory). Both share
// this machine's cores, so the ratio is what the multi-host runtime costs (TLS, replication,
// HTTP features, cross-namespace Gloo), not how a job scales with machines.
// samples/s: steady state, from world rank 0's step reports between its 10th and last step.
//   node --import tsx bench/cluster.bench.ts [--steps 60] [--size small] [--checkpoint-every 1] [--json]
import { readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { Bus } from '../src/bus/bus.ts';
import { AuthPolicy } from '../src/wire/auth.ts';
import type { StepMetrics } from '../src/wire/protocol.ts';
import { ChaosJob, newWorkdir, sleep } from '../test/support/chaos.ts';
import { HostsJob } from '../test/support/hosts-job.ts';
import { Netns } from '../test/support/netns.ts';
import { Reporter } from './support/report.ts';

const { values } = parseArgs({ options: { steps: { type: 'string', default: '60' }, size: { type: 'string', default: 'small' }, 'checkpoint-every': { type: 'string', default: '1' }, json: { type: 'boolean', default: false } } });
const every = Number(values['checkpoint-every']);
const steps = Number(values.steps);
const size = values.size as 'tiny' | 'small';
const batch = 4;
const report = Reporter.forBench(import.meta.url);

/** Samples per second between the 10th and the last step report. */
function steady(ms: { at: number; m: StepMetrics }[]): number {
  const s = ms.filter((x) => x.m.step >= 10).sort((a, b) => a.m.step - b.m.step);
  if (s.length < 2) throw new Error(`cluster bench: too few step reports (${s.length})`);
  const first = s[0]!, last = s.at(-1)!;
  const samples = s.slice(1).reduce((n, x) => n + x.m.samples, 0);
  return samples / ((last.at - first.at) / 1000);
}

// The same job on one host: draftwire run --dp 3, its step reports read from its own NATS.
const workdir = newWorkdir();
let one: number;
try {
  const job = new ChaosJob({ workdir, job: 'onehost', steps, batch, leaseMs: 6000, env: { ...process.env, DRAFTWIRE_LOG_LEVEL: 'warn' }, extra: ['--size', size, '--dp', '3', '--checkpoint-every', String(every)] });
  let url = '';
  for (let i = 0; !url; i++) {
    try { url = (JSON.parse(readFileSync(join(job.runDir, 'run.json'), 'utf8')) as { nats: string }).nats; } catch { if (i > 600) throw new Error('no run.json'); await sleep(100); }
  }
  const bus = await Bus.connect({ servers: url, job: 'onehost', auth: AuthPolicy.fromEnv(), name: 'bench' });
  const ms: { at: number; m: StepMetrics }[] = [];
  bus.subscribe<StepMetrics>(bus.subjects.metrics, (m) => { ms.push({ at: performance.now(), m }); }, { dedupe: false });
  const r = await job.finish(600_000);
  await bus.close();
  if (r.code !== 0) throw new Error(`one-host job failed: ${job.stderr.slice(-2000)}`);
  one = steady(ms);
} finally { rmSync(workdir, { recursive: true, force: true }); }

const hosts = new HostsJob(Netns.create(3), 'threehosts', steps, { size, batch, checkpointEvery: every });
let three: number;
try {
  await hosts.start();
  await hosts.finish();
  three = steady(hosts.metrics);
} finally { await hosts.stop(); }

const base = report.add({ name: 'samples/s, the job on one host (run --dp 3)', value: one, unit: 'samples/s' });
report.add({ name: 'samples/s, the job across 3 hosts (namespaces, TLS, R3, HTTP features)', value: three, unit: 'samples/s', baseline: base });
report.context({ size, batch, dp: 3, steps, checkpointEvery: every });
report.log(`cluster bench: ${size} draft, batch ${batch} per rank, DP 3, ${steps} steps, a checkpoint every ${every}; both jobs on this machine's cores`);
report.log(`the job on one host (draftwire run --dp 3)     ${one.toFixed(1)} samples/s`);
report.log(`the same job across 3 hosts (network namespaces) ${three.toFixed(1)} samples/s (${((three / one) * 100).toFixed(0)}% of one host)`);
report.end();
