// `draftwire export --run DIR --out DIR [--format sglang|speculators]`: a run's draft in the
// directory layout SGLang and vLLM load as an EAGLE3 draft, or in vLLM's speculators layout
// (src/job/export.ts), checked before and after it is written.
import { resolve } from 'node:path';
import { Command, Option } from 'commander';
import { DEFAULT_SPECULATIVE_TOKENS, EXPORT_FORMATS, exportDraft, type ExportDtype, type ExportFormat } from '../../src/job/export.ts';
import type { GlobalOptions } from '../options.ts';
import { intInRange, nonNegativeInt } from '../options.ts';

const SERVE = `Serve it:
  python -m sglang.launch_server --model-path TARGET --speculative-algorithm EAGLE3 --speculative-draft-model-path OUT --speculative-num-steps 3 --speculative-eagle-topk 1 --speculative-num-draft-tokens 4
  vllm serve TARGET --speculative-config '{"method": "eagle3", "model": "OUT", "num_speculative_tokens": 3}'
  vllm serve OUT    (--format speculators: the target and num_speculative_tokens come from its config.json)`;

export function command(): Command {
  return new Command('export')
    .summary('write a run\'s draft as the EAGLE3 directory SGLang and vLLM load')
    .description(`Writes <out>/config.json and <out>/model.safetensors from the run's final checkpoint (or --step N of its rank checkpoints). --format sglang (default): LlamaForCausalLMEagle3 with fc, midlayer.*, norm, lm_head, d2t offsets, t2d. --format speculators: vLLM's speculators layout (speculators_model_type eagle3, transformer_layer_config, speculators_config naming the target) with the layer as layers.0.*. The draft is checked first (tensors, shapes, vocabulary map, finite values) and the files are read back and compared after.\n\n${SERVE}`)
    .requiredOption('--run <dir>', 'the run directory (runs/<job>)')
    .requiredOption('--out <dir>', 'where the draft directory goes')
    .addOption(new Option('--format <format>', 'directory layout').choices(EXPORT_FORMATS).default('sglang'))
    .addOption(new Option('--dtype <dtype>', 'dtype of the weights').choices(['bf16', 'f16', 'f32']).default('bf16'))
    .option('--speculative-tokens <n>', `--format speculators: the proposal length vLLM serves it with (default ${DEFAULT_SPECULATIVE_TOKENS})`, intInRange('--speculative-tokens', 1, 64))
    .option('--step <n>', 'a rank checkpoint of this step (an unfinished run\'s) instead of the final one', nonNegativeInt('--step'))
    .action(async (_o: unknown, cmd: Command) => {
      const o = cmd.optsWithGlobals<GlobalOptions & { run: string; out: string; format: ExportFormat; dtype: ExportDtype; step?: number; speculativeTokens?: number }>();
      const s = await exportDraft({
        run: resolve(o.run), out: resolve(o.out), format: o.format, dtype: o.dtype,
        ...(o.step !== undefined ? { step: o.step } : {}), ...(o.speculativeTokens !== undefined ? { speculativeTokens: o.speculativeTokens } : {}),
      });
      if (o.json) process.stdout.write(JSON.stringify(s) + '\n');
      else process.stdout.write(`exported step ${s.step} of ${s.checkpoint} to ${s.out} (${s.format}, ${s.dtype}, ${s.tensors} tensors, ${(s.bytes / 1048576).toFixed(1)} MiB; draft vocabulary ${s.draftVocab} of ${s.vocab})\n`);
    });
}
