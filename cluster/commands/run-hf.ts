// The job spec of `draftwire run --target DIR --dataset FILE.jsonl`: the draft's shape from the
// target's config.json, the conversations prepared once (rendered with the target's chat
// template, tokenised, masked), the draft vocabulary counted over their supervised tokens and
// written into the run directory with the eval prompts of the held-out rows.
import { join, resolve } from 'node:path';
import { InvalidArgumentError } from '../../src/errors.ts';
import { readHfConfig, type AuxLayerSpec, type HfTargetConfig } from '../../src/hf/config.ts';
import { prepareChatData, type PreparedChat } from '../../src/job/chat-data.ts';
import { LIMITS, validateJobSpec, type JobSpec } from '../../src/job/spec.ts';
import { hfTargetSpec } from '../../src/job/target.ts';
import { importDraft } from '../../src/job/import-draft.ts';
import { makeDir, writeFileMode } from '../../src/files.ts';
import type { DraftConfig } from '../../src/native/addon.ts';

/** The options `run` takes for a Hugging Face target (cluster/commands/run.ts RunOpts has them all). */
export interface HfRunOpts {
  target?: string; dataset?: string; maxLen?: number; draftVocab?: number; evalRows?: number; onBadRow?: 'skip' | 'fail';
  regenerate?: boolean; auxLayers?: number[]; auxConvention?: 'output' | 'input'; ttt?: number; evalMaxNew?: number;
  /** Absent: one pass over the training rows. */
  steps?: number;
  /** An EAGLE3 draft directory to start from (its weights and vocabulary). */
  initFrom?: string;
}

/** EAGLE3's default draft vocabulary (SpecForge, SGLang), or the target's when smaller. */
export const DEFAULT_DRAFT_VOCAB = 32_000;

/** The draft's shape from the target's (one decoder layer of the target's sizes). */
export function draftConfigOf(c: HfTargetConfig, o: { draftVocab?: number; ttt: number }): DraftConfig {
  const Vd = Math.min(o.draftVocab ?? DEFAULT_DRAFT_VOCAB, c.vocab);
  return {
    vocab: c.vocab, draftVocab: Vd, hidden: c.hidden, heads: c.heads, kvHeads: c.kvHeads, intermediate: c.intermediate, ttt: o.ttt,
    ropeTheta: c.ropeTheta, rmsEps: c.rmsEps,
    ...(c.headDim * c.heads !== c.hidden ? { headDim: c.headDim } : {}),
    ...(c.ropeScaling ? { ropeScaling: c.ropeScaling } : {}),
  };
}

function definedOnly<T extends object>(o: T): Partial<T> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<T>;
}

/** A comma list of three layer ids: "1,13,24". */
export function auxLayerList(v: string): number[] {
  const ids = v.split(',').map((x) => x.trim());
  if (ids.length !== 3 || !ids.every((x) => /^\d+$/.test(x))) throw new InvalidArgumentError(`--aux-layers must be three comma-separated layer ids (e.g. 1,13,24), got "${v}"`);
  return ids.map(Number);
}

/**
 * Reads the target's config, prepares the dataset into runDir (vocab.safetensors,
 * eval-prompts.json, dataset-summary.json), and returns the job spec. `base` is the spec the
 * synthetic path would build from the same options (job id, dirs, optimiser, layout, timers).
 */
export async function buildHfSpec(opts: HfRunOpts, base: JobSpec, checkLayout: (s: Pick<JobSpec, 'draft' | 'tp' | 'sp' | 'seqLen'>) => void = () => {}): Promise<{ spec: JobSpec; prepared: PreparedChat }> {
  const o = { maxLen: 2048, evalRows: 8, onBadRow: 'skip' as const, auxConvention: 'output' as const, ttt: 7, evalMaxNew: 64, ...definedOnly(opts) };
  if (!o.target) throw new InvalidArgumentError('--target is required');
  if (!o.dataset) throw new InvalidArgumentError('--target needs --dataset FILE.jsonl (conversations to train on)');
  const dir = resolve(o.target);
  const aux: AuxLayerSpec = { convention: o.auxConvention, ...(o.auxLayers ? { ids: o.auxLayers } : {}) };
  const config = await readHfConfig(dir, aux);
  if (o.maxLen > LIMITS.seqLen) throw new InvalidArgumentError(`--max-len must be at most ${LIMITS.seqLen}, got ${o.maxLen}`);
  if (o.evalMaxNew >= o.maxLen) throw new InvalidArgumentError(`--eval-max-new (${o.evalMaxNew}) must be below --max-len (${o.maxLen})`);
  if (base.batch * o.maxLen > LIMITS.stepTokens) throw new InvalidArgumentError(`--batch ${base.batch} --max-len ${o.maxLen}: ${base.batch * o.maxLen} tokens per step; at most ${LIMITS.stepTokens}`);
  if (o.maxLen > config.maxPositionEmbeddings) throw new InvalidArgumentError(`--max-len ${o.maxLen} is beyond the target's max_position_embeddings (${config.maxPositionEmbeddings})`);
  let draft = draftConfigOf(config, o);
  const imported = o.initFrom ? await importDraft(resolve(o.initFrom), draft) : null;
  if (imported) {
    if (opts.draftVocab !== undefined && opts.draftVocab !== imported.draftVocab) throw new InvalidArgumentError(`--draft-vocab ${opts.draftVocab}: the draft of --init-from has ${imported.draftVocab} (its vocabulary is kept)`);
    draft = { ...draft, draftVocab: imported.draftVocab };
  }
  checkLayout({ draft, tp: base.tp, sp: base.sp, seqLen: o.maxLen }); // before the dataset is prepared (minutes for a big one)
  await makeDir(base.runDir);
  const prepared = await prepareChatData({
    targetDir: dir, dataset: resolve(o.dataset), maxLen: o.maxLen, onBadRow: o.onBadRow, evalRows: o.evalRows, regenerate: o.regenerate ?? false,
    draftVocab: draft.draftVocab, vocab: config.vocab, runDir: base.runDir, evalMaxNew: o.evalMaxNew, evalPrompts: base.evalPrompts,
    temperature: base.temperature, seed: base.seed, threads: base.threads, ...(imported ? { vocabOf: imported.vocab } : {}),
  });
  await writeFileMode(join(base.runDir, 'dataset-summary.json'), JSON.stringify({ ...prepared.summary, evalOn: prepared.evalOn, evalPrompts: prepared.evalPrompts }, null, 2));
  // One pass; the last step is topped up with the first rows again (as `<id>.e1`).
  const steps = o.steps ?? Math.ceil(prepared.chat.rows / (base.batch * base.dp));
  const spec = validateJobSpec({
    ...base, draft, target: await hfTargetSpec(dir, config), chat: prepared.chat, dataset: null, ...(o.initFrom ? { initFrom: resolve(o.initFrom) } : {}),
    seqLen: o.maxLen, promptLen: 1, steps,
  });
  return { spec, prepared };
}
