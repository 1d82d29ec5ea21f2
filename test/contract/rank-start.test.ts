// A rank that takes longer to start than the dead-rank timeout is not declared dead: it beats
// from the moment it is connected. A real `draftwire node` (every role, rank 0) on a real
// nats-server, `rankDeadAfterMs` 3 s, and the rank process made to spend 6 s before it reads
// its checkpoint (the failpoint rank.before-resume=sleep6000: what a JetStream read waiting out
// a meta-leader election does after a host's death). Before the fix the coordinator declared
// it dead and its node killed it for a replacement, which started as slowly, until the
// restarts ran out. A rank that fails as it starts (the failpoint rank.before-resume=throw)
// is respawned after growing delays, and its node's log says why it died.
import assert from 'node:assert/strict';
import { mkdirSync, rmSync } from 'node:fs';
import { dirname } from 'node:path';
import { Bus } from '../../src/bus/bus.ts';
import { auditEvents } from '../../src/ledger/audit.ts';
import { readLedgerEvents } from '../../src/ledger/wal.ts';
import { writeInitialWeights } from '../../src/job/checkpoint.ts';
import { jobFile, jobRows, saveJobSpec } from '../../src/job/spec.ts';
import { AuthPolicy } from '../../src/wire/auth.ts';
import { ROLES } from '../../src/wire/protocol.ts';
import { sleep, until } from '../support/chaos.ts';
import { testSpec } from '../support/jobs.ts';
import { withNats } from '../support/nats-server.ts';
import { killChild, spawnTs } from '../support/procs.ts';

describe('a rank slow to start (longer than the dead-rank timeout), or failing as it starts', function () {
  this.timeout(120_000);
  const nats = withNats();

  it('beats while it starts: not declared dead, not replaced; the job finishes with a clean audit', async () => {
    const spec = { ...testSpec('slowstart', { steps: 6, batch: 4, dp: 1, leaseMs: 8000 }), rankDeadAfterMs: 3000 };
    mkdirSync(spec.runDir, { recursive: true });
    await saveJobSpec(spec);
    await writeInitialWeights(spec);
    const bus = await Bus.connect({ servers: nats.url, job: spec.job, auth: AuthPolicy.disabled(), name: 'test' });
    const done = new Promise<{ samples: number }>((resolve) => { bus.subscribe<{ samples: number }>(bus.subjects.rankDone, (m) => resolve(m), { dedupe: false }); });
    const node = spawnTs('bin/draftwire.js', ['node', '--job-file', jobFile(spec.runDir), '--nats', nats.url, '--roles', ROLES.join(','), '--node-id', 'a', '--ranks', '0'],
      { ...process.env, DRAFTWIRE_FAILPOINTS: 'rank.before-resume=sleep6000', DRAFTWIRE_LOG_LEVEL: 'info' });
    try {
      const r = await until('the job to finish', 90_000, () => Promise.race([done, sleep(500).then(() => null)]), { out: () => node.output() });
      const out = node.output();
      assert.doesNotMatch(out, /declared dead/, 'the slow rank was not declared dead');
      assert.equal((out.match(/rank spawned/g) ?? []).length, 1, 'the rank was spawned once, never replaced');
      const audit = auditEvents(await readLedgerEvents(bus));
      assert.deepEqual(audit.problems, []);
      assert.equal(audit.consumed, jobRows(spec), 'every sample consumed');
      assert.equal(r.samples, audit.consumed, 'the model trained exactly the consumed samples');
    } finally {
      await killChild(node);
      await bus.close();
      rmSync(dirname(spec.runDir), { recursive: true, force: true });
    }
  });

  it('a rank that fails as it starts: its node logs why, and respawns it after 1 s, then 4 s, until its restarts are spent', async () => {
    const spec = { ...testSpec('failstart', { steps: 6, batch: 4, dp: 1 }), maxRankRestarts: 2 };
    mkdirSync(spec.runDir, { recursive: true });
    await saveJobSpec(spec);
    await writeInitialWeights(spec);
    const node = spawnTs('bin/draftwire.js', ['node', '--job-file', jobFile(spec.runDir), '--nats', nats.url, '--roles', ROLES.join(','), '--node-id', 'a', '--ranks', '0'],
      { ...process.env, DRAFTWIRE_FAILPOINTS: 'rank.before-resume=throw', DRAFTWIRE_LOG_LEVEL: 'info' });
    try {
      await until('the rank lost for good', 60_000, () => /rank lost for good/.test(node.output()), { out: () => node.output() });
      const out = node.output();
      const exits = out.split('\n').filter((l) => /rank exited rank=0 /.test(l));
      assert.equal(exits.length, 3, 'the first start and two respawns');
      for (const l of exits) assert.match(l, /code=1 .*lastError=".*rank failed error=\\"failpoint rank.before-resume fired\\"/, 'the node says why the rank died');
      assert.deepEqual([...out.matchAll(/rank died; respawning it .* inMs=(\d+)/g)].map((m) => Number(m[1])), [1000, 4000]);
      const spawned = [...out.matchAll(/^(\S+) INFO +\[node\] rank spawned rank=0 /gm)].map((m) => Date.parse(m[1]!));
      assert.equal(spawned.length, 3);
      assert.ok(spawned[1]! - spawned[0]! >= 1000 && spawned[2]! - spawned[1]! >= 4000, `respawned after the delays: ${spawned.map((t) => t - spawned[0]!)} ms`);
    } finally {
      await killChild(node);
      rmSync(dirname(spec.runDir), { recursive: true, force: true });
    }
  });
});
