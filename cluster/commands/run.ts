// `draftwire run`: the main job on one machine. With no --nats it starts a local nats-server
// (JetStream, random port, store under <run>/nats so the ledger survives the run process;
// with credentials when a secret is set) and restarts it on the same port and store if it
// dies (clients reconnect and retry), then a node
// with every role and the rank processes, trains --steps steps with a progress bar, writes
// the checkpoint and a JSON summary, audits the ledger, and stops everything it started.
// `--resume <runDir>` continues a run whose process was killed: same job.json, same NATS
// store (so the ledger's position is restored: consumed samples are not leased again), and
// the rank resumes from the latest checkpoint under <run>/ckpt.
import { existsSync, readFileSync, statSync } from 'node:fs';
import { readdir, rm } from 'node:fs/promises';
import { resolve, join } from 'node:path';
import { Command, Option } from 'commander';
import cliProgress from 'cli-progress';
import { changeEpoch, ensureEpoch, epochMembers } from '../../src/job/epoch.ts';
import { readLedgerEvents } from '../../src/ledger/wal.ts';
import { evalMaxNew, evalPrompts, loadPrompts } from '../../src/job/prompts.ts';
import { openTarget, targetVocab } from '../../src/job/target.ts';
import { auxLayerList, buildHfSpec } from './run-hf.ts';
import { buildFeaturesSpec } from './run-features.ts';
import type { StepMetrics } from '../../trainer/rank-worker.ts';
import { AuthPolicy } from '../../src/wire/auth.ts';
import { QueueClient, listen } from '../../src/bus/clients.ts';
import { loadWeightsFile, writeInitialWeights } from '../../src/job/checkpoint.ts';
import { acceptLength, cudaInfo, DRAFT_BACKENDS, DraftModel, shardConfigError, type DraftBackend } from '../../src/native/addon.ts';
import { DraftwireError, InvalidArgumentError, UnavailableError } from '../../src/errors.ts';
import { LIMITS, isExternal, jobFile, loadJobSpec, sampleBudget, saveJobSpec, validateJobSpec, type JobSpec } from '../../src/job/spec.ts';
import { makeDir, writeFileMode } from '../../src/files.ts';
import { auditEvents, type AuditReport } from '../../src/ledger/ledger.ts';
import { readSafetensorsFile } from '../../src/store/safetensors.ts';
import type { SampleRef } from '../../src/wire/sampleref.ts';
import { createLogger } from '../../src/log.ts';
import type { GlobalOptions } from '../options.ts';
import { startNatsServer, type NatsServerHandle } from '../nats-launcher.ts';
import { NodeAgent, ROLES } from '../node.ts';
import { addressOption, dirOption, intInRange, jobId, natsUrl, nonNegative, nonNegativeInt, positive, positiveInt } from '../options.ts';
import { SIZES, targetConfig } from '../presets.ts';
import { writeLedgerJsonl } from './audit.ts';

const log = createLogger('run');

interface RunOpts extends GlobalOptions {
  job?: string; workdir: string; nats?: string; size: string; steps?: number; batch: number;
  seqLen?: number; promptLen?: number; lr: number; clip: number; weightDecay: number; dp: number; tp: number; sp: number;
  seed: number; temperature: number; dataset?: string; evalEvery: number; evalPrompts: number; threads: number; backend?: DraftBackend;
  leaseMs: number; storeHighMb: number; progress: boolean; keepStore: boolean;
  resume?: string; checkpointEvery?: number; maxRankRestarts?: number; rankDeadAfterMs?: number;
  onRankLoss?: 'replace' | 'shrink'; batchWaitMs?: number; checkpointStore?: 'dir' | 'nats'; metrics?: { host: string; port: number };
  // the samples' source: the job's own rollout, or producers of their own (--rollout external)
  rollout?: 'builtin' | 'external'; samples?: number; producers?: number; featureDtype?: 'bf16' | 'f32';
  // a Hugging Face target and a chat dataset (cluster/commands/run-hf.ts)
  target?: string; maxLen?: number; draftVocab?: number; evalRows?: number; onBadRow?: 'skip' | 'fail'; regenerate?: boolean;
  auxLayers?: number[]; auxConvention?: 'output' | 'input'; ttt?: number; evalMaxNew?: number; initFrom?: string;
  // offline features instead of the target's forward pass (cluster/commands/run-features.ts)
  features?: string;
}

