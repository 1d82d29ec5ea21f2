// `draftwire run --rollout external`: a job without its own rollout trains what producers of
// their own commit. Real `draftwire run` processes (embedded nats-server with the secret's
// credentials, rank processes); the producers are this test, using the library as an embedder
// would (Bus, the shared-directory store, QueueClient). The input closes when the producers
// declare their end (--producers) or when --samples were committed; after that a new sample
// and a late producer are refused with INPUT_CLOSED, and the job trains exactly what was
// committed, scaling its data-parallel width on the way.
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import { AuthPolicy } from '../../src/wire/auth.ts';
import { Bus } from '../../src/bus/bus.ts';
import { QueueClient } from '../../src/bus/clients.ts';
import { SharedDirFeatureStore } from '../../src/store/shared-dir.ts';
import { BackpressureError, InputClosedError, InvalidArgumentError } from '../../src/errors.ts';
import { loadJobSpec, jobFile, type JobSpec } from '../../src/job/spec.ts';
import { f32ToBf16, tensor, type Tensor } from '../../src/tensor.ts';
import { runCli } from '../support/procs.ts';
import type { RunSummary } from '../../cluster/commands/run.ts';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const BIN = join(ROOT, 'bin', 'draftwire.js');

interface Job { proc: ChildProcess; runDir: string; out: () => string; err: () => string; exited: Promise<number | null> }

