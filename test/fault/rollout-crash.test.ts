// A rollout killed (SIGKILL) between writing a sample and committing its ref: after the node
// restarts, that row is committed exactly once and no orphan file or temp file is left.
import assert from 'node:assert/strict';
import { mkdirSync, readdirSync } from 'node:fs';
import { readLedgerEvents } from '../../src/ledger/wal.ts';
import { AuthPolicy } from '../../src/wire/auth.ts';
import { Bus } from '../../src/bus/bus.ts';
import { saveJobSpec } from '../../src/job/spec.ts';
import { auditEvents } from '../../src/ledger/ledger.ts';
import { withNats } from '../support/nats-server.ts';
import { killChild, spawnTs, type Child } from '../support/procs.ts';
import { testSpec } from '../support/jobs.ts';

describe('rollout crash between put and commit (real node process, SIGKILL)', function () {
  this.timeout(120_000);
  const nats = withNats();
  let child: Child | null = null;
  after(async () => { if (child) await killChild(child); });

  it('commits the row exactly once and leaves no orphan sample file', async () => {
    const spec = testSpec('rcrash', { steps: 3, batch: 2 }); // 6 rows
    mkdirSync(spec.runDir, { recursive: true });
    const jobFile = await saveJobSpec(spec);
    const node = (env: NodeJS.ProcessEnv) => spawnTs('cluster/cli.ts', ['node', '--job-file', jobFile, '--nats', nats.url, '--roles', 'coordinator,queue,janitor,rollout', '--node-id', 'n1'], env);

    child = node({ ...process.env, DRAFTWIRE_FAILPOINTS: 'rollout.after-put=kill@3' });
    const code = await child.exited;
    assert.equal(code, 128, `the node should die by SIGKILL at the failpoint; output:\n${child.output()}`);
    assert.match(child.output(), /failpoint rollout.after-put: kill/);
    const files = readdirSync(spec.storeDir).filter((f) => f.endsWith('.safetensors'));
    assert.ok(files.some((f) => f.startsWith('row-00000002.')), `row 2 was written before the crash: ${files}`);

    child = node(process.env);
    const bus = await Bus.connect({ servers: nats.url, job: spec.job, auth: AuthPolicy.disabled(), name: 'test' });
    try {
      const end = Date.now() + 60_000;
      let report = auditEvents(await readLedgerEvents(bus));
      while (report.committed < 6 && Date.now() < end) {
        await new Promise((r) => setTimeout(r, 200));
        report = auditEvents(await readLedgerEvents(bus));
      }
      assert.ok(report.ok, report.problems.join('\n'));
      assert.equal(report.committed, 6, 'six rows committed');
      const puts = (await readLedgerEvents(bus)).filter((e) => e.type === 'put');
      assert.equal(puts.length, 6, 'one put per row: nothing committed twice');
      assert.equal(puts.filter((e) => e.type === 'put' && e.ref.sampleId === 'row-00000002').length, 1);
      const left = readdirSync(spec.storeDir);
      const samples = left.filter((f) => f.endsWith('.safetensors')).sort();
      assert.deepEqual(samples.map((f) => f.split('.')[0]), ['row-00000000', 'row-00000001', 'row-00000002', 'row-00000003', 'row-00000004', 'row-00000005'], `one file per row: ${samples}`);
      assert.deepEqual(left.filter((f) => f.startsWith('.tmp')), [], 'no temp file left');
    } finally {
      await bus.close();
      await killChild(child, 'SIGTERM');
    }
  });
});
