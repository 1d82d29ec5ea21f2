// What the rollout computes for a budget row: its sample id and features. Two sources:
// - synthetic: seeded (or a user's) prompts the target continues itself, rows decoded together;
// - chat: the job's conversations under teacher forcing (one forward pass of the target over
//   the rendered conversation: aux and last of every position, the assistant mask; with
//   --regenerate the replies are the target's own, written once when the job started). A chat
//   sample keeps its own length (≤ seqLen);
// - features: offline hidden states (run --features), each row read from its file and checked
//   (src/job/features-data.ts); the target runs no forward pass.
import { InvalidArgumentError } from '../src/errors.ts';
import { loadJobRows, chatSampleId, type JobRow } from '../src/job/chat-data.ts';
import { featureReader } from '../src/job/features-data.ts';
import { loadPrompts, syntheticPrompt } from '../src/job/prompts.ts';
import type { JobSpec } from '../src/job/spec.ts';
import { isHfTarget, targetVocab } from '../src/job/target.ts';
import type { FeatureDtype, TargetModel } from '../src/native/addon.ts';
import { tensor, type Tensor } from '../src/tensor.ts';

export type Sample = Record<string, Tensor>;

export interface RowSource {
  idOf(row: number): string;
  /** A row's features depend on the rows computed with it (a batched decode): compute chunks whole. */
  wholeChunks: boolean;
  /** The features of these rows (a chunk, ascending), computed on the target's worker thread. */
  compute(rows: number[]): Promise<Sample[]>;
}

export function sampleId(row: number): string {
  return `row-${String(row).padStart(8, '0')}`;
}

/** Sampling seed of a row (temperature > 0). */
export function rowSeed(spec: JobSpec, row: number): number {
  return spec.seed * 1_000_003 + row;
}

/** The dtype the rollout writes aux and last in: bf16 unless the job asks for f32 (as the engines produce them: half the bytes). */
const dtypeOf = (spec: JobSpec): FeatureDtype => spec.featureDtype ?? 'bf16';

function sampleOf(T: number, H: number, dtype: FeatureDtype, r: { ids: Int32Array; aux: Float32Array | Uint16Array; last: Float32Array | Uint16Array }, mask?: Uint8Array): Sample {
  return {
    ids: tensor('i32', [T], r.ids),
    aux: tensor(dtype, [T, 3 * H], r.aux),
    last: tensor(dtype, [T, H], r.last),
    mask: tensor('u8', [T], mask ?? new Uint8Array(T).fill(1)),
  };
}

/** Seeded synthetic prompts (or the user's prompt file), continued by the target. */
export function syntheticSource(target: TargetModel, spec: JobSpec): RowSource {
  const prompts = spec.dataset ? loadPrompts(spec.dataset, targetVocab(spec.target), spec.promptLen) : null;
  const promptOf = (row: number) => prompts ? prompts[row % prompts.length]! : syntheticPrompt(spec.seed, row, targetVocab(spec.target), spec.promptLen);
  return {
    idOf: sampleId,
    wholeChunks: true,
    async compute(rows) {
      const dtype = dtypeOf(spec);
      const out = await target.rolloutBatch(rows.map(promptOf), spec.seqLen - spec.promptLen, { temperature: spec.temperature, seeds: rows.map((r) => rowSeed(spec, r)), featureDtype: dtype });
      return out.map((r) => sampleOf(spec.seqLen, spec.draft.hidden, dtype, r));
    },
  };
}

/** The chat job's conversations (the dataset's replies, or the target's own with --regenerate), under teacher forcing. */
export async function chatSource(target: TargetModel, spec: JobSpec): Promise<RowSource> {
  if (!spec.chat) throw new InvalidArgumentError('a chat rollout needs a chat dataset');
  const rows = await loadJobRows(spec.chat);
  const H = spec.draft.hidden;
  const one = async (row: JobRow): Promise<Sample> => {
    const T = row.ids.length;
    const dtype = dtypeOf(spec);
    const { aux, last } = await target.forward(row.ids, 1, T, { featureDtype: dtype });
    return sampleOf(T, H, dtype, { ids: row.ids, aux, last }, row.mask);
  };
  return {
    idOf: (r) => chatSampleId(rows, r),
    wholeChunks: false,
    async compute(rs) {
      const out: Sample[] = [];
      for (const r of rs) out.push(await one(rows[r % rows.length]!));
      return out;
    },
  };
}

/** Offline features: each row's hidden states as its file holds them (read and checked again; no target). */
export async function featuresSource(spec: JobSpec): Promise<RowSource> {
  if (!spec.features || !spec.chat || !isHfTarget(spec.target)) throw new InvalidArgumentError('a features rollout needs the job\'s features, rows and Hugging Face target');
  const rows = await loadJobRows(spec.chat);
  const read = await featureReader(spec.features, spec.target, spec.seqLen);
  return {
    idOf: (r) => chatSampleId(rows, r),
    wholeChunks: false,
    compute: (rs) => Promise.all(rs.map((r) => read(rows[r % rows.length]!))), // a chunk's files read together
  };
}