function startRun(workdir: string, job: string, args: string[], env: NodeJS.ProcessEnv): Job {
  const proc = spawn(process.execPath, [BIN, 'run', '--rollout', 'external', '--size', 'tiny', '--batch', '2', '--eval-every', '0', '--eval-prompts', '2',
    '--workdir', workdir, '--job', job, '--no-progress', '--json', ...args], { cwd: ROOT, env, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '', err = '';
  proc.stdout!.on('data', (d: Buffer) => { out += d; });
  proc.stderr!.on('data', (d: Buffer) => { err += d; });
  const exited = new Promise<number | null>((r) => proc.on('exit', (c, sig) => r(c ?? (sig ? 128 : null))));
  return { proc, runDir: join(workdir, job), out: () => out, err: () => err, exited };
}

async function natsUrlOf(job: Job): Promise<string> {
  const f = join(job.runDir, 'run.json');
  for (let i = 0; i < 600; i++) {
    if (existsSync(f)) { try { return (JSON.parse(readFileSync(f, 'utf8')) as { nats: string }).nats; } catch { /* being written */ } }
    if (job.proc.exitCode !== null) break;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`the job never wrote run.json:\n${job.err().slice(-3000)}`);
}

/** A producer as an embedder writes one: the store for the files, the queue for the refs. */
class TestProducer {
  private constructor(readonly id: string, readonly bus: Bus, readonly store: SharedDirFeatureStore, readonly spec: JobSpec, readonly incarnation: number) {}
  static async start(id: string, job: Job, url: string, auth: AuthPolicy): Promise<TestProducer> {
    const spec = loadJobSpec(jobFile(job.runDir));
    const bus = await Bus.connect({ servers: url, job: spec.job, auth, name: id });
    const store = await SharedDirFeatureStore.attach({ dir: spec.storeDir, storeId: spec.storeId, job: spec.job, auth, producer: { node: 'test', actor: id, incarnation: 1 } });
    return new TestProducer(id, bus, store, spec, Date.now());
  }
  q(): QueueClient { return new QueueClient(this.bus); }
  open() { return this.q().input({ producer: this.id, state: 'open', incarnation: this.incarnation }); }
  end() { return this.q().input({ producer: this.id, state: 'end', incarnation: this.incarnation }); }
  /** Writes sample `n` of this producer and commits it; a refused commit's file is removed. */
  async produce(n: number): Promise<string> {
    const id = `${this.id}-${String(n).padStart(4, '0')}`;
    const ref = await this.store.put(id, sampleTensors(this.spec, n));
    try {
      await this.q().commit(ref);
    } catch (e) {
      await this.store.abort(id, 'commit refused').catch(() => false);
      throw e;
    }
    return id;
  }
  async close(): Promise<void> { await this.bus.close(); }
}

/** A schema-correct sample: T varies per sample (2 ≤ T ≤ seqLen), features in bf16 as engines write them. */
function sampleTensors(spec: JobSpec, n: number): Record<string, Tensor> {
  const T = 2 + (n * 7) % (spec.seqLen - 1), H = spec.draft.hidden;
  let x = (n + 1) * 2654435761 >>> 0;
  const rnd = () => { x ^= x << 13; x >>>= 0; x ^= x >>> 17; x ^= x << 5; x >>>= 0; return x / 2 ** 32; };
  const ids = new Int32Array(T).map(() => Math.floor(rnd() * spec.draft.vocab));
  const floats = (len: number) => f32ToBf16(new Float32Array(len).map(() => rnd() * 2 - 1));
  const mask = new Uint8Array(T).map((_, i) => (i === T - 1 ? 0 : 1));
  return { ids: tensor('i32', [T], ids), aux: tensor('bf16', [T, 3 * H], floats(T * 3 * H)), last: tensor('bf16', [T, H], floats(T * H)), mask: tensor('u8', [T], mask) };
}

function summaryOf(job: Job): RunSummary {
  const line = job.out().trim().split('\n').at(-1) ?? '';
  try { return JSON.parse(line) as RunSummary; } catch { throw new Error(`no JSON summary on stdout:\n${job.out()}\n${job.err().slice(-3000)}`); }
}

describe('run --rollout external: the job trains what producers of its own commit', function () {
  this.timeout(180_000);
  const workdir = mkdtempSync(join(tmpdir(), 'draftwire-external-'));
  const secret = randomBytes(24).toString('hex');
  const auth = AuthPolicy.fromSecret(secret);
  const env = { ...process.env, DRAFTWIRE_SECRET: secret, DRAFTWIRE_LOG_LEVEL: 'info' };
  const jobs: Job[] = [];
  after(() => {
    for (const j of jobs) if (j.proc.exitCode === null) j.proc.kill('SIGKILL');
    rmSync(workdir, { recursive: true, force: true });
  });

  it('two producers end the input (--producers 2); a scale to dp 2 on the way; everything committed is trained once; late commits and opens are refused', async () => {
    const job = startRun(workdir, 'ext2', ['--producers', '2', '--batch-wait-ms', '300'], env);
    jobs.push(job);
    const url = await natsUrlOf(job);
    const [a, b] = await Promise.all([TestProducer.start('pa', job, url, auth), TestProducer.start('pb', job, url, auth)]);
    try {
      assert.deepEqual(await a.open(), { producer: 'pa', state: 'open', closed: false, committed: 0, budget: null, term: 1 }, 'the reply carries the term of the queue role');
      await b.open();
      const ids: string[] = [];
      for (let n = 0; n < 6; n++) ids.push(await a.produce(n), await b.produce(n));
      // The input stays open while one producer has not ended: the job waits for more.
      const endA = await a.end();
      assert.equal(endA.closed, false, 'one of two producers ended: the input is still open');
      const st = await a.q().status();
      assert.equal(st.budget, null);
      assert.deepEqual(st.input?.ended, ['pa']);
      assert.deepEqual(st.input?.open, ['pb']);
      const view = await runCli(['status', '--workdir', workdir, '--job', 'ext2'], { env });
      assert.match(view.stdout, /input \(external producers\): open; producers open \[pb\], ended \[pa\]; budget open/, view.stdout + view.stderr);
      // The job's width changes while it waits on the last producer.
      const scaled = await runCli(['scale', '--workdir', workdir, '--job', 'ext2', '--dp', '2', '--json'], { env });
      assert.equal(scaled.code, 0, scaled.stderr);
      for (let n = 6; n < 10; n++) ids.push(await b.produce(n));
      const endB = await b.end();
      assert.deepEqual(endB, { producer: 'pb', state: 'ended', closed: true, committed: ids.length, budget: ids.length, term: 1 });
      // Closed: a new sample and a producer opening late are refused, not retried.
      await assert.rejects(b.produce(99), (e: unknown) => e instanceof InputClosedError && e.retryable === false && /input is closed/.test(e.message));
      await assert.rejects(new QueueClient(a.bus).input({ producer: 'pc', state: 'open', incarnation: 1 }), InputClosedError);
      assert.equal(await job.exited, 0, job.err().slice(-4000));
      const s = summaryOf(job);
      assert.equal(s.samples, ids.length, 'every committed sample is trained into the final weights');
      assert.ok(s.audit.ok, s.audit.problems.join('\n'));
      assert.equal(s.audit.committed, ids.length);
      assert.equal(s.audit.consumed, ids.length);
      assert.deepEqual(s.input, { producers: ['pa', 'pb'], closed: 'producers' });
      assert.deepEqual(s.dpHistory.at(-1), 2, `the job trained at dp 2 after the scale: ${JSON.stringify(s.dpHistory)}`);
      assert.equal(s.storeAfter.samples, 0);
    } finally { await a.close(); await b.close(); }
  });

  it('--samples N closes the input at the N-th commit; the job trains those N', async () => {
    const job = startRun(workdir, 'extn', ['--samples', '5'], env);
    jobs.push(job);
    const url = await natsUrlOf(job);
    const p = await TestProducer.start('solo', job, url, auth);
    try {
      const done: string[] = [];
      let refused: unknown = null;
      for (let n = 0; n < 8 && !refused; n++) {
        try { done.push(await p.produce(n)); } catch (e) { refused = e; }
      }
      assert.equal(done.length, 5);
      assert.ok(refused instanceof InputClosedError, `the 6th commit is refused with INPUT_CLOSED, got ${String(refused)}`);
      assert.equal(await job.exited, 0, job.err().slice(-4000));
      const s = summaryOf(job);
      assert.equal(s.samples, 5);
      assert.ok(s.audit.ok && s.audit.consumed === 5, JSON.stringify(s.audit));
      assert.deepEqual(s.input, { producers: [], closed: 'samples' });
      assert.equal(s.storeAfter.tempFiles, 0);
    } finally { await p.close(); }
  });

  it('backpressure: commits past the store watermark are refused retryably (BACKPRESSURE) until the ranks drain them', async () => {
    const job = startRun(workdir, 'extbp', ['--samples', '12', '--store-high-mb', '0.02'], env);
    jobs.push(job);
    const url = await natsUrlOf(job);
    const p = await TestProducer.start('bp', job, url, auth);
    let pushedBack = 0;
    try {
      for (let n = 0; n < 12; n++) {
        const id = `bp-${String(n).padStart(4, '0')}`;
        const ref = await p.store.put(id, sampleTensors(p.spec, n));
        for (;;) {
          try { await p.q().commit(ref); break; } catch (e) {
            assert.ok(e instanceof BackpressureError && e.retryable, `only backpressure is expected here, got ${String(e)}`);
            pushedBack++;
            await new Promise((r) => setTimeout(r, 50));
          }
        }
      }
      assert.ok(pushedBack > 0, 'a 20 KB watermark pushes back on 12 samples of up to 8 KB');
      assert.equal(await job.exited, 0, job.err().slice(-3000));
      const s = summaryOf(job);
      assert.equal(s.samples, 12);
      assert.ok(s.audit.ok && s.audit.consumed === 12, JSON.stringify(s.audit));
    } finally { await p.close(); }
  });

  it('a malformed producer id is refused (INVALID_ARGUMENT); run refuses options of the other kind', async () => {
    const job = startRun(workdir, 'extbad', ['--samples', '2'], env);
    jobs.push(job);
    const url = await natsUrlOf(job);
    const p = await TestProducer.start('bad', job, url, auth);
    try {
      await assert.rejects(p.q().input({ producer: 'no spaces allowed', state: 'open', incarnation: 1 }), (e: unknown) => e instanceof InvalidArgumentError && /producer/.test(e.message));
      await p.produce(0); await p.produce(1);
      assert.equal(await job.exited, 0, job.err().slice(-3000));
    } finally { await p.close(); }
    const steps = await runCli(['run', '--rollout', 'external', '--steps', '3', '--workdir', workdir, '--job', 'x1'], { env });
    assert.equal(steps.code, 2);
    assert.match(steps.stderr, /--steps: with --rollout external the producers decide/);
    const samples = await runCli(['run', '--samples', '3', '--workdir', workdir, '--job', 'x2'], { env });
    assert.equal(samples.code, 2);
    assert.match(samples.stderr, /--samples needs --rollout external/);
  });
});
