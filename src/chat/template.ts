// Renders a conversation with the model's chat template the way transformers'
// apply_chat_template does: the same variables (messages, bos/eos and the other special
// tokens, add_generation_prompt, extra keyword arguments), raise_exception and strftime_now.
import { Environment, Interpreter, Template } from '@huggingface/jinja';
import { ChatTemplateError, DraftwireError } from '../errors.ts';
import type { ChatTokenizer } from './tokenizer.ts';

export type Role = 'system' | 'user' | 'assistant';
export interface ChatMessage { role: Role; content: string }

export interface RenderOptions {
  addGenerationPrompt?: boolean;
  /** Extra template variables, as apply_chat_template's **kwargs (date_string, enable_thinking, ...). */
  vars?: Record<string, unknown>;
}

const MONTHS = ['January', 'February', 'March', 'April', 'May', 'June', 'July', 'August', 'September', 'October', 'November', 'December'];
const DAYS = ['Sunday', 'Monday', 'Tuesday', 'Wednesday', 'Thursday', 'Friday', 'Saturday'];

/** Python's datetime.now().strftime in the C locale (the jinja package's uses the host's locale). */
export function strftime(d: Date, fmt: string): string {
  const p2 = (n: number) => String(n).padStart(2, '0');
  return fmt.replace(/%[YmdbBaAHMSyejp%]/g, (t) => {
    switch (t) {
      case '%Y': return String(d.getFullYear());
      case '%y': return p2(d.getFullYear() % 100);
      case '%m': return p2(d.getMonth() + 1);
      case '%d': return p2(d.getDate());
      case '%e': return String(d.getDate()).padStart(2, ' ');
      case '%b': return MONTHS[d.getMonth()]!.slice(0, 3);
      case '%B': return MONTHS[d.getMonth()]!;
      case '%a': return DAYS[d.getDay()]!.slice(0, 3);
      case '%A': return DAYS[d.getDay()]!;
      case '%H': return p2(d.getHours());
      case '%M': return p2(d.getMinutes());
      case '%S': return p2(d.getSeconds());
      case '%j': return String(Math.floor((d.getTime() - new Date(d.getFullYear(), 0, 1).getTime()) / 86_400_000) + 1).padStart(3, '0');
      case '%p': return d.getHours() < 12 ? 'AM' : 'PM';
      default: return '%';
    }
  });
}

function range(start: number, stop?: number, step = 1): number[] {
  if (stop === undefined) { stop = start; start = 0; }
  if (step === 0) throw new ChatTemplateError('range() step must not be zero', { detail: { reason: 'render' } });
  const out: number[] = [];
  for (let i = start; step > 0 ? i < stop : i > stop; i += step) out.push(i);
  return out;
}
const GLOBALS: Record<string, unknown> = { true: true, false: false, none: null, True: true, False: false, None: null, range };

// Parsing is most of a render's cost for short conversations; masking renders every prefix.
const parsed = new Map<string, Template>();
function compile(source: string): Template {
  let t = parsed.get(source);
  if (!t) {
    try { t = new Template(source); } catch (e) {
      throw new ChatTemplateError(`chat template does not parse: ${(e as Error).message}`, { detail: { reason: 'parse' } });
    }
    if (parsed.size >= 16) parsed.delete(parsed.keys().next().value!);
    parsed.set(source, t);
  }
  return t;
}

/** The conversation as the template renders it (a string; tokenize with `tok.encode`). */
export function renderChat(tok: ChatTokenizer, messages: readonly ChatMessage[], opts: RenderOptions = {}): string {
  const template = compile(tok.chatTemplate);
  const vars: Record<string, unknown> = {
    ...tok.templateTokens,
    ...(tok.bosToken !== null ? { bos_token: tok.bosToken } : {}),
    ...(tok.eosToken !== null ? { eos_token: tok.eosToken } : {}),
    ...opts.vars,
    messages: messages.map((m) => ({ role: m.role, content: m.content })),
    add_generation_prompt: opts.addGenerationPrompt ?? false,
    raise_exception: (msg: unknown) => { throw new ChatTemplateError(`chat template raised: ${String(msg)}`, { detail: { reason: 'raise_exception' } }); },
  };
  if (tok.chatTemplate.includes('strftime_now')) vars.strftime_now = (fmt: unknown) => strftime(new Date(), String(fmt));
  try {
    // Template.render, with our raise_exception and strftime_now in place of the package's
    // (its globals cannot be overridden through render()).
    const env = new Environment();
    for (const [k, v] of Object.entries({ ...GLOBALS, ...vars })) env.set(k, v);
    return new Interpreter(env).run(template.parsed).value as string;
  } catch (e) {
    if (e instanceof DraftwireError) throw e;
    throw new ChatTemplateError(`chat template failed to render: ${(e as Error).message}`, { cause: e, detail: { reason: 'render' } });
  }
}

/** The conversation up to (not including) its first assistant turn, with the generation prompt: an eval prompt. */
export function renderPrompt(tok: ChatTokenizer, messages: readonly ChatMessage[], opts: Omit<RenderOptions, 'addGenerationPrompt'> = {}): string {
  const first = messages.findIndex((m) => m.role === 'assistant');
  return renderChat(tok, first < 0 ? messages : messages.slice(0, first), { ...opts, addGenerationPrompt: true });
}
