// Offline feature files (src/job/features.ts, src/job/features-data.ts) without NATS or a
// trainer: each bad file is refused naming what was wrong (the reason its dead letter keeps),
// good ones come out in their own dtype (capture) or with the target's final norm applied to
// the pre-norm slot (speculators), a file longer than --max-len is cut, and a directory is
// prepared into a run directory (rows, vocabulary, eval prompts, dead-letter.jsonl) or refused
// as a whole when nothing in it can be trained on.
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { FeaturesError } from '../../src/errors.ts';
import { buildDraftVocab, writeVocabFile } from '../../src/chat/vocab.ts';
import { loadJobRows } from '../../src/job/chat-data.ts';
import { detectLayout, featureEntries, finalNormed, firstNonFinite, readFeatureFile, trainingMask, type FeatureLimits, type FeaturesLayout } from '../../src/job/features.ts';
import { prepareFeatures } from '../../src/job/features-data.ts';
import type { HfTargetConfig } from '../../src/hf/config.ts';
import { hfTensorSpecs } from '../../src/hf/weights.ts';
import { upcastToF32 } from '../../src/native/addon.ts';
import { writeSafetensorsFile } from '../../src/store/safetensors.ts';
import { f32ToBf16, tensor, type Tensor } from '../../src/tensor.ts';
import { rejects } from '../support/assert.ts';
import { rng } from '../support/fixtures.ts';

const H = 8, V = 50;
const LIM: FeatureLimits = { hidden: H, vocab: V, maxLen: 16, auxLayers: [1, 3, 4] };

const randn = (n: number, seed: number) => { const r = rng(seed); return Float32Array.from({ length: n }, () => 2 * r() - 1); };
const bf16 = (x: Float32Array) => f32ToBf16(x);
const ids64 = (T: number, off = 0) => BigInt64Array.from({ length: T }, (_, t) => BigInt((t * 7 + off) % V));
const maskOf = (T: number) => Uint8Array.from({ length: T }, (_, t) => (t >= 2 ? 1 : 0));

/** A capture file of T tokens; `over` replaces or (undefined) drops tensors. */
function captureTensors(T: number, over: Record<string, Tensor | undefined> = {}): Record<string, Tensor> {
  const t: Record<string, Tensor | undefined> = {
    input_ids: tensor('i64', [T], ids64(T)), loss_mask: tensor('u8', [T], maskOf(T)),
    aux_hidden_state: tensor('bf16', [T, 3 * H], bf16(randn(T * 3 * H, 1))), hidden_state: tensor('bf16', [T, H], bf16(randn(T * H, 2))),
    ...over,
  };
  return Object.fromEntries(Object.entries(t).filter(([, v]) => v !== undefined)) as Record<string, Tensor>;
}

function speculatorsTensors(T: number, over: Record<string, Tensor | undefined> = {}): Record<string, Tensor> {
  const t: Record<string, Tensor | undefined> = { token_ids: tensor('i64', [T], ids64(T)), hidden_states: tensor('bf16', [T, 4, H], bf16(randn(T * 4 * H, 3))), ...over };
  return Object.fromEntries(Object.entries(t).filter(([, v]) => v !== undefined)) as Record<string, Tensor>;
}

const NORM = { weight: Float32Array.from({ length: H }, (_, i) => 0.5 + i / H), eps: 1e-5 };

