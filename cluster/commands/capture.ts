// `draftwire capture --target DIR --dataset FILE.jsonl --out DIR`: the target's hidden states
// for every conversation of a dataset, one safetensors file per row (src/job/capture.ts), for
// offline training elsewhere or to check a capture against another implementation.
import { resolve } from 'node:path';
import { Command, Option } from 'commander';
import cliProgress from 'cli-progress';
import { capture } from '../../src/job/capture.ts';
import { LIMITS } from '../../src/job/spec.ts';
import type { GlobalOptions } from '../options.ts';
import { intInRange, positiveInt } from '../options.ts';
import { auxLayerList, DEFAULT_DRAFT_VOCAB } from './run-hf.ts';

interface CaptureOpts extends GlobalOptions {
  target: string; dataset: string; out: string; dtype: 'bf16' | 'f32'; draftVocab: number; maxLen: number;
  onBadRow: 'skip' | 'fail'; threads: number; auxLayers?: number[]; auxConvention: 'output' | 'input'; progress: boolean;
}

export function command(): Command {
  return new Command('capture')
    .summary('write the target\'s hidden states of every conversation of a dataset (offline features)')
    .description('Renders every conversation of --dataset with the target\'s chat template, runs the target over it and writes <out>/<sample id>.safetensors with input_ids (I64 [T]), loss_mask (U8 [T]), aux_hidden_state ([T, 3H]: the three aux layers, low to high) and hidden_state ([T, H], after the final norm), plus <out>/vocab.safetensors (d2t I64 offsets, t2d BOOL) and <out>/capture.json.\n\nExample: draftwire capture --target ./Llama-3.2-1B-Instruct --dataset chats.jsonl --out features/')
    .requiredOption('--target <dir>', 'a Hugging Face model directory (Llama, Qwen2, Qwen3)')
    .requiredOption('--dataset <file>', 'conversations, JSONL (ShareGPT, OpenAI/UltraChat or SpecForge form)')
    .requiredOption('--out <dir>', 'where the files go')
    .addOption(new Option('--dtype <dtype>', 'dtype of the hidden states').choices(['bf16', 'f32']).default('bf16'))
    .option('--draft-vocab <n>', 'draft vocabulary size (at most the target\'s)', positiveInt('--draft-vocab'), DEFAULT_DRAFT_VOCAB)
    .option('--max-len <n>', `tokens per conversation at most (longer ones are truncated; at most ${LIMITS.seqLen})`, intInRange('--max-len', 2, LIMITS.seqLen), 2048)
    .addOption(new Option('--on-bad-row <policy>', 'a malformed row is reported and skipped, or stops the capture').choices(['skip', 'fail']).default('skip'))
    .option('--aux-layers <a,b,c>', 'the three layers EAGLE3 taps (default 1, L/2-1, L-4 in the output convention)', auxLayerList)
    .addOption(new Option('--aux-convention <c>', 'what --aux-layers count: "output" of decoder layer i or "input" of layer j').choices(['output', 'input']).default('output'))
    .option('--threads <n>', `BLAS threads (at most ${LIMITS.threads})`, intInRange('--threads', 1, LIMITS.threads), 1)
    .option('--no-progress', 'no progress bar')
    .action(async (_o: unknown, cmd: Command) => {
      const o = cmd.optsWithGlobals<CaptureOpts>();
      const tty = o.progress && !o.json && process.stderr.isTTY;
      const bar = tty ? new cliProgress.SingleBar({ format: '{value}/{total} rows |{bar}| {tokens} tokens | {eta_formatted}', stream: process.stderr }, cliProgress.Presets.shades_classic) : null;
      let started = false;
      const summary = await capture({
        target: resolve(o.target), dataset: resolve(o.dataset), out: resolve(o.out), dtype: o.dtype, draftVocab: o.draftVocab, maxLen: o.maxLen,
        onBadRow: o.onBadRow, threads: o.threads, ...(o.auxLayers ? { auxLayers: { convention: o.auxConvention, ids: o.auxLayers } } : { auxLayers: { convention: o.auxConvention } }),
        onRow: (done, total, tokens) => {
          if (!bar) return;
          if (!started) { bar.start(total, 0, { tokens: 0 }); started = true; }
          bar.update(done, { tokens });
        },
      });
      bar?.stop();
      if (o.json) process.stdout.write(JSON.stringify(summary) + '\n');
      else {
        const d = summary.dataset;
        process.stdout.write([
          `captured ${summary.rows} conversations, ${summary.tokens} tokens in ${summary.seconds.toFixed(1)} s (${summary.tokensPerSec.toFixed(0)} tokens/s) into ${summary.out}`,
          `skipped: ${d.skippedBad} bad rows, ${d.skippedNoSupervised} without a supervised token; truncated: ${d.truncated}`,
          `aux layers (output of decoder layer): ${summary.auxLayers.join(', ')}; draft vocabulary ${summary.draftVocab}: ${summary.vocabFile}`,
        ].join('\n') + '\n');
      }
    });
}
