// `draftwire run`: the main job on one machine. With no --nats it starts a local nats-server
// (JetStream, random port, temp store; with credentials when a secret is set), then a node
// with every role and the rank processes, trains --steps steps with a progress bar, writes
// the checkpoint and a JSON summary, audits the ledger, and stops everything it started.
import { mkdir, rm, writeFile } from 'node:fs/promises';
import { resolve, join } from 'node:path';
import { Command, Option } from 'commander';
import cliProgress from 'cli-progress';
import { readLedgerEvents } from '../../actors/queue.ts';
import { evalPrompts, type StepMetrics } from '../../actors/rank.ts';
import { AuthPolicy } from '../../src/auth.ts';
import { loadWeightsFile, writeInitialWeights } from '../../src/checkpoint.ts';
import { acceptLength, DraftModel, TargetModel } from '../../src/native.ts';
import { DraftwireError, InvalidArgumentError } from '../../src/errors.ts';
import { saveJobSpec, validateJobSpec, type JobSpec } from '../../src/job.ts';
import { auditEvents, type AuditReport } from '../../src/ledger.ts';
import { createLogger } from '../../src/log.ts';
import type { GlobalOptions } from '../cli.ts';
import { startNatsServer, type NatsServerHandle } from '../nats-launcher.ts';
import { NodeAgent, ROLES } from '../node.ts';
import { jobId, nonNegative, nonNegativeInt, positive, positiveInt } from '../options.ts';
import { SIZES, targetConfig } from '../presets.ts';
import { writeLedgerJsonl } from './audit.ts';

const log = createLogger('run');

interface RunOpts extends GlobalOptions {
  job?: string; workdir: string; nats?: string; size: string; steps: number; batch: number;
  seqLen?: number; promptLen?: number; lr: number; clip: number; weightDecay: number; dp: number; tp: number; sp: number;
  seed: number; temperature: number; dataset?: string; evalEvery: number; evalPrompts: number; threads: number;
  leaseMs: number; storeHighMb: number; progress: boolean; keepStore: boolean;
}

export interface RunSummary {
  job: string; runDir: string; steps: number; samples: number; tokens: number; seconds: number; samplesPerSec: number;
  firstLoss: number | null; lastLoss: number | null; lossCurve: number[];
  acceptLengthInitial: number | null; acceptLength: number | null; checkpoint: string; audit: AuditReport; stepMsMean: number | null;
}

