// The job spec of `draftwire run --target DIR --features DIR`: a draft shaped after the target
// (its config.json), trained from offline features instead of the target's forward pass. The
// directory's layout (a draftwire capture, or vLLM speculators' hs_<i>.safetensors) is detected
// and said in the log and the summary; its files are checked and prepared into the run
// directory once (src/job/features-data.ts) as a chat job's dataset is. The target's weights are
// still read: its embedding and head are the draft's frozen ones, a speculators file's last
// slot goes through its final norm, and the accept length decodes against it.
import { join, resolve } from 'node:path';
import { InvalidArgumentError } from '../../src/errors.ts';
import { readHfConfig, type AuxLayerSpec } from '../../src/hf/config.ts';
import { captureAuxLayers, captureVocab, featuresLayout, prepareFeatures, type PreparedFeatures } from '../../src/job/features-data.ts';
import { importDraft } from '../../src/job/import-draft.ts';
import { LIMITS, validateJobSpec, type JobSpec } from '../../src/job/spec.ts';
import { hfTargetSpec } from '../../src/job/target.ts';
import { createLogger } from '../../src/log.ts';
import { makeDir } from '../../src/files.ts';
import { draftConfigOf, type HfRunOpts } from './run-hf.ts';

const log = createLogger('run');

export interface FeaturesRunOpts extends HfRunOpts { features?: string }

function definedOnly<T extends object>(o: T): Partial<T> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<T>;
}

const same = (a: ArrayLike<number>, b: ArrayLike<number>) => a.length === b.length && Array.from(a).every((x, i) => x === b[i]);

/**
 * Detects the layout, settles the aux layers (a capture's own, unless --aux-layers names the
 * same ones) and the draft vocabulary (a capture's own; speculators: counted over the
 * supervised tokens, or --init-from's), checks the layout of ranks, then prepares the features
 * into runDir and returns the job spec. `base` is the synthetic spec of the same options.
 */