export interface RunSummary {
  /** steps and samples: of the final weights (the whole job, also across --resume); samplesPerSec: of the steps this process saw. */
  job: string; runDir: string; steps: number; samples: number; tokens: number; seconds: number; samplesPerSec: number;
  firstLoss: number | null; lastLoss: number | null; lossCurve: number[];
  acceptLengthInitial: number | null; acceptLength: number | null; checkpoint: string; audit: AuditReport; stepMsMean: number | null;
  /** The steady state: samples of the steps after the first over the time from the first step's report to the last's (null under 2 steps). */
  trainSamplesPerSec: number | null;
  /** Where the rank's step ran (--backend). */
  backend: DraftBackend;
  /** Step the rank resumed from (run --resume), 0 for a fresh run. */
  resumedFromStep: number;
  rankRestarts: number; natsRestarts: number;
  /** Ranks lost for good (onRankLoss shrink, or restarts used up) while the job went on. */
  ranksLost: number[];
  /** The data-parallel widths the job trained at, in order (a scale 1 → 3 → 1 reads [1, 3, 1]). */
  dpHistory: number[];
  /** A chat job's dataset: rows trained on, skipped (bad, nothing supervised), truncated, held out; null for the synthetic job. */
  dataset: Record<string, unknown> | null;
  /** An external job's input: its producers (as the ledger saw them) and why it closed; null for the job's own rollout. */
  input: { producers: string[]; closed: string | null } | null;
  /** Offline features (--features): the layout, files trained on, held out, dead-lettered (src/job/features-data.ts); null otherwise. */
  features: Record<string, unknown> | null;
  /** Store usage once the run finished, before the store directory is removed. */
  storeAfter: { samples: number; bytes: number; tempFiles: number };
}

