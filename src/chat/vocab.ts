// The draft vocabulary of an EAGLE3 draft: the Vd target tokens supervised most often in the
// training data, in the layout SpecForge and SGLang read: `d2t` I64 [Vd] holds offsets
// (target id = i + d2t[i]) and `t2d` BOOL [V] marks the target ids in the draft vocabulary.
// (Draftwire's own checkpoints carry the absolute ids, `draftIds`, as i32 "d2t".)
import { DecodeError, InvalidArgumentError } from '../errors.ts';
import { encodeSafetensorsBuffer, readSafetensorsFile } from '../store/safetensors.ts';
import { writeFileAtomic } from '../files.ts';
import { tensor, type Tensor } from '../tensor.ts';

export interface DraftVocab {
  /** The draft vocabulary's target ids (ascending as built): draft id i is target id draftIds[i]. */
  draftIds: Int32Array;
  /** Offsets: target id = i + d2t[i]. */
  d2t: BigInt64Array;
  /** [V]: 1 where the target id is in the draft vocabulary. */
  t2d: Uint8Array;
}

function checkSize(name: string, v: number, lo: number, hi: number): void {
  if (!Number.isSafeInteger(v) || v < lo || v > hi) throw new InvalidArgumentError(`${name} must be an integer in [${lo}, ${hi}], got ${v}`, { detail: { field: name } });
}

/** How often each target id is a supervised (mask 1) token. */
export function countSupervisedTokens(rows: Iterable<{ ids: ArrayLike<number>; mask: ArrayLike<number> }>, V: number): Float64Array {
  checkSize('V', V, 1, 2 ** 31 - 1);
  const counts = new Float64Array(V);
  for (const r of rows) {
    if (r.ids.length !== r.mask.length) throw new InvalidArgumentError(`a row has ${r.ids.length} ids but ${r.mask.length} mask entries`);
    for (let i = 0; i < r.ids.length; i++) {
      if (!r.mask[i]) continue;
      const id = r.ids[i]!;
      if (!Number.isInteger(id) || id < 0 || id >= V) throw new InvalidArgumentError(`token id ${id} is outside the vocabulary [0, ${V})`);
      counts[id]!++;
    }
  }
  return counts;
}

/** The top Vd ids by count (ties to the lower id), padded with the lowest unused ids, ascending. */
export function buildDraftVocab(counts: ArrayLike<number>, Vd: number): DraftVocab {
  const V = counts.length;
  checkSize('V (the length of counts)', V, 1, 2 ** 31 - 1);
  checkSize('Vd', Vd, 1, V);
  const seen: number[] = [];
  for (let id = 0; id < V; id++) {
    const c = counts[id]!;
    if (!(c >= 0)) throw new InvalidArgumentError(`counts[${id}] = ${c} is not a non-negative number`);
    if (c > 0) seen.push(id);
  }
  seen.sort((a, b) => counts[b]! - counts[a]! || a - b);
  const t2d = new Uint8Array(V);
  let n = 0;
  for (const id of seen.slice(0, Vd)) { t2d[id] = 1; n++; }
  for (let id = 0; n < Vd; id++) if (!t2d[id]) { t2d[id] = 1; n++; }
  return fromT2d(t2d, Vd);
}

/** The vocabulary of a set of target ids (distinct, in [0, V)): d2t offsets and t2d, in ascending id order. */
export function vocabOfIds(ids: ArrayLike<number>, V: number): DraftVocab {
  checkSize('V', V, 1, 2 ** 31 - 1);
  const t2d = new Uint8Array(V);
  for (let i = 0; i < ids.length; i++) {
    const id = ids[i]!;
    if (!Number.isInteger(id) || id < 0 || id >= V || t2d[id]) throw new InvalidArgumentError(`draft id ${i} maps to target id ${id}, outside [0, ${V}) or a second time`);
    t2d[id] = 1;
  }
  return fromT2d(t2d, ids.length);
}

function fromT2d(t2d: Uint8Array, Vd: number): DraftVocab {
  const draftIds = new Int32Array(Vd);
  const d2t = new BigInt64Array(Vd);
  let i = 0;
  for (let id = 0; id < t2d.length; id++) if (t2d[id]) { draftIds[i] = id; d2t[i] = BigInt(id - i); i++; }
  return { draftIds, d2t, t2d };
}

