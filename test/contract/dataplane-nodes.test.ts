// `draftwire node --listen`: two node agents (real processes) whose store directories are
// separate (no shared store path), as two machines without a shared filesystem would have. Node
// a hosts the rollout, queue and coordinator and serves its store over HTTP; node b hosts the
// janitor and rank 0, whose rank process reads every sample over the data plane from node a.
// The job trains to the end; node a frees its own samples on the queue's announcements (the
// janitor runs elsewhere), so its store ends empty; nothing ever lands in node b's store.
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, readdirSync, rmSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { AuthPolicy } from '../../src/wire/auth.ts';
import { Bus } from '../../src/bus/bus.ts';
import { listen } from '../../src/bus/clients.ts';
import { writeInitialWeights } from '../../src/job/checkpoint.ts';
import { jobFile, jobRows, saveJobSpec } from '../../src/job/spec.ts';
import { sleep } from '../support/chaos.ts';
import { testSpec } from '../support/jobs.ts';
import { withNats } from '../support/nats-server.ts';
import { killChild, runCli, spawnTs, type Child } from '../support/procs.ts';

const SECRET = 'dataplane-nodes-secret-0123456789ab';

async function waitOutput(c: Child, re: RegExp, ms = 30_000): Promise<RegExpExecArray> {
  const end = Date.now() + ms;
  for (;;) {
    const m = re.exec(c.output());
    if (m) return m;
    if (c.proc.exitCode !== null || Date.now() > end) throw new Error(`no ${re} (exit ${c.proc.exitCode}); output:\n${c.output().slice(-3000)}`);
    await sleep(50);
  }
}

const samples = (dir: string) => (existsSync(dir) ? readdirSync(dir).filter((f) => f.endsWith('.safetensors')) : []);

describe('draftwire node --listen: a job whose nodes share no store directory', function () {
  this.timeout(180_000);
  const nats = withNats({ auth: AuthPolicy.fromSecret(SECRET).natsCredentials()! });

  it('rank 0 on node b trains on samples node a serves over HTTP; node a frees its own; node b stores nothing', async () => {
    const spec = testSpec('dpnodes', { steps: 12, batch: 4, leaseMs: 20_000 });
    mkdirSync(spec.runDir, { recursive: true });
    await saveJobSpec(spec);
    await writeInitialWeights(spec);
    const root = dirname(spec.runDir);
    const storeA = join(root, 'machine-a-store'), storeB = join(root, 'machine-b-store');
    const env = { ...process.env, DRAFTWIRE_SECRET: SECRET, DRAFTWIRE_SECRET_FILE: '' };
    const auth = AuthPolicy.fromSecret(SECRET);
    const bus = await Bus.connect({ servers: nats.url, job: spec.job, auth, name: 'test' });
    const nodes: Child[] = [];
    try {
      const done = new Promise<{ rank: number; step: number }>((resolve) => {
        bus.subscribe<{ rank: number; step: number }>(bus.subjects.rankDone, (m) => resolve(m), { dedupe: false });
      });
      const a = spawnTs('bin/draftwire.js', ['node', '--job-file', jobFile(spec.runDir), '--nats', nats.url, '--roles', 'coordinator,queue,rollout', '--node-id', 'a',
        '--store-dir', storeA, '--listen', '127.0.0.1:0'], env);
      nodes.push(a);
      const m = await waitOutput(a, /data plane listening listen=127\.0\.0\.1:(\d+) advertise=127\.0\.0\.1:(\d+)/);
      assert.equal(m[1], m[2], 'advertises its listening address by default');
      await waitOutput(a, /node running/);
      // The refs the queue announces consumed are node a's http:// ones.
      const freed: string[] = [];
      const sub = listen(bus, 'store.free', (f) => { freed.push(f.ref.uri); });
      const b = spawnTs('bin/draftwire.js', ['node', '--job-file', jobFile(spec.runDir), '--nats', nats.url, '--roles', 'janitor', '--node-id', 'b', '--store-dir', storeB, '--ranks', '0'], env);
      nodes.push(b);
      const fin = await done;
      assert.equal(fin.rank, 0);
      const q = await bus.request<{ consumed: number; dead: number; pending: number; leased: number }>(bus.subjects.queue.status, {}, { timeoutMs: 5000 });
      assert.deepEqual([q.consumed, q.dead, q.pending, q.leased], [jobRows(spec), 0, 0, 0], 'every sample trained once');
      await waitOutput(b, /rank exited rank=0 pid=\d+ code=0/, 20_000);
      // Node a frees what it wrote as the queue announces it consumed (the janitor is on b).
      const end = Date.now() + 15_000;
      while (samples(storeA).length > 0 && Date.now() < end) await sleep(100);
      assert.deepEqual(samples(storeA), [], 'node a freed its own samples');
      sub.unsubscribe();
      assert.equal(new Set(freed).size, jobRows(spec));
      for (const u of freed) assert.match(u, new RegExp(`^http://127\\.0\\.0\\.1:${m[1]}/${spec.storeId}/[^/]+\\?g=\\d+$`));
      assert.deepEqual(samples(storeB), [], 'node b never held a sample: its rank read them over HTTP');
      assert.deepEqual(samples(spec.storeDir), [], 'the job\'s shared store path was not used');
      assert.doesNotMatch(a.output() + b.output(), /rank died|data plane request failed|freeing a consumed sample failed/);
      for (const n of nodes.splice(0)) await killChild(n, 'SIGTERM');
    } finally {
      for (const n of nodes) await killChild(n);
      await bus.close();
      rmSync(root, { recursive: true, force: true });
    }
  });

  it('refuses a wildcard --listen without --advertise, --advertise alone and a malformed address (exit 2)', async () => {
    const spec = testSpec('dpnodes-cli');
    try {
      const f = jobFile(spec.runDir);
      for (const [args, re] of [
        [['--listen', '0.0.0.0:7000'], /--listen 0\.0\.0\.0 binds every interface: say which address .* --advertise/],
        [['--advertise', '10.0.0.1:7000'], /--advertise needs --listen/],
        [['--listen', 'host'], /--listen must be HOST:PORT/],
        [['--listen', '127.0.0.1:70000'], /--listen must be HOST:PORT/],
        [['--listen', '127.0.0.1:0', '--advertise', 'a.example:0'], /--advertise must be HOST:PORT/],
      ] as [string[], RegExp][]) {
        const r = await runCli(['node', '--job-file', f, '--nats', 'nats://127.0.0.1:1', ...args], { timeoutMs: 30_000 });
        assert.equal(r.code, 2, `${args.join(' ')}: ${r.stderr}`);
        assert.match(r.stderr, re);
      }
    } finally {
      rmSync(dirname(spec.runDir), { recursive: true, force: true });
    }
  });
});
