// `draftwire step`: one draft training step on one batch. Reads a config (JSON), weights and
// a batch (safetensors), runs the native step and writes loss, grad_norm, ploss, acc,
// grad.<name> (and new.<name> with --lr) to --out.
//
// Without --tp/--sp/--dp the step runs in this process. With any of them it is sharded
// (DESIGN.md §3): a local nats-server (random port, temp store; with a secret set, only its
// derived credentials are admitted and the ranks seal everything) serves the rendezvous, T·S·D
// rank processes (cluster/step-rank.ts) each read their slice of the batch, join a Gloo world
// and run one sharded step; rank 0 gathers full-shape gradients and new weights and writes
// the same output file. When a rank fails, the others are given the collective timeout to
// fail on their own (a dead peer's closed sockets fail them at once), then stopped; the error
// names every rank's outcome. The nats-server and every rank are stopped and reaped at the end.
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { Command } from 'commander';
import { CollectiveError, DecodeError, InvalidArgumentError, NativeError } from '../../src/errors.ts';
import { DraftModel, shardConfigError } from '../../src/native/addon.ts';
import { createLogger } from '../../src/log.ts';
import {
  TRAINABLE, batchSplitError, readDraftBatch, readDraftBatchShape, readDraftConfig, readDraftWeights, writeStepOutput,
  type DraftBatch, type DraftConfig, type DraftWeights,
} from '../../src/job/draft-io.ts';
import { startNatsServer } from '../nats-launcher.ts';
import { entryPoint } from '../entry.ts';
import type { StepRankSpec } from '../step-rank.ts';
import type { GlobalOptions } from '../options.ts';
import { intInRange, nonNegative, positive } from '../options.ts';
import { LIMITS } from '../../src/job/spec.ts';
import { AuthPolicy } from '../../src/wire/auth.ts';

const log = createLogger('step');

export interface StepArgs {
  config: string;
  weights: string;
  batch: string;
  out: string;
  lr: number | null;
  clip: number | null;
  weightDecay: number;
  threads: number | null;
  json: boolean;
  /** Sharded step (any of --tp/--sp/--dp given): group sizes, else null. */
  shard?: { tp: number; sp: number; dp: number; commTimeoutMs: number } | null;
}

export interface StepSummary {
  loss: number;
  gradNorm: number;
  ploss: number[];
  acc: number[];
  out: string;
  /** Sharded: what every rank reported (each the global value; all identical). */
  ranks?: { rank: number; loss: number; gradNorm: number }[];
}


