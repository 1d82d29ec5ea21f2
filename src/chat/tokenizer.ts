// A Hugging Face model directory's tokenizer and chat template, as transformers loads them:
// tokenizer.json (the fast tokenizer), tokenizer_config.json (special tokens, the template),
// and the optional files that override or extend it. Pure: no NATS, no addon.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Tokenizer } from '@huggingface/tokenizers';
import { ChatTemplateError, InvalidArgumentError } from '../errors.ts';

export interface ChatTokenizer {
  readonly dir: string;
  /** One past the largest id of the vocabulary and the added tokens. */
  readonly vocabSize: number;
  readonly bosToken: string | null;
  readonly bosTokenId: number | null;
  /** tokenizer_config's eos_token (what templates get as `eos_token`). */
  readonly eosToken: string | null;
  /** Every end-of-sequence token: eos_token and generation_config's eos_token_id, ascending by id. */
  readonly eosTokens: readonly string[];
  readonly eosTokenIds: readonly number[];
  /** Added tokens marked special (role headers, end-of-turn markers), and the eos ids. */
  readonly specialIds: ReadonlySet<number>;
  readonly chatTemplate: string;
  /** Template variables transformers passes besides bos/eos (pad_token, unk_token). */
  readonly templateTokens: Readonly<Record<string, string>>;
  /** Token ids of `text`, never adding special tokens (a template renders those). */
  encode(text: string): Int32Array;
  decode(ids: ArrayLike<number>, opts?: { skipSpecialTokens?: boolean }): string;
  tokenToId(token: string): number | undefined;
}

type Json = Record<string, unknown>;

function readJson(dir: string, file: string, required: true): Json;
function readJson(dir: string, file: string, required: false): Json | null;
function readJson(dir: string, file: string, required: boolean): Json | null {
  const path = join(dir, file);
  let text: string;
  try { text = readFileSync(path, 'utf8'); } catch (e) {
    if (!required && (e as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw new InvalidArgumentError(`${path}: cannot read ${file} (${(e as NodeJS.ErrnoException).code ?? String(e)})`, { detail: { path } });
  }
  let v: unknown;
  try { v = JSON.parse(text); } catch (e) {
    throw new ChatTemplateError(`${path}: ${file} is not valid JSON (${(e as Error).message})`, { detail: { path, reason: 'json' } });
  }
  if (v === null || typeof v !== 'object' || Array.isArray(v)) throw new ChatTemplateError(`${path}: ${file} is not a JSON object`, { detail: { path, reason: 'json' } });
  return v as Json;
}

/** A special token as tokenizer_config writes it: a string, an AddedToken object, or null. */
function tokenString(v: unknown): string | null {
  if (typeof v === 'string') return v;
  if (v && typeof v === 'object' && typeof (v as Json).content === 'string') return (v as Json).content as string;
  return null;
}

/** chat_template as a string, or a list of {name, template} (transformers takes "default"). */
function pickTemplate(v: unknown, where: string): string | null {
  if (v === undefined || v === null) return null;
  if (typeof v === 'string') return v;
  if (Array.isArray(v)) {
    const d = v.find((t) => t && typeof t === 'object' && (t as Json).name === 'default');
    if (d && typeof (d as Json).template === 'string') return (d as Json).template as string;
    throw new ChatTemplateError(`${where}: chat_template is a list without a "default" template`, { detail: { path: where, reason: 'no default template' } });
  }
  throw new ChatTemplateError(`${where}: chat_template must be a string or a list of {name, template}`, { detail: { path: where, reason: 'chat_template type' } });
}

function loadTemplate(dir: string, config: Json): string {
  // transformers 5 order: chat_template.jinja, then chat_template.json, then tokenizer_config.
  const jinjaPath = join(dir, 'chat_template.jinja');
  try { return readFileSync(jinjaPath, 'utf8'); } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw new InvalidArgumentError(`${jinjaPath}: cannot read chat_template.jinja`, { detail: { path: jinjaPath } });
  }
  const ct = readJson(dir, 'chat_template.json', false);
  const fromJson = ct ? pickTemplate(ct.chat_template, join(dir, 'chat_template.json')) : null;
  if (fromJson !== null) return fromJson;
  const fromConfig = pickTemplate(config.chat_template, join(dir, 'tokenizer_config.json'));
  if (fromConfig !== null) return fromConfig;
  throw new ChatTemplateError(`${dir}: no chat template (chat_template.jinja, chat_template.json or tokenizer_config.json's chat_template)`, { detail: { path: dir, reason: 'no chat template' } });
}

/** Loads the tokenizer of a model directory; a missing or unparsable file is a typed error naming it. */
export function loadTokenizer(dir: string): ChatTokenizer {
  const json = readJson(dir, 'tokenizer.json', true);
  const config = readJson(dir, 'tokenizer_config.json', true);
  const specialMap = readJson(dir, 'special_tokens_map.json', false) ?? {};
  const gen = readJson(dir, 'generation_config.json', false) ?? {};
  const chatTemplate = loadTemplate(dir, config);

  let tok: Tokenizer;
  try { tok = new Tokenizer(json, config); } catch (e) {
    throw new ChatTemplateError(`${join(dir, 'tokenizer.json')}: cannot build the tokenizer (${(e as Error).message})`, { detail: { path: join(dir, 'tokenizer.json'), reason: 'tokenizer' } });
  }
  const special = (k: string) => tokenString(config[k]) ?? tokenString(specialMap[k]);
  const idOf = (t: string | null, what: string): number | null => {
    if (t === null) return null;
    const id = tok.token_to_id(t);
    if (id === undefined) throw new ChatTemplateError(`${dir}: ${what} ${JSON.stringify(t)} is not in the vocabulary`, { detail: { path: dir, reason: what } });
    return id;
  };
  const bosToken = special('bos_token');
  const eosToken = special('eos_token');
  const bosTokenId = idOf(bosToken, 'bos_token');

  const eosIds = new Set<number>();
  const eosId = idOf(eosToken, 'eos_token');
  if (eosId !== null) eosIds.add(eosId);
  const genEos = gen.eos_token_id;
  for (const id of Array.isArray(genEos) ? genEos : genEos === undefined || genEos === null ? [] : [genEos]) {
    if (!Number.isSafeInteger(id) || tok.id_to_token(id as number) === undefined) {
      throw new ChatTemplateError(`${join(dir, 'generation_config.json')}: eos_token_id ${JSON.stringify(id)} is not a token id`, { detail: { path: join(dir, 'generation_config.json'), reason: 'eos_token_id' } });
    }
    eosIds.add(id as number);
  }
  const eosTokenIds = [...eosIds].sort((a, b) => a - b);

  let maxId = -1;
  for (const id of tok.get_vocab(true).values()) if (id > maxId) maxId = id;
  const specialIds = new Set<number>(eosTokenIds);
  for (const [id, t] of tok.get_added_tokens_decoder()) if (t.special) specialIds.add(id);

  const templateTokens: Record<string, string> = {};
  for (const k of ['pad_token', 'unk_token']) { const t = special(k); if (t !== null) templateTokens[k] = t; }

  return {
    dir, vocabSize: maxId + 1, bosToken, bosTokenId, eosToken,
    eosTokens: eosTokenIds.map((id) => tok.id_to_token(id)!), eosTokenIds, specialIds, chatTemplate, templateTokens,
    encode: (text) => Int32Array.from(tok.encode(text, { add_special_tokens: false }).ids),
    decode: (ids, opts = {}) => tok.decode(Array.from(ids), { skip_special_tokens: opts.skipSpecialTokens ?? false }),
    tokenToId: (t) => tok.token_to_id(t),
  };
}