export function command(): Command {
  return new Command('run')
    .summary('train a draft model end to end on this machine (embedded NATS, every role, rank processes)')
    .description('Starts NATS (unless --nats), the coordinator, queue, janitor and rollout actors and the rank processes; trains --steps steps on samples the synthetic target writes; writes <workdir>/<job>/{checkpoint.safetensors, summary.json, ledger.jsonl}. The shared secret, if any, comes from DRAFTWIRE_SECRET or DRAFTWIRE_SECRET_FILE.')
    .option('--job <id>', 'job id (default: dw-<time>)', jobId)
    .option('--workdir <dir>', 'where run directories go', 'runs')
    .option('--nats <url>', 'an existing NATS server (JetStream on); default: start one')
    .addOption(new Option('--size <name>', 'model size preset').choices(Object.keys(SIZES)).default('small'))
    .option('--steps <n>', 'training steps', positiveInt('--steps'), 200)
    .option('--batch <n>', 'samples per step per DP group', positiveInt('--batch'), 8)
    .option('--seq-len <n>', 'tokens per sample (default: the preset\'s)', positiveInt('--seq-len'))
    .option('--prompt-len <n>', 'prompt tokens per sample (default: the preset\'s)', positiveInt('--prompt-len'))
    .option('--lr <x>', 'AdamW learning rate', positive('--lr'), 3e-3)
    .option('--clip <x>', 'global gradient-norm clip (0 = none)', nonNegative('--clip'), 1)
    .option('--weight-decay <x>', 'AdamW weight decay', nonNegative('--weight-decay'), 0)
    .option('--dp <n>', 'data-parallel groups', positiveInt('--dp'), 1)
    .option('--tp <n>', 'tensor-parallel ranks per group', positiveInt('--tp'), 1)
    .option('--sp <n>', 'sequence-parallel ranks per group', positiveInt('--sp'), 1)
    .option('--seed <n>', 'seed of the target, prompts and draft init', nonNegativeInt('--seed'), 0)
    .option('--temperature <x>', 'rollout sampling temperature (0 = greedy)', nonNegative('--temperature'), 0)
    .option('--dataset <file>', 'prompts: a text file (one per line) or JSONL ({"text"} or {"ids"}) ')
    .option('--eval-every <n>', 'measure accept length every n steps (0 = only at the end)', nonNegativeInt('--eval-every'), 50)
    .option('--eval-prompts <n>', 'prompts the accept length is measured on', positiveInt('--eval-prompts'), 8)
    .option('--threads <n>', 'BLAS threads per rank and for the rollout', positiveInt('--threads'), 1)
    .option('--lease-ms <n>', 'lease length', positiveInt('--lease-ms'), 30_000)
    .option('--store-high-mb <n>', 'store high watermark (rollout pauses above it)', positive('--store-high-mb'), 256)
    .option('--no-progress', 'no progress bar (log lines instead)')
    .option('--keep-store', 'keep the feature-store directory after the run')
    .action(async (_o: unknown, cmd: Command) => {
      const o = cmd.optsWithGlobals<RunOpts>();
      const summary = await runJob(o);
      if (o.json) process.stdout.write(JSON.stringify(summary) + '\n');
      else {
        const f = (x: number | null, d = 4) => (x === null ? '-' : x.toFixed(d));
        process.stdout.write([
          `job ${summary.job}: ${summary.steps} steps, ${summary.samples} samples in ${summary.seconds.toFixed(1)} s (${summary.samplesPerSec.toFixed(2)} samples/s)`,
          `loss ${f(summary.firstLoss)} -> ${f(summary.lastLoss)}   accept length ${f(summary.acceptLengthInitial, 3)} -> ${f(summary.acceptLength, 3)}`,
          `audit: ${summary.audit.ok ? 'clean' : 'PROBLEMS'} (committed ${summary.audit.committed}, consumed ${summary.audit.consumed}, dead ${summary.audit.dead}, pending ${summary.audit.pending})`,
          `checkpoint: ${summary.checkpoint}`,
          `summary: ${join(summary.runDir, 'summary.json')}`,
        ].join('\n') + '\n');
      }
      if (!summary.audit.ok) throw new DraftwireError('AUDIT', `ledger audit found ${summary.audit.problems.length} problem(s): ${summary.audit.problems.slice(0, 3).join('; ')}`, false);
    });
}

export function buildSpec(o: RunOpts): JobSpec {
  const preset = SIZES[o.size];
  if (!preset) throw new InvalidArgumentError(`unknown --size ${o.size}`);
  const job = o.job ?? `dw-${new Date().toISOString().replace(/[-:T]/g, '').slice(0, 14)}`;
  const runDir = resolve(o.workdir, job);
  const seqLen = o.seqLen ?? preset.seqLen, promptLen = o.promptLen ?? preset.promptLen;
  if (promptLen >= seqLen) throw new InvalidArgumentError(`--prompt-len (${promptLen}) must be below --seq-len (${seqLen})`);
  const high = Math.floor(o.storeHighMb * 1024 * 1024);
  return validateJobSpec({
    job, runDir, storeDir: join(runDir, 'store'), storeId: `${job}-store`, initWeights: join(runDir, 'init.safetensors'),
    draft: preset.draft, target: targetConfig(preset, o.seed), seqLen, promptLen, batch: o.batch, steps: o.steps,
    lr: o.lr, clip: o.clip > 0 ? o.clip : null, weightDecay: o.weightDecay, dp: o.dp, tp: o.tp, sp: o.sp, seed: o.seed,
    temperature: o.temperature, leaseMs: o.leaseMs, maxDeliveries: 5, storeHighBytes: high, storeLowBytes: Math.floor(high * 0.75),
    dataset: o.dataset ? resolve(o.dataset) : null, evalEvery: o.evalEvery, evalPrompts: o.evalPrompts, threads: o.threads,
  });
}