export function command(): Command {
  return new Command('step')
    .summary('one draft training step on one batch (loss, metrics, gradients, optional AdamW update)')
    .description(
      'Runs one EAGLE3 draft training step (docs/model-math.md) on one batch in this process, or ' +
      'sharded over tp·sp·dp local rank processes with --tp/--sp/--dp, and writes the results to ' +
      '--out. Without --lr only the gradients are computed; with --lr the AdamW update (step 1, ' +
      'fresh moments) is applied and the updated weights are written too.',
    )
    .requiredOption('--config <file>', 'draft config JSON: vocab, draftVocab, hidden, heads, kvHeads, intermediate, ttt [, ropeTheta=10000, rmsEps=1e-6]')
    .requiredOption('--weights <file>', 'safetensors: f32 embed, target_head, trainable tensors; i32 d2t')
    .requiredOption('--batch <file>', 'safetensors: i32 ids [B,T], f32 aux [B,T,3H], f32 last [B,T,H], u8 mask [B,T]')
    .requiredOption('--out <file>', 'output safetensors file (overwritten)')
    .option('--lr <x>', 'learning rate: apply one AdamW step and write new.<name>', positive('--lr'))
    .option('--clip <x>', 'clip the global gradient norm to x before the update (0 = no clipping)', nonNegative('--clip'))
    .option('--weight-decay <x>', 'AdamW decoupled weight decay', nonNegative('--weight-decay'), 0)
    .option('--threads <n>', `compute threads (default: the native default; per rank when sharded; at most ${LIMITS.threads})`, intInRange('--threads', 1, LIMITS.threads))
    .option('--tp <n>', `tensor-parallel ranks: split heads, kv heads, MLP width and draft vocab (at most ${LIMITS.tp})`, intInRange('--tp', 1, LIMITS.tp))
    .option('--sp <n>', `sequence-parallel ranks: split the sequence (T) (at most ${LIMITS.sp})`, intInRange('--sp', 1, LIMITS.sp))
    .option('--dp <n>', `data-parallel ranks: split the batch (B) (at most ${LIMITS.dp}; tp·sp·dp at most ${LIMITS.worldRanks})`, intInRange('--dp', 1, LIMITS.dp))
    .option('--comm-timeout <ms>', 'sharded: bound on every collective wait (a dead rank fails the others at once; at most a day)', intInRange('--comm-timeout', 1, LIMITS.ms), 30_000)
    .addHelpText('after', [
      '',
      'Output tensors (all f32): loss [1], grad_norm [1] (before clipping), ploss [K], acc [K],',
      'grad.<name> for every trainable tensor (unclipped), and with --lr new.<name>.',
      'Trainable: ' + TRAINABLE.join(', '),
      '',
      'Sharded (any of --tp/--sp/--dp, each default 1): tp·sp·dp local rank processes, rendezvous',
      'through a private nats-server (with DRAFTWIRE_SECRET / DRAFTWIRE_SECRET_FILE set it admits',
      'only the derived credentials and every message and KV value is sealed, as in a job); the',
      'output file is the same (full shapes). Constraints:',
      'kvHeads, intermediate and draftVocab divisible by tp; B by dp; T by sp.',
      '',
      'Exit status: 0 ok, 2 bad input (the message names the key or tensor), 1 other failure.',
    ].join('\n'))
    .action(async (_opts: unknown, cmd: Command) => {
      const o = cmd.optsWithGlobals<GlobalOptions & {
        config: string; weights: string; batch: string; out: string;
        lr?: number; clip?: number; weightDecay: number; threads?: number;
        tp?: number; sp?: number; dp?: number; commTimeout: number;
      }>();
      const sharded = o.tp !== undefined || o.sp !== undefined || o.dp !== undefined;
      const summary = await runStep({
        config: o.config, weights: o.weights, batch: o.batch, out: o.out,
        lr: o.lr ?? null, clip: o.clip ?? null, weightDecay: o.weightDecay, threads: o.threads ?? null, json: !!o.json,
        shard: sharded ? { tp: o.tp ?? 1, sp: o.sp ?? 1, dp: o.dp ?? 1, commTimeoutMs: o.commTimeout } : null,
      });
      if (o.json) process.stdout.write(JSON.stringify(summary) + '\n');
      else {
        const f = (a: number[]) => `[${a.map((x) => x.toPrecision(5)).join(', ')}]`;
        process.stdout.write(`loss ${summary.loss.toPrecision(6)}  grad_norm ${summary.gradNorm.toPrecision(6)}  ploss ${f(summary.ploss)}  acc ${f(summary.acc)}  -> ${summary.out}\n`);
      }
    });
}

/** Runs one step from files to a file; bad input throws InvalidArgumentError / DecodeError. */
export async function runStep(a: StepArgs): Promise<StepSummary> {
  if (a.shard) return runShardedStep(a, a.shard);
  const config: DraftConfig = await readDraftConfig(a.config);
  const weights: DraftWeights = await readDraftWeights(a.weights, config);
  const batch: DraftBatch = await readDraftBatch(a.batch, config);
  if (a.lr === null && (a.clip !== null || a.weightDecay !== 0)) log.warn('--clip and --weight-decay only apply to an update; without --lr they are ignored');
  log.debug('step inputs', { ...config, batch: batch.batch, seq: batch.seq, lr: a.lr, clip: a.clip, weightDecay: a.weightDecay });

  const model = DraftModel.create(config, weights, a.threads !== null ? { threads: a.threads } : undefined);
  try {
    const r = await model.step(batch, { lr: a.lr, clip: a.clip, weightDecay: a.weightDecay, returnGrads: true });
    if (!r.grads) throw new NativeError('native step returned no gradients although they were requested');
    let updated: Record<string, Float32Array> | null = null;
    if (a.lr !== null) {
      const all = model.weights();
      updated = {};
      for (const name of TRAINABLE) updated[name] = all[name];
    }
    await writeStepOutput(a.out, config, { loss: r.loss, gradNorm: r.gradNorm, ploss: r.ploss, acc: r.acc, grads: r.grads, updated });
    log.debug('step done', { loss: r.loss, gradNorm: r.gradNorm, out: a.out });
    return { loss: r.loss, gradNorm: r.gradNorm, ploss: Array.from(r.ploss), acc: Array.from(r.acc), out: a.out };
  } finally {
    model.close();
  }
}