export async function buildFeaturesSpec(opts: FeaturesRunOpts, base: JobSpec, checkLayout: (s: Pick<JobSpec, 'draft' | 'tp' | 'sp' | 'seqLen'>) => void = () => {}): Promise<{ spec: JobSpec; prepared: PreparedFeatures }> {
  const o = { maxLen: 2048, evalRows: 8, onBadRow: 'skip' as const, auxConvention: 'output' as const, ttt: 7, evalMaxNew: 64, ...definedOnly(opts) };
  if (!o.target) throw new InvalidArgumentError('--features needs --target (the model the features were taken from: its embedding, head and final norm, and the accept length)');
  if (!o.features) throw new InvalidArgumentError('--features DIR is required');
  if (o.regenerate) throw new InvalidArgumentError('--regenerate needs the target to write the replies; with --features the tokens are the files\'');
  const dir = resolve(o.target), featuresDir = resolve(o.features);
  const layout = await featuresLayout(featuresDir);
  if (layout === 'capture' && o.dataset) throw new InvalidArgumentError(`--dataset: ${featuresDir} is a draftwire capture, whose files carry their own ids and loss masks`);
  let aux: AuxLayerSpec = { convention: o.auxConvention, ...(o.auxLayers ? { ids: o.auxLayers } : {}) };
  if (layout === 'capture') {
    const taken = await captureAuxLayers(featuresDir);
    if (taken && !o.auxLayers) aux = { convention: 'output', ids: taken };
    else if (taken && o.auxLayers) {
      const asked = (await readHfConfig(dir, aux)).auxLayers;
      if (!same(asked, taken)) throw new InvalidArgumentError(`--aux-layers: the capture ${featuresDir} was taken at layers ${taken.join(',')} (output convention, its capture.json), not ${asked.join(',')}`);
    }
  }
  const config = await readHfConfig(dir, aux);
  log.info(`features: ${layout} layout in ${featuresDir}`, { auxLayers: config.auxLayers, ...(layout === 'speculators' && !o.auxLayers ? { note: 'speculators files do not record their layers: assumed the default (vLLM ids 2, L/2, L-3); pass --aux-layers a,b,c --aux-convention input if the data was generated with --target-layer-ids' } : {}) });
  if (o.maxLen > LIMITS.seqLen) throw new InvalidArgumentError(`--max-len must be at most ${LIMITS.seqLen}, got ${o.maxLen}`);
  if (o.evalMaxNew >= o.maxLen) throw new InvalidArgumentError(`--eval-max-new (${o.evalMaxNew}) must be below --max-len (${o.maxLen})`);
  if (base.batch * o.maxLen > LIMITS.stepTokens) throw new InvalidArgumentError(`--batch ${base.batch} --max-len ${o.maxLen}: ${base.batch * o.maxLen} tokens per step; at most ${LIMITS.stepTokens}`);
  if (o.maxLen > config.maxPositionEmbeddings) throw new InvalidArgumentError(`--max-len ${o.maxLen} is beyond the target's max_position_embeddings (${config.maxPositionEmbeddings})`);
  // The draft vocabulary: the capture's as it is (it is what the capture's d2t maps), else --init-from's, else counted.
  const fromCapture = layout === 'capture' ? await captureVocab(featuresDir, config.vocab) : null;
  if (fromCapture && opts.draftVocab !== undefined && opts.draftVocab !== fromCapture.draftIds.length) {
    throw new InvalidArgumentError(`--draft-vocab ${opts.draftVocab}: the capture's vocabulary (${join(featuresDir, 'vocab.safetensors')}) has ${fromCapture.draftIds.length} ids and is used as it is`);
  }
  let draft = draftConfigOf(config, { draftVocab: fromCapture ? fromCapture.draftIds.length : o.draftVocab, ttt: o.ttt });
  const imported = o.initFrom ? await importDraft(resolve(o.initFrom), draft) : null;
  if (imported) {
    if (fromCapture && !same(imported.vocab.draftIds, fromCapture.draftIds)) throw new InvalidArgumentError(`--init-from: the draft's vocabulary is not the capture's (${join(featuresDir, 'vocab.safetensors')}); a draft trains on the vocabulary its features were counted with`);
    if (opts.draftVocab !== undefined && opts.draftVocab !== imported.draftVocab) throw new InvalidArgumentError(`--draft-vocab ${opts.draftVocab}: the draft of --init-from has ${imported.draftVocab} (its vocabulary is kept)`);
    draft = { ...draft, draftVocab: imported.draftVocab };
  }
  checkLayout({ draft, tp: base.tp, sp: base.sp, seqLen: o.maxLen }); // before every file is read
  await makeDir(base.runDir);
  const prepared = await prepareFeatures({
    dir: featuresDir, layout, targetDir: dir, config, ...(o.dataset ? { dataset: resolve(o.dataset) } : {}),
    maxLen: o.maxLen, onBadRow: o.onBadRow, evalRows: o.evalRows, evalMaxNew: o.evalMaxNew, evalPrompts: base.evalPrompts, runDir: base.runDir,
    draftVocab: draft.draftVocab,
    ...(fromCapture ? { vocab: { vocab: fromCapture, from: 'capture' as const } } : imported ? { vocab: { vocab: imported.vocab, from: 'init-from' as const } } : {}),
  });
  const s = prepared.summary;
  log.info(`features: ${s.trained} files to train on, ${s.held} held out, ${s.deadLettered} dead-lettered`, { layout, truncated: s.truncated, dtypes: s.dtypes, vocab: s.vocab, deadLetterFile: s.deadLetterFile });
  const steps = o.steps ?? Math.ceil(prepared.chat.rows / (base.batch * base.dp));
  const spec = validateJobSpec({
    ...base, draft, target: await hfTargetSpec(dir, config), chat: prepared.chat, features: prepared.features, dataset: null,
    ...(o.initFrom ? { initFrom: resolve(o.initFrom) } : {}), seqLen: o.maxLen, promptLen: 1, steps,
  });
  return { spec, prepared };
}