export async function runJob(o: RunOpts): Promise<RunSummary> {
  const spec = buildSpec(o);
  if (spec.dp * spec.tp * spec.sp !== 1) throw new InvalidArgumentError(`--dp ${spec.dp} --tp ${spec.tp} --sp ${spec.sp}: this build trains with one rank; sharded and data-parallel training need the collective backend (not built yet)`);
  const auth = AuthPolicy.fromEnv();
  await mkdir(spec.runDir, { recursive: true });
  await saveJobSpec(spec);
  const t0 = Date.now();
  let nats: NatsServerHandle | null = null;
  let node: NodeAgent | null = null;
  const cleanup = async () => {
    await node?.stop().catch(() => {});
    await nats?.stop().catch(() => {});
  };
  // `on`, not `once`: the listener must stay registered while cleanup runs, so the NATS
  // launcher's own reaper sees that someone handles the signal and leaves its server to us.
  let onSignal: (sig: NodeJS.Signals) => void = () => {};
  const interrupted = new Promise<never>((_, reject) => {
    onSignal = (sig) => reject(new DraftwireError('INTERRUPTED', `interrupted by ${sig}; stopped everything the run started`, false));
  });
  interrupted.catch(() => {});
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  try {
    log.info('preparing initial weights (calibrating the draft vocabulary on the target)', { runDir: spec.runDir });
    await Promise.race([writeInitialWeights(spec), interrupted]);
    let url = o.nats;
    if (!url) {
      nats = await startNatsServer({ credentials: auth.natsCredentials() });
      url = nats.url;
    }
    await writeFile(join(spec.runDir, 'run.json'), JSON.stringify({ job: spec.job, nats: url, pid: process.pid, startedAt: t0 }, null, 2));
    node = await NodeAgent.start({ spec, nats: url, nodeId: 'local', roles: ROLES, auth });
    const metrics: StepMetrics[] = [];
    const bar = progress(o.progress && !o.json && process.stderr.isTTY, spec.steps);
    const sub = node.bus.subscribe<StepMetrics>(`dw.${spec.job}.metrics`, (m) => {
      if (!m || typeof m.step !== 'number') return;
      metrics.push(m);
      bar.update(m, t0);
    }, { dedupe: false });
    const statusTimer = setInterval(() => {
      void node!.bus.request<{ depth: number; inFlight: number }>(`dw.${spec.job}.queue.status`, {}, { timeoutMs: 1000, retries: 0 })
        .then((q) => node!.store.usage().then((u) => bar.setQueue(q.depth, q.inFlight, u.bytes))).catch(() => {});
    }, 1000);
    const world = spec.dp * spec.tp * spec.sp;
    const ranks = Array.from({ length: world }, (_, r) => node!.spawnRank(r));
    const codes = await Promise.race([Promise.all(ranks.map((r) => r.exited)), interrupted]);
    clearInterval(statusTimer);
    sub.unsubscribe();
    bar.stop();
    const bad = codes.findIndex((c) => c !== 0);
    if (bad >= 0) throw new DraftwireError('RANK_FAILED', `rank ${bad} exited with code ${codes[bad]}; see ${join(spec.runDir, `rank-${bad}.log`)}`, false);

    // Let the janitor free the last step's samples, then audit the write-ahead log.
    await waitFor(async () => (await node!.store.usage()).samples === 0, 10_000);
    const events = await readLedgerEvents(node.bus);
    await writeLedgerJsonl(join(spec.runDir, 'ledger.jsonl'), events);
    const audit = auditEvents(events);
    const seconds = (Date.now() - t0) / 1000;
    const losses = metrics.filter((m) => m.rank === 0).sort((a, b) => a.step - b.step);
    const accepts = losses.filter((m) => m.acceptLength !== null);
    const samples = losses.reduce((n, m) => n + m.samples, 0);
    const summary: RunSummary = {
      job: spec.job, runDir: spec.runDir, steps: losses.length, samples, tokens: samples * spec.seqLen, seconds,
      samplesPerSec: samples / seconds,
      firstLoss: losses[0]?.loss ?? null, lastLoss: losses.at(-1)?.loss ?? null, lossCurve: losses.map((m) => m.loss),
      acceptLengthInitial: null, acceptLength: accepts.at(-1)?.acceptLength ?? null,
      checkpoint: join(spec.runDir, 'checkpoint.safetensors'), audit,
      stepMsMean: losses.length ? losses.reduce((n, m) => n + m.stepMs, 0) / losses.length : null,
    };
    summary.acceptLengthInitial = await initialAcceptLength(spec);
    await writeFile(join(spec.runDir, 'summary.json'), JSON.stringify(summary, null, 2));
    return summary;
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    await cleanup();
    if (!o.keepStore) await rm(spec.storeDir, { recursive: true, force: true });
    await rm(join(spec.runDir, 'run.json'), { force: true });
  }
}