export function command(): Command {
  return new Command('run')
    .summary('train a draft model end to end on this machine (embedded NATS, every role, rank processes)')
    .description('Starts NATS (unless --nats), the coordinator, queue, janitor and rollout actors and the rank processes; trains --steps steps on samples the target writes (the seeded synthetic target, or with --target a Hugging Face model directory over the conversations of --dataset, or with --target and --features the hidden states another run captured, without the target\'s forward pass); writes <workdir>/<job>/{checkpoint.safetensors, summary.json, ledger.jsonl} (and vocab.safetensors for --target; dead-letter.jsonl for --features). The shared secret, if any, comes from DRAFTWIRE_SECRET or DRAFTWIRE_SECRET_FILE.')
    .option('--job <id>', 'job id (default: dw-<time>)', jobId)
    .option('--workdir <dir>', 'where run directories go', dirOption('--workdir'), 'runs')
    .option('--nats <url>', 'an existing NATS server (JetStream on); default: start one', natsUrl)
    .addOption(new Option('--size <name>', 'model size preset').choices(Object.keys(SIZES)).default('small'))
    .option('--steps <n>', 'training steps (default 200; with --target one pass over the conversations)', positiveInt('--steps'))
    .option('--batch <n>', `samples per step per DP group (at most ${LIMITS.batch}; batch·seq-len at most ${LIMITS.stepTokens})`, intInRange('--batch', 1, LIMITS.batch), 8)
    .option('--seq-len <n>', `tokens per sample (default: the preset's; at most ${LIMITS.seqLen})`, intInRange('--seq-len', 1, LIMITS.seqLen))
    .option('--prompt-len <n>', 'prompt tokens per sample (default: the preset\'s)', positiveInt('--prompt-len'))
    .option('--lr <x>', 'AdamW learning rate', positive('--lr'), 3e-3)
    .option('--clip <x>', 'global gradient-norm clip (0 = none)', nonNegative('--clip'), 1)
    .option('--weight-decay <x>', 'AdamW weight decay', nonNegative('--weight-decay'), 0)
    .option('--dp <n>', `data-parallel groups (at most ${LIMITS.dp}; dp·tp·sp rank processes, at most ${LIMITS.worldRanks})`, intInRange('--dp', 1, LIMITS.dp), 1)
    .option('--tp <n>', `tensor-parallel ranks per group (at most ${LIMITS.tp})`, intInRange('--tp', 1, LIMITS.tp), 1)
    .option('--sp <n>', `sequence-parallel ranks per group (at most ${LIMITS.sp})`, intInRange('--sp', 1, LIMITS.sp), 1)
    .option('--seed <n>', 'seed of the target, prompts and draft init', nonNegativeInt('--seed'), 0)
    .option('--temperature <x>', 'rollout sampling temperature (0 = greedy)', nonNegative('--temperature'), 0)
    .option('--dataset <file>', 'synthetic target: prompts, a text file (one per line) or JSONL ({"text"} or {"ids"}); with --target: conversations, JSONL in ShareGPT ({"conversations": [{"from", "value"}]}), OpenAI/UltraChat ({"messages": [{"role", "content"}]}) or SpecForge form')
    .option('--target <dir>', 'a Hugging Face model directory (config.json, *.safetensors, tokenizer.json, tokenizer_config.json): Llama, Qwen2 or Qwen3')
    .option('--max-len <n>', `with --target: tokens per conversation at most (longer ones are truncated; at most ${LIMITS.seqLen}; default 2048)`, intInRange('--max-len', 2, LIMITS.seqLen))
    .option('--draft-vocab <n>', 'with --target: draft vocabulary size (default 32000, or the target\'s when smaller)', positiveInt('--draft-vocab'))
    .option('--eval-rows <n>', 'with --target: the last n valid conversations are held out of training; the accept length is measured on their prompts (default 8)', nonNegativeInt('--eval-rows'))
    .option('--eval-max-new <n>', 'with --target: tokens each accept-length prompt decodes (default 64)', positiveInt('--eval-max-new'))
    .addOption(new Option('--on-bad-row <policy>', 'with --target: a malformed dataset row is reported and skipped (default), or fails the run').choices(['skip', 'fail']))
    .option('--regenerate', 'with --target: the target writes the assistant reply to each conversation\'s prompt itself (greedy, or at --temperature) instead of training on the dataset\'s replies')
    .option('--aux-layers <a,b,c>', 'with --target: the three layers EAGLE3 taps (default: SpecForge\'s 1, L/2-1, L-4 in the output convention)', auxLayerList)
    .addOption(new Option('--aux-convention <c>', 'with --target: what --aux-layers count: "output" of decoder layer i (SpecForge, SGLang; default) or "input" of layer j (vLLM, speculators)').choices(['output', 'input']))
    .option('--features <dir>', 'with --target: train from offline hidden states in DIR instead of running the target over a dataset; the layout is detected: a draftwire capture (its vocab.safetensors is the draft vocabulary) or vLLM speculators\' hs_<i>.safetensors (token_ids, hidden_states [T, 4, H]: three aux layers and the pre-norm final state; the loss mask from --dataset row i, or the file\'s loss_mask). A bad file is dead-lettered (<run>/dead-letter.jsonl) and never trained on')
    .option('--init-from <dir>', 'with --target: start from an EAGLE3 draft directory (draftwire export, SpecForge, a published draft): its weights and its draft vocabulary')
    .option('--ttt <n>', 'with --target: draft tokens trained per position (test-time training steps; default 7)', intInRange('--ttt', 1, 64))
    .addOption(new Option('--rollout <source>', 'where samples come from: the job\'s own rollout of the target, or producers of their own (the Python package, an SGLang/vLLM hook) that commit to this job until they declare their end').choices(['builtin', 'external']).default('builtin'))
    .addOption(new Option('--feature-dtype <dtype>', 'the dtype the rollout writes hidden states in: bf16 (half the bytes, as serving engines produce them; default) or f32').choices(['bf16', 'f32']))
    .option('--samples <n>', 'with --rollout external: the job takes this many samples, then closes its input and trains them (default: until --producers producers declared their end)', positiveInt('--samples'))
    .option('--producers <n>', 'with --rollout external: the input closes once this many producers declared their end and none is still open (default 1)', intInRange('--producers', 1, 100_000))
    .option('--eval-every <n>', 'measure accept length every n steps (0 = only at the end)', nonNegativeInt('--eval-every'), 50)
    .option('--eval-prompts <n>', `prompts the accept length is measured on (at most ${LIMITS.evalPrompts})`, intInRange('--eval-prompts', 1, LIMITS.evalPrompts), 8)
    .option('--threads <n>', `BLAS threads per rank and for the rollout (at most ${LIMITS.threads})`, intInRange('--threads', 1, LIMITS.threads), 1)
    .addOption(new Option('--backend <backend>', 'where the rank\'s step runs: the CPU step (every sharding), the whole step resident on GPU 0 (one rank: dp, tp and sp 1), or that resident step on the CPU (what checks it without a GPU)').choices([...DRAFT_BACKENDS]).default('cpu'))
    .option('--lease-ms <n>', 'lease length (at most a day)', intInRange('--lease-ms', 1, LIMITS.ms), 30_000)
    .option('--store-high-mb <n>', 'store high watermark (rollout pauses above it)', positive('--store-high-mb'), 256)
    .option('--no-progress', 'no progress bar (log lines instead)')
    .option('--keep-store', 'keep the feature-store directory after the run')
    .option('--resume <runDir>', 'continue the run in this directory (its process was killed): same job, ledger and latest checkpoint')
    .option('--checkpoint-every <n>', 'rank checkpoint every n steps; a step\'s leases are acked once its checkpoint is durable', positiveInt('--checkpoint-every'), 1)
    .option('--max-rank-restarts <n>', 'respawn a dead rank this many times', nonNegativeInt('--max-rank-restarts'), 3)
    .addOption(new Option('--checkpoint-store <where>', 'where rank checkpoints live: the run directory, or the job\'s NATS JetStream (replicated; what machines that share no directory use)').choices(['dir', 'nats']).default('dir'))
    .addOption(new Option('--on-rank-loss <policy>', 'a lost rank is replaced (respawned; the world waits for it) or the world shrinks').choices(['replace', 'shrink']).default('replace'))
    .option('--metrics <host:port>', 'serve Prometheus metrics at /metrics and the live page at / here while the job runs (read-only, no auth; port 0: any free port)', addressOption('--metrics', true))
    .option('--batch-wait-ms <n>', 'a data-parallel world steps on short (padded) batches after waiting this long for full ones', intInRange('--batch-wait-ms', 1, LIMITS.ms), 2000)
    .option('--rank-dead-after-ms <n>', 'declare a rank dead after this long without a heartbeat', intInRange('--rank-dead-after-ms', 1, LIMITS.ms), 10_000)
    .action(async (_o: unknown, cmd: Command) => {
      const o = cmd.optsWithGlobals<RunOpts>();
      const summary = await runJob(o);
      if (o.json) process.stdout.write(JSON.stringify(summary) + '\n');
      else {
        const f = (x: number | null, d = 4) => (x === null ? '-' : x.toFixed(d));
        process.stdout.write([
          `job ${summary.job}: ${summary.steps} steps, ${summary.samples} samples in ${summary.seconds.toFixed(1)} s (${summary.samplesPerSec.toFixed(2)} samples/s)${summary.backend !== 'cpu' ? `, on backend ${summary.backend}` : ''}`,
          `loss ${f(summary.firstLoss)} -> ${f(summary.lastLoss)}   accept length ${f(summary.acceptLengthInitial, 3)} -> ${f(summary.acceptLength, 3)}`,
          `audit: ${summary.audit.ok ? 'clean' : 'PROBLEMS'} (committed ${summary.audit.committed}, consumed ${summary.audit.consumed}, dead ${summary.audit.dead}, pending ${summary.audit.pending})`,
          ...(summary.features ? [featuresLine(summary.features)] : []),
          ...(summary.dpHistory.length > 1 || summary.dpHistory[0] !== 1 ? [`data-parallel width: ${summary.dpHistory.join(' -> ')}`] : []),
          ...(summary.rankRestarts || summary.ranksLost.length ? [`ranks: ${summary.rankRestarts} restart(s)${summary.ranksLost.length ? `, lost ${summary.ranksLost.join(', ')}` : ''}`] : []),
          `checkpoint: ${summary.checkpoint}`,
          `summary: ${join(summary.runDir, 'summary.json')}`,
        ].join('\n') + '\n');
      }
      if (!summary.audit.ok) throw new DraftwireError('AUDIT', `ledger audit found ${summary.audit.problems.length} problem(s): ${summary.audit.problems.slice(0, 3).join('; ')}`, false);
    });
}

