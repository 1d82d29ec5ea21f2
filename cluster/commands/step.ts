// `draftwire step`: one draft training step on one batch, single process. Reads a config
// (JSON), weights and a batch (safetensors), runs the native step and writes loss, grad_norm,
// ploss, acc, grad.<name> (and new.<name> with --lr) to --out.
import { Command, InvalidArgumentError as OptionError } from 'commander';
import { NativeError } from '../../src/errors.ts';
import { createLogger } from '../../src/log.ts';
import {
  TRAINABLE, readDraftBatch, readDraftConfig, readDraftWeights, writeStepOutput,
  type DraftBatch, type DraftConfig, type DraftWeights,
} from '../../src/draft-io.ts';
import type { GlobalOptions } from '../cli.ts';

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
  // Sharded steps (--tp/--sp/--dp) add their group sizes here and branch in runStep.
}

export interface StepSummary {
  loss: number;
  gradNorm: number;
  ploss: number[];
  acc: number[];
  out: string;
}

function positive(name: string) {
  return (v: string): number => {
    const x = Number(v);
    if (v.trim() === '' || !Number.isFinite(x) || x <= 0) throw new OptionError(`${name} must be a positive number, got "${v}"`);
    return x;
  };
}
function nonNegative(name: string) {
  return (v: string): number => {
    const x = Number(v);
    if (v.trim() === '' || !Number.isFinite(x) || x < 0) throw new OptionError(`${name} must be a number ≥ 0, got "${v}"`);
    return x;
  };
}
function positiveInt(name: string) {
  return (v: string): number => {
    const x = Number(v);
    if (!/^\d+$/.test(v.trim()) || !Number.isSafeInteger(x) || x < 1) throw new OptionError(`${name} must be a positive integer, got "${v}"`);
    return x;
  };
}

export function command(): Command {
  return new Command('step')
    .summary('one draft training step on one batch (loss, metrics, gradients, optional AdamW update)')
    .description(
      'Runs one EAGLE3 draft training step (docs/model-math.md) on one batch in this process and ' +
      'writes the results to --out. Without --lr only the gradients are computed; with --lr the ' +
      'AdamW update (step 1, fresh moments) is applied and the updated weights are written too.',
    )
    .requiredOption('--config <file>', 'draft config JSON: vocab, draftVocab, hidden, heads, kvHeads, intermediate, ttt [, ropeTheta=10000, rmsEps=1e-6]')
    .requiredOption('--weights <file>', 'safetensors: f32 embed, target_head, trainable tensors; i32 d2t')
    .requiredOption('--batch <file>', 'safetensors: i32 ids [B,T], f32 aux [B,T,3H], f32 last [B,T,H], u8 mask [B,T]')
    .requiredOption('--out <file>', 'output safetensors file (overwritten)')
    .option('--lr <x>', 'learning rate: apply one AdamW step and write new.<name>', positive('--lr'))
    .option('--clip <x>', 'clip the global gradient norm to x before the update (0 = no clipping)', nonNegative('--clip'))
    .option('--weight-decay <x>', 'AdamW decoupled weight decay', nonNegative('--weight-decay'), 0)
    .option('--threads <n>', 'compute threads (default: the native default)', positiveInt('--threads'))
    // (sharding options --tp/--sp/--dp go here)
    .addHelpText('after', [
      '',
      'Output tensors (all f32): loss [1], grad_norm [1] (before clipping), ploss [K], acc [K],',
      'grad.<name> for every trainable tensor (unclipped), and with --lr new.<name>.',
      'Trainable: ' + TRAINABLE.join(', '),
      '',
      'Exit status: 0 ok, 2 bad input (the message names the key or tensor), 1 other failure.',
    ].join('\n'))
    .action(async (_opts: unknown, cmd: Command) => {
      const o = cmd.optsWithGlobals<GlobalOptions & {
        config: string; weights: string; batch: string; out: string;
        lr?: number; clip?: number; weightDecay: number; threads?: number;
      }>();
      const summary = await runStep({
        config: o.config, weights: o.weights, batch: o.batch, out: o.out,
        lr: o.lr ?? null, clip: o.clip ?? null, weightDecay: o.weightDecay, threads: o.threads ?? null, json: !!o.json,
      });
      if (o.json) process.stdout.write(JSON.stringify(summary) + '\n');
      else {
        const f = (a: number[]) => `[${a.map((x) => x.toPrecision(5)).join(', ')}]`;
        process.stdout.write(`loss ${summary.loss.toPrecision(6)}  grad_norm ${summary.gradNorm.toPrecision(6)}  ploss ${f(summary.ploss)}  acc ${f(summary.acc)}  -> ${summary.out}\n`);
      }
    });
}

type Native = typeof import('../../src/native.ts');

async function loadNative(): Promise<Native> {
  try {
    return await import('../../src/native.ts');
  } catch (e) {
    if (e instanceof NativeError) throw e;
    throw new NativeError(`native addon unavailable (build it with \`npm run build\`): ${(e as Error).message}`, { cause: e });
  }
}

/** Runs one step from files to a file; bad input throws InvalidArgumentError / DecodeError. */
export async function runStep(a: StepArgs): Promise<StepSummary> {
  const config: DraftConfig = await readDraftConfig(a.config);
  const weights: DraftWeights = await readDraftWeights(a.weights, config);
  const batch: DraftBatch = await readDraftBatch(a.batch, config);
  if (a.lr === null && (a.clip !== null || a.weightDecay !== 0)) log.warn('--clip and --weight-decay only apply to an update; without --lr they are ignored');
  log.debug('step inputs', { ...config, batch: batch.batch, seq: batch.seq, lr: a.lr, clip: a.clip, weightDecay: a.weightDecay });

  const native = await loadNative();
  const model = native.DraftModel.create(config, weights, a.threads !== null ? { threads: a.threads } : undefined);
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