/** Accept length of the untrained draft (the baseline the summary compares against). */
async function initialAcceptLength(spec: JobSpec): Promise<number> {
  const draft = DraftModel.create(spec.draft, await loadWeightsFile(spec.initWeights, spec.draft), { threads: spec.threads });
  const target = TargetModel.create(spec.target, { threads: spec.threads });
  try {
    return (await acceptLength(draft, target, evalPrompts(spec), { maxNew: spec.seqLen - spec.promptLen })).acceptLength;
  } finally { draft.close(); target.close(); }
}

async function waitFor(cond: () => Promise<boolean>, ms: number): Promise<boolean> {
  const end = Date.now() + ms;
  while (Date.now() < end) { if (await cond()) return true; await new Promise((r) => setTimeout(r, 100)); }
  return false;
}

interface Progress { update(m: StepMetrics, t0: number): void; setQueue(depth: number, inFlight: number, bytes: number): void; stop(): void }

function progress(tty: boolean, total: number): Progress {
  const q = { depth: 0, inFlight: 0, bytes: 0 };
  let acc: number | null = null;
  const fields = (m: StepMetrics, t0: number) => ({
    loss: m.loss.toFixed(4), accept: acc === null ? '-' : acc.toFixed(2), sps: (m.step * m.samples / ((Date.now() - t0) / 1000)).toFixed(1),
    depth: q.depth, inflight: q.inFlight, mb: (q.bytes / 1048576).toFixed(1),
  });
  if (!tty) {
    return {
      update(m, t0) {
        if (m.acceptLength !== null) acc = m.acceptLength;
        if (m.step === 1 || m.step % 10 === 0 || m.step === total) {
          const f = fields(m, t0);
          log.info(`step ${m.step}/${total}`, { loss: Number(f.loss), accept: acc, samplesPerSec: Number(f.sps), queueDepth: q.depth, storeMB: Number(f.mb) });
        }
      },
      setQueue(d, i, b) { q.depth = d; q.inFlight = i; q.bytes = b; },
      stop() {},
    };
  }
  const bar = new cliProgress.SingleBar({
    format: 'step {value}/{total} |{bar}| loss {loss} | accept {accept} | {sps} samples/s | queue {depth} (+{inflight} leased) | store {mb} MB | {eta_formatted}',
    stream: process.stderr, hideCursor: true,
  }, cliProgress.Presets.shades_classic);
  bar.start(total, 0, { loss: '-', accept: '-', sps: '-', depth: 0, inflight: 0, mb: '0.0' });
  return {
    update(m, t0) { if (m.acceptLength !== null) acc = m.acceptLength; bar.update(m.step, fields(m, t0)); },
    setQueue(d, i, b) { q.depth = d; q.inFlight = i; q.bytes = b; bar.update({ depth: d, inflight: i, mb: (b / 1048576).toFixed(1) }); },
    stop() { bar.stop(); },
  };
}