export function buildSpec(o: RunOpts & { steps?: number }): JobSpec {
  const preset = SIZES[o.size];
  if (!preset) throw new InvalidArgumentError(`unknown --size ${o.size}`);
  const job = o.job ?? `dw-${new Date().toISOString().replace(/[-:T]/g, '').slice(0, 14)}`;
  const runDir = resolve(o.workdir, job);
  const seqLen = o.seqLen ?? preset.seqLen, promptLen = o.promptLen ?? preset.promptLen;
  if (promptLen >= seqLen) throw new InvalidArgumentError(`--prompt-len (${promptLen}) must be below --seq-len (${seqLen})`);
  // The products of options each bounded alone (see LIMITS): rank processes and tokens per step.
  const ranks = o.dp * o.tp * o.sp;
  if (ranks > LIMITS.worldRanks) throw new InvalidArgumentError(`--dp ${o.dp} --tp ${o.tp} --sp ${o.sp}: ${ranks} rank processes; at most ${LIMITS.worldRanks}`);
  if (o.backend !== undefined && o.backend !== 'cpu' && ranks !== 1) throw new InvalidArgumentError(`--backend ${o.backend} trains one unsharded rank: --dp, --tp and --sp must be 1 (got ${o.dp}, ${o.tp}, ${o.sp})`);
  if (o.batch * seqLen > LIMITS.stepTokens) throw new InvalidArgumentError(`--batch ${o.batch} --seq-len ${seqLen}: ${o.batch * seqLen} tokens per step; at most ${LIMITS.stepTokens}`);
  const high = Math.floor(o.storeHighMb * 1024 * 1024);
  const external = o.rollout === 'external';
  // An external job's length is its producers' to decide; steps is only an estimate there.
  const steps = external ? Math.max(1, Math.ceil((o.samples ?? o.batch * o.dp) / (o.batch * o.dp))) : o.steps ?? 200;
  return validateJobSpec({
    job, runDir, storeDir: join(runDir, 'store'), storeId: `${job}-store`, initWeights: join(runDir, 'init.safetensors'),
    draft: preset.draft, target: targetConfig(preset, o.seed), seqLen, promptLen, batch: o.batch, steps,
    lr: o.lr, clip: o.clip > 0 ? o.clip : null, weightDecay: o.weightDecay, dp: o.dp, tp: o.tp, sp: o.sp, seed: o.seed,
    temperature: o.temperature, leaseMs: o.leaseMs, maxDeliveries: 5, storeHighBytes: high, storeLowBytes: Math.floor(high * 0.75),
    dataset: o.dataset ? resolve(o.dataset) : null, evalEvery: o.evalEvery, evalPrompts: o.evalPrompts, threads: o.threads,
    checkpointEvery: o.checkpointEvery ?? 1, maxRankRestarts: o.maxRankRestarts ?? 3, rankDeadAfterMs: o.rankDeadAfterMs ?? 10_000,
    onRankLoss: o.onRankLoss ?? 'replace', batchWaitMs: o.batchWaitMs ?? 2000,
    ...(o.checkpointStore === 'nats' ? { checkpointStore: 'nats' as const } : {}),
    ...(external ? { input: { kind: 'external', samples: o.samples ?? null, producers: o.producers ?? 1 } } : {}),
    featureDtype: o.featureDtype ?? 'bf16',
    ...(o.backend !== undefined && o.backend !== 'cpu' ? { backend: o.backend } : {}),
  });
}

