// `draftwire export --run DIR --out DIR`: a run's draft in the directory layout SGLang and
// vLLM load as an EAGLE3 draft (src/job/export.ts), checked before and after it is written.
import { resolve } from 'node:path';
import { Command, Option } from 'commander';
import { exportDraft, type ExportDtype } from '../../src/job/export.ts';
import type { GlobalOptions } from '../options.ts';
import { nonNegativeInt } from '../options.ts';

export function command(): Command {
  return new Command('export')
    .summary('write a run\'s draft as the EAGLE3 directory SGLang and vLLM load')
    .description('Writes <out>/config.json (LlamaForCausalLMEagle3) and <out>/model.safetensors (fc, midlayer.*, norm, lm_head, d2t offsets, t2d) from the run\'s final checkpoint (or --step N of its rank checkpoints). The draft is checked first (tensors, shapes, vocabulary map, finite values) and the files are read back and compared after.\n\nServe it:\n  python -m sglang.launch_server --model-path TARGET --speculative-algorithm EAGLE3 --speculative-draft-model-path OUT --speculative-num-steps 3 --speculative-eagle-topk 1 --speculative-num-draft-tokens 4\n  vllm serve TARGET --speculative-config \'{"method": "eagle3", "model": "OUT", "num_speculative_tokens": 3}\'')
    .requiredOption('--run <dir>', 'the run directory (runs/<job>)')
    .requiredOption('--out <dir>', 'where the draft directory goes')
    .addOption(new Option('--dtype <dtype>', 'dtype of the weights').choices(['bf16', 'f16', 'f32']).default('bf16'))
    .option('--step <n>', 'a rank checkpoint of this step (an unfinished run\'s) instead of the final one', nonNegativeInt('--step'))
    .action(async (_o: unknown, cmd: Command) => {
      const o = cmd.optsWithGlobals<GlobalOptions & { run: string; out: string; dtype: ExportDtype; step?: number }>();
      const s = await exportDraft({ run: resolve(o.run), out: resolve(o.out), dtype: o.dtype, ...(o.step !== undefined ? { step: o.step } : {}) });
      if (o.json) process.stdout.write(JSON.stringify(s) + '\n');
      else process.stdout.write(`exported step ${s.step} of ${s.checkpoint} to ${s.out} (${s.dtype}, ${s.tensors} tensors, ${(s.bytes / 1048576).toFixed(1)} MiB; draft vocabulary ${s.draftVocab} of ${s.vocab})\n`);
    });
}