// ------------------------------------------------------------------------------------------
// Sharded: one process per rank

const STEP_RANK = entryPoint('step-rank');

interface RankOutcome {
  rank: number;
  code: number | null;
  signal: NodeJS.Signals | null;
  /** The rank's final JSON line ({ev: 'done' | 'error', ...}), if it wrote one. */
  result: Record<string, unknown> | null;
  stderr: string;
}

/** Runs the sharded step (see the top of this file); resolves with rank 0's summary. */
export async function runShardedStep(a: StepArgs, sh: { tp: number; sp: number; dp: number; commTimeoutMs: number }): Promise<StepSummary> {
  const config = await readDraftConfig(a.config);
  const cfgWhy = shardConfigError(config, sh.tp);
  if (cfgWhy) throw new InvalidArgumentError(`--tp ${sh.tp}: ${cfgWhy}`);
  const { B, T } = await readDraftBatchShape(a.batch);
  const splitWhy = batchSplitError(B, T, sh.sp, sh.dp);
  if (splitWhy) throw new InvalidArgumentError(`--sp ${sh.sp} --dp ${sh.dp}: ${splitWhy}`);
  if (a.lr === null && (a.clip !== null || a.weightDecay !== 0)) log.warn('--clip and --weight-decay only apply to an update; without --lr they are ignored');
  const n = sh.tp * sh.sp * sh.dp;
  if (n > LIMITS.worldRanks) throw new InvalidArgumentError(`--tp ${sh.tp} --sp ${sh.sp} --dp ${sh.dp}: ${n} rank processes; at most ${LIMITS.worldRanks}`);
  // The rendezvous keys are as sensitive as a job's: with a secret the server admits only its
  // derived credentials, and the ranks (same environment) seal their messages and KV values.
  const auth = AuthPolicy.fromEnv();
  const t0 = performance.now();
  const nats = await startNatsServer({ port: -1, jetstream: true, maxMemBytes: 256 * 1024 * 1024, maxFileBytes: 256 * 1024 * 1024, credentials: auth.natsCredentials() });
  log.debug('sharded step: nats-server up', { url: nats.url, auth: auth.enabled, ranks: n, ...sh });
  let outcomes: RankOutcome[];
  try {
    const base = {
      config: a.config, weights: a.weights, batch: a.batch, out: a.out, lr: a.lr, clip: a.clip, weightDecay: a.weightDecay,
      threads: a.threads, tp: sh.tp, sp: sh.sp, dp: sh.dp, nats: nats.url, bucket: 'dw_step', job: 'step',
      prefix: `step-${randomBytes(6).toString('hex')}`, timeoutMs: sh.commTimeoutMs,
    };
    outcomes = await superviseRanks(Array.from({ length: n }, (_, rank) => ({ ...base, rank })), sh.commTimeoutMs + 5000);
  } finally {
    await nats.stop();
  }
  const failed = outcomes.filter((o) => o.code !== 0 || o.result?.ev !== 'done');
  if (failed.length > 0) throw shardedFailure(outcomes);
  const r0 = outcomes[0]!.result!;
  const ranks = outcomes.map((o) => ({ rank: o.rank, loss: o.result!.loss as number, gradNorm: o.result!.gradNorm as number }));
  // every rank reports the all-reduced values: any difference is a bug, not rounding
  const odd = ranks.find((r) => r.loss !== ranks[0]!.loss || r.gradNorm !== ranks[0]!.gradNorm);
  if (odd) throw new NativeError(`sharded step: rank ${odd.rank} reports loss ${odd.loss} / grad norm ${odd.gradNorm}, rank 0 ${ranks[0]!.loss} / ${ranks[0]!.gradNorm}`);
  log.debug('sharded step done', { ms: Math.round(performance.now() - t0), loss: r0.loss });
  return { loss: r0.loss as number, gradNorm: r0.gradNorm as number, ploss: r0.ploss as number[], acc: r0.acc as number[], out: a.out, ranks };
}

function outcomeText(o: RankOutcome): string {
  if (o.result?.ev === 'error') return `rank ${o.rank}: ${String(o.result.code)}: ${String(o.result.message)}`;
  if (o.signal) return `rank ${o.rank} was killed (${o.signal})`;
  if (o.code !== 0) {
    const tail = o.stderr.trim().split('\n').slice(-1)[0] ?? '';
    return `rank ${o.rank} exited with code ${o.code}${tail ? ` (${tail})` : ''}`;
  }
  return `rank ${o.rank}: ok`;
}

