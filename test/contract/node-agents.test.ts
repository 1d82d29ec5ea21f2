// Two node agents (`draftwire node`, real processes) sharing one nats-server, as two machines
// would: one hosts the actors and rank 0, the other only spawns ranks. A scale-up places the
// new rank on the node with fewer ranks, the data-parallel world spans both nodes, the job
// trains to the end of its data, and SIGTERM stops each node with its ranks.
import assert from 'node:assert/strict';
import { mkdirSync, rmSync } from 'node:fs';
import { dirname } from 'node:path';
import type { EpochInfo } from '../../src/job/epoch.ts';
import { AuthPolicy } from '../../src/wire/auth.ts';
import { CoordinatorClient } from '../../src/bus/clients.ts';
import { Bus } from '../../src/bus/bus.ts';
import { writeInitialWeights } from '../../src/job/checkpoint.ts';
import { jobFile, jobRows, saveJobSpec } from '../../src/job/spec.ts';
import { descendants, isAlive, sleep } from '../support/chaos.ts';
import { testSpec } from '../support/jobs.ts';
import { withNats } from '../support/nats-server.ts';
import { killChild, spawnTs, type Child } from '../support/procs.ts';

async function waitOutput(c: Child, re: RegExp, ms = 30_000): Promise<void> {
  const end = Date.now() + ms;
  while (!re.test(c.output())) {
    if (c.proc.exitCode !== null || Date.now() > end) throw new Error(`no ${re} (exit ${c.proc.exitCode}); output:\n${c.output().slice(-3000)}`);
    await sleep(50);
  }
}

describe('draftwire node: two node agents, one data-parallel world across them', function () {
  this.timeout(120_000);
  const nats = withNats();

  it('a scale-up spawns the new rank on the other node; the job trains to the end; SIGTERM leaves nothing', async () => {
    const spec = testSpec('twonodes', { steps: 60, batch: 4, leaseMs: 10_000 });
    mkdirSync(spec.runDir, { recursive: true });
    await saveJobSpec(spec);
    await writeInitialWeights(spec);
    const bus = await Bus.connect({ servers: nats.url, job: spec.job, auth: AuthPolicy.disabled(), name: 'test' });
    const nodes: Child[] = [];
    try {
      const done = new Promise<{ rank: number; step: number }>((resolve) => {
        bus.subscribe<{ rank: number; step: number }>(bus.subjects.rankDone, (m) => resolve(m), { dedupe: false });
      });
      const a = spawnTs('bin/draftwire.js', ['node', '--job-file', jobFile(spec.runDir), '--nats', nats.url, '--roles', 'coordinator,queue,janitor,rollout', '--node-id', 'a', '--ranks', '0']);
      nodes.push(a);
      await waitOutput(a, /node running/);
      const b = spawnTs('bin/draftwire.js', ['node', '--job-file', jobFile(spec.runDir), '--nats', nats.url, '--node-id', 'b']);
      nodes.push(b);
      await waitOutput(b, /node running/);
      // The placement is by the load each node reports: wait until the coordinator has heard
      // node a host rank 0 and node b host nothing (heartbeats every second).
      const coord = new CoordinatorClient(bus);
      const end = Date.now() + 20_000;
      for (;;) {
        const seen = (await coord.status()).nodes.filter((n) => n.alive).map((n) => `${n.node}:${n.ranks.join(',')}`).sort();
        if (seen.join(' ') === 'a:0 b:') break;
        if (Date.now() > end) throw new Error(`the coordinator never saw node a with rank 0 and node b with none: ${seen.join(' ')}`);
        await sleep(100);
      }
      const r = await bus.request<{ to: EpochInfo; spawned: { rank: number; node: string }[] }>(bus.subjects.coord.scale, { dp: 2 }, { timeoutMs: 15_000 });
      assert.deepEqual(r.spawned, [{ rank: 1, node: 'b' }], 'the new rank goes to the node hosting none');
      assert.deepEqual(r.to.members, [0, 1]);
      const fin = await done;
      assert.equal(fin.rank, 0, 'world rank 0 (rank 0, on node a) wrote the final checkpoint');
      const q = await bus.request<{ consumed: number; dead: number; pending: number; leased: number }>(bus.subjects.queue.status, {}, { timeoutMs: 5000 });
      assert.deepEqual([q.consumed + q.dead, q.pending, q.leased], [jobRows(spec), 0, 0], 'every sample of the budget finished');
      // Both ranks exit 0 once the data is consumed (rank 1 may take a moment after rank 0's report).
      await waitOutput(b, /rank exited rank=1 pid=\d+ code=0/, 15_000); // rank 1 ran under node b
      await waitOutput(a, /rank exited rank=0 pid=\d+ code=0/, 15_000);
      assert.doesNotMatch(a.output() + b.output(), /rank died/);
      const seen = [...descendants(a.proc.pid!), ...descendants(b.proc.pid!)].map((p) => p.pid);
      for (const n of nodes.splice(0)) await killChild(n, 'SIGTERM');
      for (const pid of seen) assert.ok(!isAlive(pid), `process ${pid} outlived its node`);
    } finally {
      for (const n of nodes) await killChild(n);
      await bus.close();
      rmSync(dirname(spec.runDir), { recursive: true, force: true });
    }
  });
});