export async function runJob(o: RunOpts): Promise<RunSummary> {
  const resuming = o.resume !== undefined;
  if (resuming && !existsSync(jobFile(resolve(o.resume!)))) throw new InvalidArgumentError(`--resume ${o.resume}: no job.json there (not a run directory)`);
  if (!resuming) checkTargetOptions(o);
  const base = resuming ? loadJobSpec(jobFile(resolve(o.resume!))) : buildSpec(o);
  if (!resuming) assertFreshRunDir(base.runDir, o.nats);
  // checks the layout against the target's shape before it prepares the dataset
  const spec = resuming || !o.target ? base : o.features ? (await buildFeaturesSpec(o, base, checkLayout)).spec : (await buildHfSpec(o, base, checkLayout)).spec;
  checkLayout(spec);
  checkBackend(spec);
  // Fail fast on an unreadable or malformed dataset, before anything starts.
  if (spec.dataset) loadPrompts(spec.dataset, targetVocab(spec.target), spec.promptLen);
  const auth = AuthPolicy.fromEnv();
  if (resuming) await reapOrphanServer(spec.runDir);
  await makeDir(spec.runDir);
  await makeDir(spec.storeDir); // before the store opens it: its directory gets the job's mode too
  if (!resuming) await saveJobSpec(spec);
  const t0 = Date.now();
  let finished = false;
  let stoppedBySignal = false;
  let nats: NatsServerHandle | null = null;
  let node: NodeAgent | null = null;
  let natsRestarts = 0, watchdog: NodeJS.Timeout | null = null, restarting = false;
  const cleanup = async () => {
    if (watchdog) clearInterval(watchdog);
    await node?.stop().catch(() => {});
    await nats?.stop().catch(() => {});
  };
  // `on`, not `once`: the listener must stay registered while cleanup runs, so the NATS
  // launcher's own reaper sees that someone handles the signal and leaves its server to us.
  let onSignal: (sig: NodeJS.Signals) => void = () => {};
  const interrupted = new Promise<never>((_, reject) => {
    onSignal = (sig) => { stoppedBySignal = true; reject(new DraftwireError('INTERRUPTED', `interrupted by ${sig}; stopped everything the run started`, false)); };
  });
  interrupted.catch(() => {});
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  try {
    log.info(spec.chat ? 'preparing initial weights (the draft vocabulary of the job, the target\'s embedding and head)' : 'preparing initial weights (calibrating the draft vocabulary on the target)', { runDir: spec.runDir });
    if (!(resuming && existsSync(spec.initWeights))) await Promise.race([writeInitialWeights(spec), interrupted]);
    let url = o.nats;
    if (!url) {
      nats = await startNatsServer({ credentials: auth.natsCredentials(), storeDir: join(spec.runDir, 'nats') });
      url = nats.url;
      // The embedded server is restarted on the same port and store if it dies; every client
      // reconnects (the bus reconnects forever) and its requests retry.
      const h = nats;
      watchdog = setInterval(() => {
        if (h.running || restarting) return;
        restarting = true;
        natsRestarts++;
        log.warn('nats-server died; restarting it on the same port and store', { port: h.port });
        h.restart().then(() => log.info('nats-server restarted', { pid: h.pid }), (e: unknown) => log.error('nats-server restart failed', { error: (e as Error).message }))
          .finally(() => { restarting = false; });
      }, 250);
    }
    await writeFileMode(join(spec.runDir, 'run.json'), JSON.stringify({ job: spec.job, nats: url, natsPid: nats?.pid ?? null, pid: process.pid, startedAt: t0 }, null, 2));
    node = await NodeAgent.start({ spec, nats: url, nodeId: 'local', roles: ROLES, auth, ...(o.metrics ? { metrics: o.metrics } : {}) });
    // A log record replay cannot use stops the resume here, by stream seq (WalCorruptError), not in the ranks.
    if (resuming) await readLedgerEvents(node.bus);
    const metrics: StepMetrics[] = [];
    const bar = progress(o.progress && !o.json && process.stderr.isTTY, sampleBudget(spec));
    if (isExternal(spec)) {
      log.info('waiting for producers: they commit samples to this job until they declare their end', {
        nats: url, jobFile: jobFile(spec.runDir), store: spec.storeDir, samples: spec.input?.samples ?? null, producers: spec.input?.producers ?? 1,
      });
    }
    const sub = listen(node.bus, 'metrics', (m) => {
      metrics.push(m);
      bar.update(m, t0);
    });
    const statusTimer = setInterval(() => {
      void new QueueClient(node!.bus).status({ timeoutMs: 1000, retries: 0 })
        .then((q) => node!.store.usage().then((u) => bar.setQueue(q.depth, q.inFlight, u.bytes, q.budget ?? q.samples))).catch(() => {});
    }, 1000);
    // The ranks of the current epoch (the initial world, or what --resume finds). A resumed
    // world forms under a new epoch: the old one's rendezvous keys name dead processes.
    let world = await ensureEpoch(node.bus, spec.dp, spec.tp * spec.sp);
    if (resuming) world = (await changeEpoch(node.bus, (cur) => epochMembers(cur))).to;
    for (const r of epochMembers(world)) node.spawnRank(r, world.epoch);
    // Ranks that die are handled by the node agent (onRankLoss); scale-ups add ranks: wait for all.
    const outcomes = await Promise.race([node.allSettled(), interrupted]);
    await node.bus.flush();
    clearInterval(statusTimer);
    sub.unsubscribe();
    bar.stop();
    const lost = outcomes.filter((c) => c.code !== 0);
    // The final checkpoint is the proof that a world finished the job (its announcement is a
    // plain NATS message, which a restart of the server can lose: the file decides).
    const finalPath = join(spec.runDir, 'checkpoint.safetensors');
    const final = existsSync(finalPath) && statSync(finalPath).mtimeMs >= t0 ? (await readSafetensorsFile(finalPath, { names: [] })).metadata : null;
    if (!final) {
      const bad = lost[0] ?? outcomes[0];
      throw new DraftwireError('RANK_FAILED', bad ? `rank ${bad.rank} exited with code ${bad.code} after ${bad.restarts} restart(s) and no rank finished the job; see ${join(spec.runDir, `rank-${bad.rank}.log`)}` : 'no rank finished the job', false);
    }
    for (const c of lost) log.warn('a rank was lost during the job (it went on without it)', { rank: c.rank, code: c.code, restarts: c.restarts });

    // Let the janitor free the last step's samples, then audit the write-ahead log.
    await waitFor(async () => (await node!.store.usage()).samples === 0, 10_000);
    const events = await readLedgerEvents(node.bus);
    await sweepAfterRun(node.store, spec.storeDir, events);
    const usage = await node.store.usage();
    await writeLedgerJsonl(join(spec.runDir, 'ledger.jsonl'), events);
    const audit = auditEvents(events);
    const seconds = (Date.now() - t0) / 1000;
    // A step retrained after a rank crash is reported twice: the last report counts.
    const byStep = new Map<number, StepMetrics>();
    for (const m of metrics) byStep.set(m.step, m); // world rank 0 reports each step
    const losses = [...byStep.values()].sort((a, b) => a.step - b.step);
    const resumedFromStep = resuming ? Math.max(0, (losses[0]?.step ?? 1) - 1) : 0;
    const accepts = losses.filter((m) => m.acceptLength !== null);
    // The model's own count: real samples trained into the final weights (exactly once each:
    // the consumed samples). Reports may miss steps trained by an earlier process (--resume).
    const samples = Number(final.samples ?? losses.reduce((n, m) => n + m.samples, 0));
    const reported = losses.reduce((n, m) => n + m.samples, 0);
    const summary: RunSummary = {
      job: spec.job, runDir: spec.runDir, steps: Number(final.step ?? losses.at(-1)?.step ?? 0), samples, tokens: spec.chat ? losses.reduce((n, m) => n + m.tokens, 0) : samples * spec.seqLen, seconds,
      samplesPerSec: reported / seconds,
      firstLoss: losses[0]?.loss ?? null, lastLoss: losses.at(-1)?.loss ?? null, lossCurve: losses.map((m) => m.loss),
      acceptLengthInitial: null, acceptLength: accepts.at(-1)?.acceptLength ?? null,
      checkpoint: join(spec.runDir, 'checkpoint.safetensors'), audit,
      stepMsMean: losses.length ? losses.reduce((n, m) => n + m.stepMs, 0) / losses.length : null,
      trainSamplesPerSec: losses.length >= 2 && losses.at(-1)!.at > losses[0]!.at ? losses.slice(1).reduce((n, m) => n + m.samples, 0) / ((losses.at(-1)!.at - losses[0]!.at) / 1000) : null,
      backend: spec.backend ?? 'cpu', resumedFromStep, rankRestarts: [...node.restarts.values()].reduce((a, b) => a + b, 0), natsRestarts,
      ranksLost: lost.map((c) => c.rank), dpHistory: losses.map((m) => m.dp).filter((d, i, a) => i === 0 || a[i - 1] !== d),
      dataset: spec.chat && !spec.features ? readJson(join(spec.runDir, 'dataset-summary.json')) : null,
      features: spec.features ? readJson(join(spec.runDir, 'features-summary.json')) : null,
      input: isExternal(spec) ? inputOf(events) : null,
      storeAfter: { samples: usage.samples, bytes: usage.bytes, tempFiles: (await readdir(spec.storeDir).catch(() => [] as string[])).filter((f) => f.startsWith('.tmp')).length },
    };
    summary.acceptLengthInitial = await initialAcceptLength(spec);
    await writeFileMode(join(spec.runDir, 'summary.json'), JSON.stringify(summary, null, 2));
    finished = true;
    return summary;
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    await cleanup();
    // The samples go with a run that finished or that its user stopped (SIGINT, SIGTERM); a run
    // that failed keeps them with its ledger and checkpoints, for `--resume` (which would
    // otherwise find committed samples gone and dead-letter them).
    if (!o.keepStore && (finished || stoppedBySignal)) await removeStoreDir(spec.storeDir);
    // The embedded NATS store (the ledger) and rank checkpoints stay while the run can be
    // resumed; once the run finished, the ledger is exported (ledger.jsonl) and they go.
    if (finished) { await rm(join(spec.runDir, 'nats'), { recursive: true, force: true }); await rm(join(spec.runDir, 'ckpt'), { recursive: true, force: true }); }
    await rm(join(spec.runDir, 'run.json'), { force: true });
  }
}