describe('offline features: files', function () {
  this.timeout(60_000);
  let dir: string;
  let n = 0;
  before(() => { dir = mkdtempSync(join(tmpdir(), 'dw-features-')); });
  after(() => rmSync(dir, { recursive: true, force: true }));

  async function file(tensors: Record<string, Tensor>, meta?: Record<string, string>): Promise<string> {
    const p = join(dir, `f${n++}.safetensors`);
    await writeSafetensorsFile(p, tensors, meta);
    return p;
  }
  const bad = async (layout: FeaturesLayout, p: string, re: RegExp, lim: FeatureLimits = { ...LIM, norm: NORM }) => {
    await rejects(readFeatureFile(p, layout, lim), FeaturesError, re);
    await readFeatureFile(p, layout, lim).catch((e: FeaturesError) => {
      assert.equal(e.code, 'FEATURES');
      assert.equal(e.detail?.file, p);
      assert.match(String(e.detail?.reason), re, 'detail.reason says what was wrong (the dead letter\'s reason)');
    });
  };

  it('a capture file: ids, its own loss mask, aux and last kept in their dtype', async () => {
    const t = captureTensors(6);
    const f = await readFeatureFile(await file(t, { aux_layers: '1,3,4' }), 'capture', LIM);
    assert.deepEqual([...f.ids], [...t.input_ids!.data].map(Number));
    assert.deepEqual(f.mask, t.loss_mask!.data);
    assert.deepEqual([f.aux.dtype, f.aux.shape, f.last.dtype, f.last.shape, f.tokens, f.truncated], ['bf16', [6, 24], 'bf16', [6, 8], 6, false]);
    assert.deepEqual(f.aux.data, t.aux_hidden_state!.data, 'bf16 words as stored, no conversion');
    const f32 = await readFeatureFile(await file(captureTensors(3, { input_ids: tensor('i32', [3], Int32Array.of(1, 2, 3)), hidden_state: tensor('f32', [3, H], randn(3 * H, 4)) })), 'capture', LIM);
    assert.deepEqual([f32.last.dtype, [...f32.ids]], ['f32', [1, 2, 3]], 'i32 ids and f32 features too');
  });

  it('a file longer than --max-len is cut to it (the first positions do not depend on the rest)', async () => {
    const t = captureTensors(20);
    const f = await readFeatureFile(await file(t), 'capture', LIM);
    assert.deepEqual([f.ids.length, f.aux.shape, f.last.shape, f.tokens, f.truncated], [16, [16, 24], [16, 8], 20, true]);
    assert.deepEqual(f.aux.data, (t.aux_hidden_state!.data as Uint16Array).subarray(0, 16 * 24));
    assert.deepEqual([...trainingMask(f.mask!, 16)].slice(-2), [1, 0], 'the new last position predicts nothing');
  });

  it('bad capture files name what is wrong', async () => {
    const T = 5;
    await bad('capture', await file(captureTensors(T, { hidden_state: undefined })), /no tensor "hidden_state" \(a capture file has input_ids, loss_mask, aux_hidden_state, hidden_state; this one has input_ids, loss_mask, aux_hidden_state\)/);
    await bad('capture', await file(captureTensors(T, { aux_hidden_state: tensor('i32', [T, 3 * H]) })), /"aux_hidden_state" is i32; expected f32 or bf16 or f16/);
    await bad('capture', await file(captureTensors(T, { input_ids: tensor('f32', [T]) })), /"input_ids" is f32; expected i64 or i32/);
    await bad('capture', await file(captureTensors(T, { aux_hidden_state: tensor('bf16', [T, 3 * H + 1]) })), /"aux_hidden_state" has shape \[5, 25\]; expected \[T, 3H\] \(H = 8, the target's hidden size\) = \[5, 24\]/);
    await bad('capture', await file(captureTensors(T, { hidden_state: tensor('bf16', [T - 1, H]) })), /"hidden_state" has shape \[4, 8\]; expected \[T, H\] \(H = 8\) = \[5, 8\]/);
    await bad('capture', await file(captureTensors(T, { loss_mask: tensor('u8', [T + 1]) })), /"loss_mask" has shape \[6\]; expected \[T\] = \[5\]/);
    await bad('capture', await file(captureTensors(1)), /"input_ids" has 1 token\(s\); a sample needs at least 2/);
    await bad('capture', await file(captureTensors(T, { input_ids: tensor('i64', [T, 1]) })), /"input_ids" has shape \[5, 1\]; expected \[T\]/);
    const ids = ids64(T); ids[3] = BigInt(V);
    await bad('capture', await file(captureTensors(T, { input_ids: tensor('i64', [T], ids) })), /"input_ids"\[3\] = 50 is outside the target's vocabulary \[0, 50\)/);
    const neg = ids64(T); neg[0] = -1n;
    await bad('capture', await file(captureTensors(T, { input_ids: tensor('i64', [T], neg) })), /"input_ids"\[0\] = -1 is outside/);
    const m = maskOf(T); m[4] = 2;
    await bad('capture', await file(captureTensors(T, { loss_mask: tensor('u8', [T], m) })), /"loss_mask"\[4\] is 2; a loss mask holds 0 or 1/);
    const nan = bf16(randn(T * 3 * H, 5)); nan[2 * 3 * H + 7] = 0x7fc0;
    await bad('capture', await file(captureTensors(T, { aux_hidden_state: tensor('bf16', [T, 3 * H], nan) })), /"aux_hidden_state" holds a non-finite value \(NaN or inf\) at token 2/);
    const inf = randn(T * H, 6); inf[H * 4] = Infinity;
    await bad('capture', await file(captureTensors(T, { hidden_state: tensor('f32', [T, H], inf) })), /"hidden_state" holds a non-finite value \(NaN or inf\) at token 4/);
    const f16inf = new Uint16Array(T * H); f16inf[0] = 0xfc00;
    await bad('capture', await file(captureTensors(T, { hidden_state: tensor('f16', [T, H], f16inf) })), /"hidden_state" holds a non-finite value \(NaN or inf\) at token 0/);
    await bad('capture', await file(captureTensors(T), { aux_layers: '2,3,4' }), /captured at aux layers 2,3,4 \(its metadata\); the job trains on 1,3,4/);
  });

  it('files that are not readable safetensors: garbage, cut short, missing', async () => {
    const garbage = join(dir, 'garbage.safetensors');
    writeFileSync(garbage, 'not a safetensors file at all, just text');
    await bad('capture', garbage, /not a readable safetensors file: header length exceeds the file/);
    const whole = readFileSync(await file(captureTensors(5)));
    const cut = join(dir, 'cut.safetensors');
    writeFileSync(cut, whole.subarray(0, whole.length - 10));
    await bad('capture', cut, /not a readable safetensors file: tensor "hidden_state" runs past the end of the file \(truncated\?\)/);
    await bad('capture', join(dir, 'none.safetensors'), /cannot be opened \(ENOENT\)/);
  });

  it('a speculators file: aux = slots 0..2, last = the final norm of slot 3, in the file\'s dtype', async () => {
    const T = 4, t = speculatorsTensors(T, { token_ids: tensor('i32', [T], Int32Array.of(3, 1, 4, 1)) });
    const f = await readFeatureFile(await file(t), 'speculators', { ...LIM, norm: NORM });
    const hs = t.hidden_states!.data as Uint16Array, x = new Float32Array(hs.length);
    upcastToF32(hs, 'bf16', x);
    assert.deepEqual([[...f.ids], f.mask, f.aux.dtype, f.aux.shape, f.last.dtype, f.last.shape], [[3, 1, 4, 1], null, 'bf16', [T, 3 * H], 'bf16', [T, H]]);
    for (let tt = 0; tt < T; tt++) {
      assert.deepEqual((f.aux.data as Uint16Array).subarray(tt * 3 * H, (tt + 1) * 3 * H), hs.subarray(tt * 4 * H, tt * 4 * H + 3 * H), `token ${tt}: slots 0..2 as stored`);
      const pre = x.subarray(tt * 4 * H + 3 * H, (tt + 1) * 4 * H);
      const rms = Math.sqrt(pre.reduce((a, v) => a + v * v, 0) / H + NORM.eps); // float64 reference
      const got = new Float32Array(H);
      upcastToF32((f.last.data as Uint16Array).subarray(tt * H, (tt + 1) * H), 'bf16', got);
      for (let i = 0; i < H; i++) {
        const want = NORM.weight[i]! * pre[i]! / rms;
        assert.ok(Math.abs(got[i]! - want) <= 2 ** -8 * Math.abs(want) + 1e-6, `token ${tt} [${i}]: ${got[i]} vs ${want} (one bf16 rounding)`);
      }
    }
    const f32 = finalNormed(Float32Array.from({ length: 4 * H }, (_, i) => (i >= 3 * H ? 2 : 9)), 'f32', 1, H, { weight: new Float32Array(H).fill(1), eps: 0 });
    assert.deepEqual([...f32], new Array(H).fill(1), 'RMSNorm of a constant row is 1 (weight 1)');
    const withMask = await readFeatureFile(await file(speculatorsTensors(T, { loss_mask: tensor('u8', [T], Uint8Array.of(0, 1, 1, 0)) })), 'speculators', { ...LIM, norm: NORM });
    assert.deepEqual([...withMask.mask!], [0, 1, 1, 0], 'a loss_mask in the file is the file\'s');
  });

  it('bad speculators files name what is wrong', async () => {
    const T = 5;
    await bad('speculators', await file(speculatorsTensors(T, { hidden_states: tensor('bf16', [T, 3, H]) })), /"hidden_states" has 3 layer slots; expected 4 \(three aux layers and the final hidden state/);
    await bad('speculators', await file(speculatorsTensors(T, { hidden_states: tensor('bf16', [T, 4 * H]) })), /"hidden_states" has shape \[5, 32\]; expected \[T, 4, H\] \(H = 8, the target's hidden size\) = \[5, 4, 8\]/);
    await bad('speculators', await file(speculatorsTensors(T, { hidden_states: tensor('bf16', [T, 4, H + 1]) })), /has shape \[5, 4, 9\]; expected \[T, 4, H\]/);
    await bad('speculators', await file(speculatorsTensors(T, { token_ids: undefined })), /no tensor "token_ids" \(a speculators file has token_ids, hidden_states; this one has hidden_states\)/);
    const nan = bf16(randn(T * 4 * H, 7)); nan[3 * 4 * H + 3 * H + 1] = 0xffc1; // slot 3 (pre-norm) of token 3
    await bad('speculators', await file(speculatorsTensors(T, { hidden_states: tensor('bf16', [T, 4, H], nan) })), /"hidden_states" holds a non-finite value \(NaN or inf\) at token 3/);
    await bad('speculators', await file(speculatorsTensors(T, { loss_mask: tensor('u8', [T + 2]) })), /"loss_mask" has shape \[7\]; expected \[T\] = \[5\]/);
    await bad('speculators', await file(speculatorsTensors(T, { token_ids: tensor('f32', [T]) })), /"token_ids" is f32; expected i64 or i32/);
  });

  it('finds the first NaN or inf in every dtype, in either half of a word pair, aligned or not', () => {
    for (const [dtype, bad, fine] of [['bf16', [0x7f80, 0xff80, 0x7fc0, 0x7f81], [0x7f7f, 0x3f80, 0x0000, 0x8000]], ['f16', [0x7c00, 0xfc00, 0x7e00, 0x7c01], [0x7bff, 0x3c00, 0x0400, 0x83ff]]] as const) {
      for (const len of [1, 2, 7, 8]) {
        for (let at = 0; at < len; at++) {
          for (const offset of [0, 2]) {
            const words = new Uint16Array(len + 1).fill(fine[at % 4]!);
            words[at + offset / 2] = bad[at % 4]!;
            const view = new Uint8Array(words.buffer, offset, len * 2);
            assert.equal(firstNonFinite(dtype, view), at, `${dtype} length ${len}, bad at ${at}, byte offset ${offset}`);
          }
        }
        assert.equal(firstNonFinite(dtype, new Uint8Array(new Uint16Array(len).fill(fine[1]!).buffer)), -1, `${dtype}: finite values pass`);
      }
    }
    const x = Float32Array.of(1, -0, 3.4e38, 1e-45, NaN);
    assert.equal(firstNonFinite('f32', new Uint8Array(x.buffer)), 4);
    assert.equal(firstNonFinite('f32', new Uint8Array(x.buffer, 0, 16)), -1);
  });

  it('a directory: its layout from the names, its sample files in order, odd names rejected with a reason', () => {
    assert.equal(detectLayout(['a.safetensors', 'vocab.safetensors', 'capture.json']), 'capture');
    assert.equal(detectLayout(['hs_0.safetensors', 'data_config.json']), 'speculators');
    assert.equal(detectLayout(['hs_0.safetensors.zst']), 'speculators');
    assert.equal(detectLayout(['model.safetensors', 'notes.txt']), null);
    const s = featureEntries(['hs_10.safetensors', 'hs_2.safetensors', 'hs_0.safetensors', 'hs_3.safetensors.zst', 'hs_x.safetensors', 'hs_02.safetensors', 'hs_1.safetensors.lock', '.hs_4.safetensors.123.tmp', 'data_config.json'], 'speculators');
    assert.deepEqual(s.entries.map((e) => e.id), ['hs_0', 'hs_2', 'hs_10'], 'by row index, as numbers');
    assert.deepEqual(s.rejected.map((r) => r.file).sort(), ['hs_02.safetensors', 'hs_3.safetensors.zst', 'hs_x.safetensors']);
    assert.match(s.rejected.find((r) => r.file.endsWith('.zst'))!.reason, /zstd-compressed .*decompress it first/);
    assert.match(s.rejected.find((r) => r.file === 'hs_x.safetensors')!.reason, /not named hs_<index>\.safetensors/);
    assert.match(s.rejected.find((r) => r.file === 'hs_02.safetensors')!.reason, /row index 02 is also hs_2\.safetensors/);
    const c = featureEntries(['row-10.safetensors', 'row-2.safetensors', 'vocab.safetensors', 'capture.json', 'a b.safetensors', 'row-3.safetensors.tmp'], 'capture');
    assert.deepEqual(c.entries.map((e) => e.id), ['row-2', 'row-10']);
    assert.match(c.rejected[0]!.reason, /not a usable sample id/);
  });
});

const CONFIG: HfTargetConfig = {
  architecture: 'LlamaForCausalLM', vocab: V, hidden: H, heads: 2, kvHeads: 1, headDim: 4, intermediate: 16, layers: 8,
  ropeTheta: 10000, ropeScaling: null, rmsEps: 1e-5, tie: false, attentionBias: false, qkNorm: false, maxPositionEmbeddings: 64, dtype: null,
  auxLayers: [1, 3, 4],
};

describe('offline features: a directory prepared into a run directory', function () {
  this.timeout(60_000);
  let root: string;
  const level = process.env.DRAFTWIRE_LOG_LEVEL;
  before(() => { root = mkdtempSync(join(tmpdir(), 'dw-features-dir-')); process.env.DRAFTWIRE_LOG_LEVEL = 'error'; }); // the dead letters' warnings are the point here
  after(() => {
    rmSync(root, { recursive: true, force: true });
    if (level === undefined) delete process.env.DRAFTWIRE_LOG_LEVEL; else process.env.DRAFTWIRE_LOG_LEVEL = level;
  });
  const base = (dir: string, runDir: string) => ({ dir, targetDir: join(root, 'model'), config: CONFIG, maxLen: 16, onBadRow: 'skip' as const, evalRows: 1, evalMaxNew: 4, evalPrompts: 4, runDir, draftVocab: 10 });

  it('capture: bad files dead-lettered with their reasons (dead-letter.jsonl), the rest are the rows; the last one held out for its prompt', async () => {
    const dir = join(root, 'cap'), runDir = join(root, 'run-cap');
    await mkdir(dir); await mkdir(runDir);
    const vocab = buildDraftVocab(Float64Array.from({ length: V }, (_, i) => V - i), 10);
    await writeVocabFile(join(dir, 'vocab.safetensors'), vocab);
    for (let i = 0; i < 4; i++) await writeSafetensorsFile(join(dir, `r${i}.safetensors`), captureTensors(6 + i));
    const nan = bf16(randn(5 * 3 * H, 9)); nan[0] = 0x7f80;
    await writeSafetensorsFile(join(dir, 'r4.safetensors'), captureTensors(5, { aux_hidden_state: tensor('bf16', [5, 3 * H], nan) }));
    await writeSafetensorsFile(join(dir, 'r5.safetensors'), captureTensors(5, { loss_mask: tensor('u8', [5], Uint8Array.of(0, 0, 0, 0, 1)) }));
    await writeSafetensorsFile(join(dir, 'r6.safetensors'), captureTensors(30)); // cut to --max-len 16
    const p = await prepareFeatures({ ...base(dir, runDir), layout: 'capture', vocab: { vocab, from: 'capture' } });
    assert.deepEqual([p.summary.files, p.summary.trained, p.summary.held, p.summary.deadLettered, p.summary.truncated], [7, 4, 1, 2, 1]);
    assert.deepEqual([p.summary.vocab, p.summary.dtypes, p.summary.evalOn, p.summary.evalPrompts], ['capture', ['bf16'], 'held-out', 1]);
    const dead = readFileSync(join(runDir, 'dead-letter.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as { file: string; reason: string });
    assert.deepEqual(dead.map((d) => d.file), [join(dir, 'r4.safetensors'), join(dir, 'r5.safetensors')]);
    assert.match(dead[0]!.reason, /"aux_hidden_state" holds a non-finite value .* at token 0/);
    assert.match(dead[1]!.reason, /nothing to train on: its loss mask is all zero/);
    const rows = await loadJobRows(p.chat);
    assert.deepEqual(rows.map((r) => r.id), ['r0', 'r1', 'r2', 'r3'], 'the bad files are not rows; r6 (the last usable) is held out');
    assert.equal(rows[0]!.mask[rows[0]!.ids.length - 1], 0, 'the last position is never supervised');
    const evalFile = JSON.parse(readFileSync(p.chat.evalFile, 'utf8')) as { prompts: number[][] };
    assert.deepEqual(evalFile.prompts, [[0, 7]], 'the held-out prompt: r6\'s ids before its first supervised token');
    assert.equal(JSON.parse(readFileSync(join(runDir, 'features-summary.json'), 'utf8')).deadLettered, 2);
  });

  it('a directory with nothing usable is one FeaturesError naming it, with the first reasons', async () => {
    const dir = join(root, 'allbad'), runDir = join(root, 'run-allbad');
    await mkdir(dir); await mkdir(runDir);
    await writeVocabFile(join(dir, 'vocab.safetensors'), buildDraftVocab(new Float64Array(V).fill(1), 10));
    await writeSafetensorsFile(join(dir, 'a.safetensors'), captureTensors(5, { hidden_state: undefined }));
    await rejects(prepareFeatures({ ...base(dir, runDir), layout: 'capture', evalRows: 0 }), FeaturesError,
      new RegExp(`^${dir}: no usable feature file to train on \\(1 capture files, 1 dead-lettered, 0 held out for evaluation\\); .*a\\.safetensors: no tensor "hidden_state"`));
    assert.match(readFileSync(join(runDir, 'dead-letter.jsonl'), 'utf8'), /no tensor \\"hidden_state\\"/);
  });

  it('speculators without --dataset: a file with its own loss_mask trains, one without is dead-lettered; the norm is the target\'s', async () => {
    const model = join(root, 'model');
    await mkdir(model);
    const { globals, layers } = hfTensorSpecs(CONFIG);
    const weights: Record<string, Tensor> = {};
    for (const s of [...globals, ...layers.flat()]) weights[s.name] = tensor('f32', s.shape, s.name === 'model.norm.weight' ? NORM.weight : undefined);
    await writeSafetensorsFile(join(model, 'model.safetensors'), weights);
    const dir = join(root, 'spec'), runDir = join(root, 'run-spec');
    await mkdir(dir); await mkdir(runDir);
    await writeSafetensorsFile(join(dir, 'hs_0.safetensors'), speculatorsTensors(6, { loss_mask: tensor('u8', [6], maskOf(6)) }));
    await writeSafetensorsFile(join(dir, 'hs_1.safetensors'), speculatorsTensors(6));
    await writeSafetensorsFile(join(dir, 'hs_2.safetensors'), speculatorsTensors(7, { loss_mask: tensor('u8', [7], maskOf(7)) }));
    const p = await prepareFeatures({ ...base(dir, runDir), layout: 'speculators' });
    assert.deepEqual([p.summary.trained, p.summary.held, p.summary.deadLettered, p.summary.vocab], [1, 1, 1, 'counted']);
    assert.match(p.summary.deadLetters[0]!.reason, /no loss_mask tensor in the file and no --dataset to take the mask from/);
    assert.deepEqual(p.features, { dir, layout: 'speculators', dataset: null });
    assert.equal(p.vocab.draftIds.length, 10);
  });
});