/** Writes `d2t` (I64 [Vd]) and `t2d` (BOOL [V]), whole or not at all (temp, fsync, rename); meta goes into __metadata__. */
export async function writeVocabFile(path: string, vocab: DraftVocab, meta: Record<string, string> = {}): Promise<void> {
  const { d2t, t2d } = vocab;
  const bytes = encodeSafetensorsBuffer({ d2t: tensor('i64', [d2t.length], d2t), t2d: tensor('u8', [t2d.length], t2d) }, meta, { bool: ['t2d'] });
  await writeFileAtomic(path, bytes, { fsync: true });
}

/** Reads a draft vocabulary file and checks it: shapes (and V, Vd when given), ids distinct and in range, t2d agreeing with d2t. */
export async function readVocabFile(path: string, expect: { V?: number; Vd?: number } = {}): Promise<DraftVocab & { metadata: Record<string, string> }> {
  const { tensors, metadata } = await readSafetensorsFile(path, { allowBool: true });
  return { ...vocabOfTensors(tensors, path, expect), metadata };
}

/** The same checks on tensors already read (`d2t`, `t2d` among others); `path` names them in messages. */
export function vocabOfTensors(tensors: Record<string, Tensor>, path: string, expect: { V?: number; Vd?: number } = {}): DraftVocab {
  const fail = (msg: string, tensorName: string) => new DecodeError(`${path}: ${msg}`, { detail: { path, tensor: tensorName } });
  const d = tensors.d2t;
  const t = tensors.t2d;
  if (!d) throw fail('no tensor "d2t"', 'd2t');
  if (!t) throw fail('no tensor "t2d"', 't2d');
  if (d.dtype !== 'i64' || d.shape.length !== 1) throw fail(`"d2t" must be I64 [Vd], is ${d.dtype} [${d.shape}]`, 'd2t');
  if (t.dtype !== 'u8' || t.shape.length !== 1) throw fail(`"t2d" must be BOOL [V], is ${t.dtype} [${t.shape}]`, 't2d');
  const [Vd] = d.shape as [number];
  const [V] = t.shape as [number];
  if (Vd < 1 || Vd > V) throw fail(`"d2t" has ${Vd} entries, outside [1, V = ${V}]`, 'd2t');
  if (expect.V !== undefined && V !== expect.V) throw new InvalidArgumentError(`${path}: the vocabulary file is for V = ${V}, expected ${expect.V}`, { detail: { path, tensor: 't2d' } });
  if (expect.Vd !== undefined && Vd !== expect.Vd) throw new InvalidArgumentError(`${path}: the vocabulary file has Vd = ${Vd}, expected ${expect.Vd}`, { detail: { path, tensor: 'd2t' } });
  const offsets = d.data as BigInt64Array;
  const t2d = t.data as Uint8Array;
  const draftIds = new Int32Array(Vd);
  const used = new Uint8Array(V);
  for (let i = 0; i < Vd; i++) {
    const big = BigInt(i) + offsets[i]!;
    if (big < 0n || big >= BigInt(V)) throw fail(`"d2t"[${i}] maps to target id ${big}, outside [0, ${V})`, 'd2t');
    const id = Number(big);
    if (used[id]) throw fail(`"d2t"[${i}] maps to target id ${id} a second time (ids must be distinct)`, 'd2t');
    if (!t2d[id]) throw fail(`"t2d"[${id}] is 0 but "d2t"[${i}] maps to it`, 't2d');
    used[id] = 1;
    draftIds[i] = id;
  }
  let ones = 0;
  for (let id = 0; id < V; id++) {
    if (t2d[id]! > 1) throw fail(`"t2d"[${id}] is ${t2d[id]}, not 0 or 1`, 't2d');
    ones += t2d[id]!;
  }
  if (ones !== Vd) throw fail(`"t2d" marks ${ones} target ids but "d2t" has ${Vd}`, 't2d');
  return { draftIds, d2t: offsets, t2d };
}