/**
 * After a run that was resumed (or whose janitor lost announcements to a crash): frees the
 * files of samples the ledger says are consumed or dead-lettered, and removes temp files whose
 * writer process is gone. Every data file left after this is a sample the ledger still needs.
 */
async function sweepAfterRun(store: NodeAgent['store'], dir: string, events: Awaited<ReturnType<typeof readLedgerEvents>>): Promise<void> {
  const refs = new Map<string, SampleRef>();
  const consumed = new Set<string>(), dead = new Set<string>();
  for (const e of events) {
    if (e.type === 'put') refs.set(e.ref.sampleId, e.ref);
    else if (e.type === 'ack') consumed.add(e.sampleId);
    else if (e.type === 'dead') dead.add(e.sampleId);
  }
  for (const id of consumed) { const r = refs.get(id); if (r) await store.release(r).catch(() => false); }
  for (const id of dead) await store.abort(id, 'dead-lettered').catch(() => false);
  for (const f of await readdir(dir).catch(() => [] as string[])) {
    const m = /^\.tmp-(\d+)-/.exec(f);
    if (!m) continue;
    let alive = true;
    try { process.kill(Number(m[1]), 0); } catch { alive = false; }
    if (!alive) await rm(join(dir, f), { force: true });
  }
}

/** Removes the store directory; one that is a mount point (its own filesystem) is emptied instead. */
async function removeStoreDir(dir: string): Promise<void> {
  try {
    await rm(dir, { recursive: true, force: true });
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'EBUSY') throw e;
    for (const f of await readdir(dir).catch(() => [] as string[])) await rm(join(dir, f), { recursive: true, force: true });
  }
}

