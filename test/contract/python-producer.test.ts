// docs/wire.md is enough to write a producer: test/fixtures/wire/produce.py (Python, written
// from that document alone) commits a job's whole sample budget into a real job with no
// rollout (a real nats-server with the secret's credentials, `draftwire node` running the
// coordinator, queue, janitor and rank 0), and the rank trains exactly those samples. A ref
// with a flipped MAC byte is refused with AUTH, one whose shape is not the schema's with SCHEMA.
import assert from 'node:assert/strict';
import { execFile, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { AuthPolicy } from '../../src/wire/auth.ts';
import { Bus } from '../../src/bus/bus.ts';
import { jobRows, saveJobSpec } from '../../src/job/spec.ts';
import { writeInitialWeights } from '../../src/job/checkpoint.ts';
import { auditEvents } from '../../src/ledger/ledger.ts';
import { readLedgerEvents } from '../../src/ledger/wal.ts';
import { readSafetensorsFile } from '../../src/store/safetensors.ts';
import { withNats } from '../support/nats-server.ts';
import { killChild, spawnTs, type Child } from '../support/procs.ts';
import { testSpec } from '../support/jobs.ts';

const PRODUCER = 'test/fixtures/wire/produce.py';

interface Run { code: number | null; out: string }
function python(args: string[], env: NodeJS.ProcessEnv): Promise<Run> {
  return new Promise((resolve) => {
    execFile('python3', [PRODUCER, ...args], { env, timeout: 120_000 }, (err, stdout, stderr) => {
      const code = err ? (typeof err.code === 'number' ? err.code : null) : 0;
      resolve({ code, out: stdout + stderr });
    });
  });
}

describe('a Python producer written from docs/wire.md (real job, no rollout)', function () {
  this.timeout(240_000);
  const secret = randomBytes(24).toString('hex');
  const auth = AuthPolicy.fromSecret(secret);
  const nats = withNats({ auth: auth.natsCredentials()! });
  const env = { ...process.env, DRAFTWIRE_SECRET: secret };
  let node: Child | null = null;
  after(async () => { if (node) await killChild(node, 'SIGTERM'); });

  before(() => {
    // Never skipped: a machine without the producer's dependencies fails here, saying what to install.
    const r = spawnSync('python3', ['-c', 'import msgpack, nats'], { encoding: 'utf8' });
    assert.ok(!r.error, `python3 is required for this test (${r.error?.message}); run scripts/setup.sh`);
    assert.equal(r.status, 0, `python3 needs msgpack and nats-py (python3 -m pip install msgpack nats-py, or scripts/setup.sh):\n${r.stderr}`);
  });

  const spec = testSpec('pyprod', { steps: 3, batch: 2 });
  const shapes = () => ['--nats', nats.url, '--job', spec.job, '--store', spec.storeDir, '--T', String(spec.seqLen), '--H', String(spec.draft.hidden), '--vocab', String(spec.draft.vocab)];

  it('commits the budget, which the rank trains; a wrong shape is refused (SCHEMA)', async () => {
    const budget = jobRows(spec);
    mkdirSync(spec.runDir, { recursive: true });
    const jobFile = await saveJobSpec(spec);
    await writeInitialWeights(spec); // what `draftwire run` does before it starts the nodes
    node = spawnTs('cluster/cli.ts', ['node', '--job-file', jobFile, '--nats', nats.url, '--roles', 'coordinator,queue,janitor', '--ranks', '0', '--node-id', 'n1'], env);

    // Retries cover a queue not subscribed yet (UNAVAILABLE); a SCHEMA refusal is never retried.
    const badShape = await python([...shapes(), '-n', '1', '--tag', 'badshape', '--bad', 'shape', '--attempts', '10', '--timeout-ms', '20000'], env);
    assert.equal(badShape.code, 1, `a ref whose last is [T, H+1] must be refused (exit 1); output:\n${badShape.out}`);
    assert.match(badShape.out, /refused: SCHEMA: .*last/, badShape.out);

    const good = await python([...shapes(), '-n', String(budget)], env);
    assert.equal(good.code, 0, `the producer failed; output:\n${good.out}\nnode:\n${node.output().slice(-4000)}`);
    assert.equal(good.out.split('\n').filter((l) => /^committed py-s-/.test(l)).length, budget, good.out);

    const finalPath = join(spec.runDir, 'checkpoint.safetensors');
    const end = Date.now() + 120_000;
    while (!existsSync(finalPath) && Date.now() < end) await new Promise((r) => setTimeout(r, 250));
    assert.ok(existsSync(finalPath), `no final checkpoint at ${finalPath}; node:\n${node.output().slice(-4000)}`);
    const meta = (await readSafetensorsFile(finalPath, { names: [] })).metadata;
    assert.equal(Number(meta.samples), budget, `the trained model counts ${meta.samples} samples, the budget is ${budget}`);
    assert.equal(Number(meta.step), spec.steps);

    const bus = await Bus.connect({ servers: nats.url, job: spec.job, auth, name: 'test' });
    try {
      let report = auditEvents(await readLedgerEvents(bus));
      while (report.consumed < budget && Date.now() < end) {
        await new Promise((r) => setTimeout(r, 200));
        report = auditEvents(await readLedgerEvents(bus));
      }
      assert.ok(report.ok, report.problems.join('\n'));
      assert.deepEqual({ committed: report.committed, consumed: report.consumed, dead: report.dead }, { committed: budget, consumed: budget, dead: 0 });
      const puts = (await readLedgerEvents(bus)).filter((e) => e.type === 'put');
      assert.ok(puts.every((e) => e.type === 'put' && e.ref.sampleId.startsWith('py-s-')), 'only the good samples are in the ledger');
    } finally {
      await bus.close();
    }
    // The refused samples' files were removed by the producer; nothing half-written is left.
    const left = readdirSync(spec.storeDir);
    assert.deepEqual(left.filter((f) => f.startsWith('py-bad') || f.startsWith('.tmp')), [], `store: ${left}`);
  });

  // After the job (its queue still serves commits), so an accepted bad ref cannot disturb it.
  it('refuses at commit a ref whose MAC has one byte flipped (AUTH)', async () => {
    assert.ok(node, 'the job of the first test is running');
    const badMac = await python([...shapes(), '-n', '1', '--tag', 'badmac', '--bad', 'mac', '--attempts', '1', '--timeout-ms', '20000'], env);
    // Fails on the tree of 2026-12-02: the queue commits the ref (status "added") without
    // checking its MAC; only the store checks it, when a rank reads the sample.
    assert.equal(badMac.code, 1, `a ref with a flipped MAC byte must be refused at commit (exit 1), but the queue answered; output:\n${badMac.out}`);
    assert.match(badMac.out, /refused: AUTH/, badMac.out);
  });
});
