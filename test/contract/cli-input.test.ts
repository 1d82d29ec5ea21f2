// Bad input to every command is exit 2 with a message naming the option (or the file, line
// and field), checked before anything starts or connects: the real CLI in a child process;
// where a command would connect, --nats points at a TCP listener of this test, which must see
// no connection.
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readdirSync, rmSync, writeFileSync, mkdirSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { runCli as runCliIn, type CliRun } from '../support/procs.ts';
import { sampleRef } from '../support/store-fixtures.ts';
import { LIMITS } from '../../src/job/spec.ts';


const runCli = (args: string[]) => runCliIn(args, { timeoutMs: 30_000 });

function expectBad(r: CliRun, pattern: RegExp): void {
  assert.equal(r.code, 2, `exit code 2 expected, got ${r.code}:\n${r.stderr}`);
  assert.match(r.stderr, pattern);
  assert.doesNotMatch(r.stderr, /^\s+at /m, `no stack trace expected:\n${r.stderr}`);
}

describe('CLI input: bad input is exit 2, named, and refused before anything starts or connects', function () {
  this.timeout(120_000);
  const dir = mkdtempSync(join(tmpdir(), 'draftwire-cli-input-'));
  const workdir = join(dir, 'runs');
  const aFile = join(dir, 'a-file');
  writeFileSync(aFile, 'not a directory\n');
  // A TCP listener standing in for a NATS server: a command that connects shows up here.
  let listener: net.Server;
  let connections = 0;
  let nats = '';
  before(async () => {
    listener = net.createServer((s) => { connections++; s.destroy(); });
    await new Promise<void>((r) => listener.listen(0, '127.0.0.1', r));
    nats = `nats://127.0.0.1:${(listener.address() as net.AddressInfo).port}`;
  });
  after(async () => {
    await new Promise<void>((r) => listener.close(() => r()));
    rmSync(dir, { recursive: true, force: true });
  });
  /** Runs the CLI and asserts exit 2 with `pattern` and that the listener saw no connection. */
  async function refusedOffline(args: string[], pattern: RegExp): Promise<void> {
    const before = connections;
    const r = await runCli(args);
    expectBad(r, pattern);
    await new Promise((res) => setTimeout(res, 50));
    assert.equal(connections, before, `${args.join(' ')}: must not connect before refusing its input`);
  }
  const noRunStarted = () => assert.ok(!existsSync(workdir) || readdirSync(workdir).length === 0, `nothing may start: ${existsSync(workdir) ? readdirSync(workdir).join(', ') : ''}`);

  describe('run: upper bounds (checked before anything starts)', () => {
    // --nats at the listener: were a bound ever missing, the run would fail to connect instead
    // of forking that many rank processes (it spawns ranks only once connected).
    const run = async (...a: string[]) => {
      const before = connections;
      const r = await runCli(['run', '--size', 'tiny', '--steps', '1', '--workdir', workdir, '--job', 'bounds', '--nats', nats, ...a]);
      await new Promise((res) => setTimeout(res, 50));
      assert.equal(connections, before, `run ${a.join(' ')}: must not connect before refusing its input`);
      return r;
    };
    it('--dp 100000', async () => { expectBad(await run('--dp', '100000'), new RegExp(`--dp must be at most ${LIMITS.dp}, got 100000`)); noRunStarted(); });
    it('--threads', async () => { expectBad(await run('--threads', '100000'), new RegExp(`--threads must be at most ${LIMITS.threads}`)); noRunStarted(); });
    it('--seq-len', async () => { expectBad(await run('--seq-len', '100000'), new RegExp(`--seq-len must be at most ${LIMITS.seqLen}`)); noRunStarted(); });
    it('--batch', async () => { expectBad(await run('--batch', '100000'), new RegExp(`--batch must be at most ${LIMITS.batch}`)); noRunStarted(); });
    it('--eval-prompts', async () => { expectBad(await run('--eval-prompts', '100000'), new RegExp(`--eval-prompts must be at most ${LIMITS.evalPrompts}`)); noRunStarted(); });
    it('--tp and --sp, and the rank processes dp·tp·sp', async () => {
      expectBad(await run('--tp', '1000'), new RegExp(`--tp must be at most ${LIMITS.tp}`));
      expectBad(await run('--sp', '1000'), new RegExp(`--sp must be at most ${LIMITS.sp}`));
      expectBad(await run('--dp', '64', '--tp', '2', '--sp', '4'), new RegExp(`--dp 64 --tp 2 --sp 4: 512 rank processes; at most ${LIMITS.worldRanks}`));
      noRunStarted();
    });
    it('tokens per step (batch·seq-len)', async () => {
      expectBad(await run('--batch', '1024', '--seq-len', '4096'), new RegExp(`--batch 1024 --seq-len 4096: 4194304 tokens per step; at most ${LIMITS.stepTokens}`));
      noRunStarted();
    });
    it('timers: --lease-ms beyond a day', async () => {
      expectBad(await run('--lease-ms', String(2 ** 32)), new RegExp(`--lease-ms must be at most ${LIMITS.ms}`));
    });
  });

  describe('a job file cannot bypass the bounds', () => {
    const writeSpec = (name: string, patch: Record<string, unknown>) => {
      const runDir = join(dir, name);
      mkdirSync(runDir, { recursive: true });
      const spec = {
        job: name, runDir, storeDir: join(runDir, 'store'), storeId: `${name}-store`, initWeights: join(runDir, 'init.safetensors'),
        draft: {}, target: {}, seqLen: 32, promptLen: 8, batch: 2, steps: 1, lr: 0.001, clip: null, weightDecay: 0, dp: 1, tp: 1, sp: 1,
        seed: 0, temperature: 0, leaseMs: 30000, maxDeliveries: 5, storeHighBytes: 1 << 20, storeLowBytes: 1 << 19, dataset: null,
        evalEvery: 0, evalPrompts: 2, threads: 1, ...patch,
      };
      writeFileSync(join(runDir, 'job.json'), JSON.stringify(spec));
      return runDir;
    };
    it('node --job-file with dp 100000: exit 2 naming "dp", no connection', async () => {
      const runDir = writeSpec('bigdp', { dp: 100000 });
      await refusedOffline(['node', '--job-file', join(runDir, 'job.json'), '--nats', nats], new RegExp(`"dp" must be <= ${LIMITS.dp}, got 100000`));
    });
    it('run --resume of a job file with threads 100000 / batch·seqLen too large', async () => {
      const a = writeSpec('bigthreads', { threads: 100000 });
      expectBad(await runCli(['run', '--resume', a, '--nats', nats]), new RegExp(`"threads" must be <= ${LIMITS.threads}`));
      const b = writeSpec('bigtokens', { batch: 1024, seqLen: 4096 });
      expectBad(await runCli(['run', '--resume', b, '--nats', nats]), /batch·seqLen \(1024·4096 = 4194304 tokens per step\) must be <= 65536/);
      assert.ok(!existsSync(join(a, 'init.safetensors')) && !existsSync(join(b, 'init.safetensors')), 'nothing was started');
    });
  });

  describe('--nats: a malformed URL is exit 2 in every command', () => {
    for (const [cmd, extra] of [
      ['run', ['--size', 'tiny', '--steps', '1', '--workdir', workdir, '--job', 'badurl']],
      ['status', ['--job', 'x']],
      ['scale', ['--job', 'x', '--dp', '2']],
      ['audit', ['--job', 'x']],
      ['node', ['--job-file', join(dir, 'none.json')]],
    ] as const) {
      it(cmd, async () => {
        for (const url of ['http://[bad', 'notaurl::', 'http://127.0.0.1:4222', 'nats://127.0.0.1:4222/path']) {
          expectBad(await runCli([cmd, ...extra, '--nats', url]), /--nats: ".*" is not a NATS URL/);
        }
      });
    }
    it('accepts host:port, nats:// and a comma-separated list (then fails to connect: exit 1)', async () => {
      const r = await runCli(['status', '--job', 'x', '--nats', `127.0.0.1:1,nats://127.0.0.1:1`]);
      assert.equal(r.code, 1, r.stderr);
      assert.match(r.stderr, /UNAVAILABLE/);
    });
  });

  describe('--workdir naming a file is exit 2 before anything starts or connects', () => {
    it('run', async () => {
      expectBad(await runCli(['run', '--size', 'tiny', '--steps', '1', '--workdir', aFile]), /--workdir .*a-file is not a directory/);
      expectBad(await runCli(['run', '--size', 'tiny', '--steps', '1', '--workdir', join(aFile, 'sub')]), /--workdir .*a-file\/sub: cannot be used \(ENOTDIR\)/);
    });
    for (const cmd of ['status', 'scale', 'audit']) {
      it(cmd, async () => {
        await refusedOffline([cmd, '--job', 'x', ...(cmd === 'scale' ? ['--dp', '2'] : []), '--workdir', aFile, '--nats', nats], /--workdir .*a-file is not a directory/);
      });
    }
  });

  it('scale --dp 65: exit 2 naming the bound, no connection', async () => {
    await refusedOffline(['scale', '--job', 'x', '--dp', '65', '--nats', nats], new RegExp(`--dp must be at most ${LIMITS.dp}, got 65`));
  });

  it('node --node-id that is not a subject token: exit 2, no connection', async () => {
    const runDir = join(dir, 'nodeid');
    mkdirSync(runDir, { recursive: true });
    await refusedOffline(['node', '--job-file', join(runDir, 'job.json'), '--nats', nats, '--node-id', 'a.b'], /--node-id must be 1\.\.64 characters/);
  });

  it('step: --tp/--sp/--dp/--threads/--comm-timeout bounds', async () => {
    const base = ['step', '--config', join(dir, 'c.json'), '--weights', join(dir, 'w'), '--batch', join(dir, 'b'), '--out', join(dir, 'o')];
    expectBad(await runCli([...base, '--dp', '100000']), new RegExp(`--dp must be at most ${LIMITS.dp}`));
    expectBad(await runCli([...base, '--sp', '1000']), new RegExp(`--sp must be at most ${LIMITS.sp}`));
    expectBad(await runCli([...base, '--threads', '100000']), new RegExp(`--threads must be at most ${LIMITS.threads}`));
    // setTimeout fires at once for more than 2^31-1 ms: such a bound would be no bound
    expectBad(await runCli([...base, '--tp', '2', '--comm-timeout', String(2 ** 32)]), new RegExp(`--comm-timeout must be at most ${LIMITS.ms}`));
  });

  describe('audit: a malformed event in ledger.jsonl is exit 2 naming the line and the field', () => {
    const ledger = (job: string, lines: string[]) => {
      mkdirSync(join(workdir, job), { recursive: true });
      writeFileSync(join(workdir, job, 'ledger.jsonl'), lines.join('\n') + '\n');
    };
    const put = JSON.stringify({ seq: 1, at: 1, type: 'put', key: 'commit:s1:1', ref: sampleRef({ sampleId: 's1', generation: 1 }), prevGeneration: null });
    afterEach(() => rmSync(workdir, { recursive: true, force: true }));
    it('a lease whose leases is not a list', async () => {
      ledger('bad1', [put, JSON.stringify({ seq: 2, at: 2, type: 'lease', epoch: 1, consumer: 'r', partition: [0, 1], leases: 7 })]);
      expectBad(await runCli(['audit', '--job', 'bad1', '--workdir', workdir]), /ledger\.jsonl line 2: ledger event lease\.leases is the number 7, not an array/);
    });
    it('an unknown type, a put without a ref, a missing seq', async () => {
      ledger('bad2', [put, JSON.stringify({ seq: 2, at: 2, type: 'teleport' })]);
      expectBad(await runCli(['audit', '--job', 'bad2', '--workdir', workdir]), /line 2: ledger event unknown event type the string "teleport"/);
      ledger('bad3', [JSON.stringify({ seq: 1, at: 1, type: 'put' })]);
      expectBad(await runCli(['audit', '--job', 'bad3', '--workdir', workdir]), /line 1: ledger event put\.\w+ /);
      ledger('bad4', ['[1,2,3]']);
      expectBad(await runCli(['audit', '--job', 'bad4', '--workdir', workdir]), /line 1: ledger event not a map/);
      ledger('bad5', [JSON.stringify({ type: 'ack', leaseId: 'L1', sampleId: 's1', epoch: 1 })]);
      expectBad(await runCli(['audit', '--job', 'bad5', '--workdir', workdir]), /line 1: ledger event ack\.seq is/);
    });
    it('a well-formed file still audits (exit 0, clean)', async () => {
      ledger('good', [put]);
      const r = await runCli(['audit', '--job', 'good', '--workdir', workdir, '--json']);
      assert.equal(r.code, 0, r.stderr);
      assert.equal(JSON.parse(r.stdout).ok, true);
    });
  });
});