/**
 * A run process killed with SIGKILL cannot stop its nats-server; its ranks exit on their own
 * (IPC channel closed). Before resuming, stop that server if it still runs on this store.
 */
async function reapOrphanServer(runDir: string): Promise<void> {
  let pid: number | null = null;
  try { pid = (JSON.parse(readFileSync(join(runDir, 'run.json'), 'utf8')) as { natsPid?: number }).natsPid ?? null; } catch { return; }
  if (!pid) return;
  let cmd = '';
  try { cmd = readFileSync(`/proc/${pid}/cmdline`, 'utf8'); } catch { return; }
  if (!cmd.includes('nats-server')) return;
  log.warn('stopping the nats-server left behind by the killed run', { pid });
  try { process.kill(pid, 'SIGKILL'); } catch { return; }
  for (let i = 0; i < 50; i++) { try { process.kill(pid, 0); } catch { return; } await new Promise((r) => setTimeout(r, 100)); }
}

/** Each data-parallel index is a cell of tp·sp rank processes: the layout must split the model and the sequence. */
function checkLayout(spec: Pick<JobSpec, 'draft' | 'tp' | 'sp' | 'seqLen'>): void {
  const layoutError = shardConfigError(spec.draft, spec.tp) ?? (spec.seqLen % spec.sp !== 0 ? `the sequence has ${spec.seqLen} positions, which --sp ${spec.sp} does not divide` : null);
  if (layoutError) throw new InvalidArgumentError(`--tp ${spec.tp} --sp ${spec.sp}: ${layoutError}`);
}

/** Options of one kind of job given to the other are refused, not ignored. */
function checkTargetOptions(o: RunOpts): void {
  const flag = (k: string) => `--${k.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)}`;
  const hfOnly = ['maxLen', 'draftVocab', 'evalRows', 'evalMaxNew', 'onBadRow', 'regenerate', 'auxLayers', 'auxConvention', 'ttt', 'initFrom', 'features'] as const;
  const syntheticOnly = ['seqLen', 'promptLen'] as const;
  for (const k of o.target ? syntheticOnly : hfOnly) {
    if (o[k] !== undefined) throw new InvalidArgumentError(o.target ? `${flag(k)} is for the synthetic target; with --target use --max-len` : `${flag(k)} needs --target (a Hugging Face model)`);
  }
  if (o.rollout === 'external') {
    for (const k of ['steps', 'regenerate', 'featureDtype', 'features'] as const) {
      if (o[k] !== undefined) throw new InvalidArgumentError(`${flag(k)}: with --rollout external the producers decide what is trained and how (there is no rollout; use --samples to cap the job)`);
    }
    if (o.target && !o.dataset) throw new InvalidArgumentError('--rollout external --target needs --dataset: the draft vocabulary and the accept-length prompts come from its conversations');
  } else {
    for (const k of ['samples', 'producers'] as const) if (o[k] !== undefined) throw new InvalidArgumentError(`${flag(k)} needs --rollout external`);
  }
}

/** A run directory not holding an unfinished run (whose ledger a fresh run would mix with its own). */
function assertFreshRunDir(runDir: string, nats: string | undefined): void {
  if (!nats && existsSync(join(runDir, 'nats'))) throw new InvalidArgumentError(`${runDir} holds an unfinished run (its ledger is in ${join(runDir, 'nats')}): continue it with --resume ${runDir}, or remove the directory`);
}