const BAD_INPUT = new Set(['INVALID_ARGUMENT', 'DECODE']);
const codeOf = (o: RankOutcome) => (o.result?.ev === 'error' ? String(o.result.code) : null);

/**
 * One error for the whole world: bad input (exit 2) when a rank rejected its input (the others
 * were stopped), else COLLECTIVE when a rank died or a collective failed, else NATIVE.
 */
function shardedFailure(outcomes: RankOutcome[]): Error {
  const failed = outcomes.filter((o) => o.code !== 0 || o.result?.ev !== 'done');
  const bad = failed.find((o) => BAD_INPUT.has(codeOf(o) ?? ''));
  if (bad) {
    const msg = `${String(bad.result!.message)} (rank ${bad.rank}; the other ranks were stopped)`;
    return codeOf(bad) === 'DECODE' ? new DecodeError(msg) : new InvalidArgumentError(msg);
  }
  const codes = failed.map(codeOf);
  const msg = `sharded step failed (${failed.length} of ${outcomes.length} ranks): ${failed.map(outcomeText).join('; ')}`;
  if (codes.some((c) => c === null) || codes.some((c) => c === 'COLLECTIVE')) return new CollectiveError(msg);
  return new NativeError(msg);
}

/**
 * Spawns one process per spec and waits for all of them. After the first failure the others
 * get `graceMs` to exit by themselves (so they can report how the collectives failed), then
 * SIGTERM, then SIGKILL after 2 s more; a rank that rejected its input (it never joins) stops
 * the others at once. SIGINT / SIGTERM of this process stop every rank (and are re-raised
 * once they are gone).
 */
async function superviseRanks(specs: StepRankSpec[], graceMs: number): Promise<RankOutcome[]> {
  const procs: ChildProcess[] = [];
  const outcomes: Promise<RankOutcome>[] = specs.map((spec) => {
    const proc = spawn(process.execPath, [...STEP_RANK.execArgv, STEP_RANK.path, JSON.stringify(spec)], {
      stdio: ['ignore', 'pipe', 'pipe', 'ipc'], env: process.env,
    });
    procs.push(proc);
    let stdout = '', stderr = '';
    proc.stdout!.on('data', (d: Buffer) => { stdout += d.toString(); });
    proc.stderr!.on('data', (d: Buffer) => {
      const text = d.toString();
      stderr += text;
      if (stderr.length > 1 << 16) stderr = stderr.slice(-(1 << 15));
      for (const line of text.split('\n')) if (line.trim()) process.stderr.write(`[rank ${spec.rank}] ${line}\n`);
    });
    return new Promise<RankOutcome>((resolve) => {
      proc.on('error', (e) => { stderr += `spawn failed: ${e.message}\n`; });
      proc.on('close', (code, signal) => {
        let result: Record<string, unknown> | null = null;
        for (const line of stdout.split('\n')) {
          if (!line.startsWith('{')) continue;
          try { result = JSON.parse(line) as Record<string, unknown>; } catch { /* not ours */ }
        }
        resolve({ rank: spec.rank, code, signal, result, stderr });
      });
    });
  });
  const alive = () => procs.filter((p) => p.exitCode === null && p.signalCode === null);
  const stopAll = (sig: NodeJS.Signals) => { for (const p of alive()) p.kill(sig); };
  let interrupted: NodeJS.Signals | null = null;
  const onSignal = (sig: NodeJS.Signals) => { interrupted = sig; stopAll('SIGTERM'); };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  const timers: NodeJS.Timeout[] = [];
  try {
    let firstFailure = false;
    for (const o of outcomes) {
      void o.then((r) => {
        if (r.code === 0 || firstFailure) return;
        firstFailure = true;
        const wait = BAD_INPUT.has(codeOf(r) ?? '') ? 0 : graceMs;
        log.debug('a rank failed; stopping the others', { rank: r.rank, code: r.code, signal: r.signal, afterMs: wait });
        timers.push(setTimeout(() => {
          stopAll('SIGTERM');
          timers.push(setTimeout(() => stopAll('SIGKILL'), 2000));
        }, wait));
      });
    }
    return await Promise.all(outcomes);
  } finally {
    for (const t of timers) clearTimeout(t);
    process.removeListener('SIGINT', onSignal);
    process.removeListener('SIGTERM', onSignal);
    if (interrupted) {
      const sig: NodeJS.Signals = interrupted;
      setImmediate(() => process.kill(process.pid, sig));
    }
  }
}