/** An external job's producers and why its input closed, from the ledger's log. */
function inputOf(events: Awaited<ReturnType<typeof readLedgerEvents>>): RunSummary['input'] {
  const producers = new Set<string>();
  let closed: string | null = null;
  for (const e of events) {
    if (e.type === 'input') producers.add(e.producer);
    else if (e.type === 'close') closed = e.reason;
  }
  return { producers: [...producers], closed };
}

function featuresLine(f: Record<string, unknown>): string {
  return `features: ${String(f.layout)} in ${String(f.dir)}: ${String(f.trained)} files trained on, ${String(f.held)} held out, ${String(f.deadLettered)} dead-lettered${Number(f.deadLettered) > 0 ? ` (${String(f.deadLetterFile)})` : ''}`;
}

/** A GPU backend where none is usable fails here, by name, not in a rank after its restarts. */
function checkBackend(spec: JobSpec): void {
  if (spec.backend !== 'cuda') return;
  const info = cudaInfo();
  if (info.gpus.length === 0) throw new UnavailableError(`--backend cuda: no usable GPU on this machine (${info.error ?? 'none found'}); \`draftwire cuda\` says what this installation can do`);
}

function readJson(path: string): Record<string, unknown> | null {
  try { return JSON.parse(readFileSync(path, 'utf8')) as Record<string, unknown>; } catch { return null; }
}

/** Accept length of the untrained draft (the baseline the summary compares against). */
async function initialAcceptLength(spec: JobSpec): Promise<number> {
  const draft = DraftModel.create(spec.draft, await loadWeightsFile(spec.initWeights, spec.draft), { threads: spec.threads });
  const target = await openTarget(spec.target, spec.threads);
  try {
    return (await acceptLength(draft, target, evalPrompts(spec), { maxNew: evalMaxNew(spec) })).acceptLength;
  } finally { draft.close(); target.close(); }
}

async function waitFor(cond: () => Promise<boolean>, ms: number): Promise<boolean> {
  const end = Date.now() + ms;
  while (Date.now() < end) { if (await cond()) return true; await new Promise((r) => setTimeout(r, 100)); }
  return false;
}

interface Progress { update(m: StepMetrics, t0: number): void; setQueue(depth: number, inFlight: number, bytes: number, total: number): void; stop(): void }

/**
 * Progress in samples (the job's budget), since a job whose data-parallel width changes takes
 * more or fewer steps than --steps. A retrained step (after a crash) counts once. An external
 * job whose input is open has no budget yet: its total is what was committed so far.
 */
function progress(tty: boolean, budget: number | null): Progress {
  let total = budget ?? 0;
  const q = { depth: 0, inFlight: 0, bytes: 0 };
  const perStep = new Map<number, number>();
  let acc: number | null = null, done = 0;
  const fields = (m: StepMetrics, t0: number) => ({
    step: m.step, dp: m.dp, loss: m.loss.toFixed(4), accept: acc === null ? '-' : acc.toFixed(2), sps: (done / ((Date.now() - t0) / 1000)).toFixed(1),
    depth: q.depth, inflight: q.inFlight, mb: (q.bytes / 1048576).toFixed(1),
  });
  const record = (m: StepMetrics) => {
    if (m.acceptLength !== null) acc = m.acceptLength;
    done += m.samples - (perStep.get(m.step) ?? 0);
    perStep.set(m.step, m.samples);
  };
  if (!tty) {
    return {
      update(m, t0) {
        record(m);
        if (m.step === 1 || m.step % 10 === 0 || done >= total) {
          const f = fields(m, t0);
          log.info(`step ${m.step}: ${done}/${total} samples`, { dp: m.dp, loss: Number(f.loss), accept: acc, samplesPerSec: Number(f.sps), queueDepth: q.depth, storeMB: Number(f.mb) });
        }
      },
      setQueue(d, i, b, t) { q.depth = d; q.inFlight = i; q.bytes = b; if (budget === null) total = t; },
      stop() {},
    };
  }
  const bar = new cliProgress.SingleBar({
    format: '{value}/{total} samples |{bar}| step {step} (dp {dp}) | loss {loss} | accept {accept} | {sps} samples/s | queue {depth} (+{inflight} leased) | store {mb} MB | {eta_formatted}',
    stream: process.stderr, hideCursor: true,
  }, cliProgress.Presets.shades_classic);
  bar.start(total, 0, { step: 0, dp: '-', loss: '-', accept: '-', sps: '-', depth: 0, inflight: 0, mb: '0.0' });
  return {
    update(m, t0) { record(m); bar.update(done, fields(m, t0)); },
    setQueue(d, i, b, t) {
      q.depth = d; q.inFlight = i; q.bytes = b;
      if (budget === null && t !== total) { total = t; bar.setTotal(t); }
      bar.update({ depth: d, inflight: i, mb: (b / 1048576).toFixed(1) });
    },
    stop() { bar.stop(); },
  };
}
