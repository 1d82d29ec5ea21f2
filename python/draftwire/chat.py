"""Chat datasets and loss masks, as Draftwire's own chat jobs compute them (src/chat/dataset.ts,
src/chat/mask.ts), for producers that run the target themselves (examples/hf_producer.py).

- ``read_dataset``: JSONL, one conversation a row, in ShareGPT (``{"conversations": [{"from",
  "value"}]}``), OpenAI/UltraChat (``{"messages": [{"role", "content"}]}``) or SpecForge
  (``{"conversations": [{"role", "content"}]}``) form; row ids as Draftwire makes them.
- ``mask_conversation``: token ids of the conversation rendered with the tokenizer's chat
  template and the loss mask (1 on the assistant turns' tokens and their end-of-turn token, 0
  elsewhere and on the last position), by prefix rendering:

      text   = render(all messages)
      head_i = render(messages[:i], add_generation_prompt)  - the text before assistant turn i
      turn_i = render(messages[:i + 1])                     - the text through assistant turn i

  Turn i starts where head_i and text part (at least at len(render(messages[:i])), which must
  be a prefix of text) and ends at the first special token at or after its start, included.

The tokenizer is duck-typed: a transformers tokenizer (``apply_chat_template``, ``encode``,
``added_tokens_decoder``); this module imports neither transformers nor torch.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Set, Union

import numpy as np

from .errors import DraftwireError

ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
         "chatgpt": "assistant", "bing": "assistant", "bard": "assistant"}
_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class ChatTemplateError(DraftwireError):
    code = "CHAT_TEMPLATE"


@dataclass
class Row:
    id: str
    line: int
    messages: List[Dict[str, str]]


@dataclass
class BadRow:
    line: int
    reason: str


def sanitize_id(raw: str) -> str:
    """A row id safe for file names: kept when it already is, else cleaned plus a hash."""
    if _ID.match(raw):
        return raw
    h = hashlib.sha256(raw.encode("utf-8")).hexdigest()[:8]
    return f"{re.sub(r'[^A-Za-z0-9_-]', '_', raw)[:55]}-{h}"


def parse_row(row: Any) -> Union[List[Dict[str, str]], str]:
    """The conversation of a parsed row, or why it is not one."""
    if not isinstance(row, dict):
        return "not a JSON object"
    turns = row["messages"] if isinstance(row.get("messages"), list) else row["conversations"] if isinstance(row.get("conversations"), list) else None
    if turns is None:
        return 'unknown form: expected "conversations" or "messages" as a list'
    if not turns:
        return "empty conversation"
    first = turns[0]
    share_gpt = not isinstance(row.get("messages"), list) and isinstance(first, dict) and "from" in first
    role_key, text_key = ("from", "value") if share_gpt else ("role", "content")
    out = []
    for k, t in enumerate(turns):
        if not isinstance(t, dict):
            return f"turn {k}: not an object"
        who = t.get(role_key)
        if not isinstance(who, str):
            return f'turn {k}: no "{role_key}" string (expected {{{role_key}, {text_key}}})'
        role = ROLES.get(who.lower())
        if role is None:
            return f"turn {k}: unknown role {json.dumps(who[:32])}"
        content = t.get(text_key)
        if not isinstance(content, str):
            return f'turn {k}: "{text_key}" is not a string'
        out.append({"role": role, "content": content})
    if not any(m["role"] == "assistant" for m in out):
        return "no assistant turn"
    return out


def read_dataset(path: str) -> Iterator[Union[Row, BadRow]]:
    """Every row of a JSONL chat dataset (blank lines are not rows), 1-based line numbers."""
    seen: Set[str] = set()
    with open(path, "r", encoding="utf-8") as f:
        for line, text in enumerate(f, 1):
            if not text.strip():
                continue
            try:
                row = json.loads(text)
            except ValueError:
                yield BadRow(line, "not valid JSON")
                continue
            msgs = parse_row(row)
            raw = row.get("id") if isinstance(row, dict) else None
            if isinstance(msgs, str):
                yield BadRow(line, msgs)
            elif raw is not None and (isinstance(raw, bool) or not isinstance(raw, (str, int, float))):
                yield BadRow(line, '"id" must be a string or a number')
            else:
                rid = f"line-{line:08d}" if raw is None else sanitize_id(_js_string(raw))
                if rid in seen:
                    yield BadRow(line, f"duplicate id {json.dumps(rid)}")
                else:
                    seen.add(rid)
                    yield Row(rid, line, msgs)


def _js_string(x: Any) -> str:
    if isinstance(x, float) and x.is_integer():
        return str(int(x))
    return str(x)


# ---------------------------------------------------------------- masks


def special_ids(tok: Any, eos_ids: Iterable[int] = ()) -> Set[int]:
    """Added tokens marked special (role headers, end-of-turn markers) and the eos ids."""
    out = {int(i) for i in eos_ids}
    for i, t in getattr(tok, "added_tokens_decoder", {}).items():
        if getattr(t, "special", False):
            out.add(int(i))
    if getattr(tok, "eos_token_id", None) is not None:
        out.add(int(tok.eos_token_id))
    return out


def render(tok: Any, messages: Sequence[Dict[str, str]], add_generation_prompt: bool = False, vars: Optional[Dict[str, Any]] = None) -> str:
    try:
        return tok.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=add_generation_prompt, **(vars or {}))
    except Exception as e:
        raise ChatTemplateError(f"chat template failed to render: {e}", detail={"reason": "render"}) from e


def _encode(tok: Any, text: str) -> List[int]:
    return list(tok.encode(text, add_special_tokens=False))


def _common(a: Sequence[Any], b: Sequence[Any]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def _token_positions(tok: Any, text: str, ids: List[int], chars: List[int]) -> Dict[int, int]:
    cuts = sorted({0, *chars, len(text)})
    out: Dict[int, int] = {}
    n = 0
    aligned = True
    for k in range(len(cuts) - 1):
        out[cuts[k]] = n
        p = _encode(tok, text[cuts[k]:cuts[k + 1]])
        if ids[n:n + len(p)] != p:
            aligned = False
            break
        n += len(p)
    if aligned and n == len(ids):
        out[len(text)] = n
        return out
    return {c: (len(ids) if c == len(text) else _common(_encode(tok, text[:c]), ids)) for c in cuts}


@dataclass
class Masked:
    ids: np.ndarray
    mask: np.ndarray
    truncated: bool
    supervised: int


def mask_conversation(tok: Any, messages: Sequence[Dict[str, str]], *, max_len: Optional[int] = None,
                      vars: Optional[Dict[str, Any]] = None, specials: Optional[Set[int]] = None) -> Masked:
    """Token ids of the rendered conversation and the loss mask of its assistant turns."""
    specials = special_ids(tok) if specials is None else specials
    text = render(tok, messages, vars=vars)
    ids = _encode(tok, text)
    turns = []
    prev_end = 0
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        base = render(tok, messages[:i], vars=vars)
        if not text.startswith(base):
            raise ChatTemplateError(f"assistant turn {i}: the conversation before it renders differently on its own than in the whole conversation",
                                    detail={"turn": i, "reason": "prefix"})
        head = render(tok, messages[:i], add_generation_prompt=True, vars=vars)
        start = max(_common(head, text), len(base))
        if start < prev_end or start >= len(text):
            raise ChatTemplateError(f"assistant turn {i}: cannot find where it starts in the rendered conversation", detail={"turn": i, "reason": "turn start"})
        turn = render(tok, messages[:i + 1], vars=vars)
        exact = len(turn) > start and text.startswith(turn)
        turns.append({"index": i, "start": start, "bound": len(turn) if exact else len(text), "exact": exact})
        prev_end = start
    for k in range(len(turns) - 1):
        if not turns[k]["exact"]:
            turns[k]["bound"] = turns[k + 1]["start"]
    at = _token_positions(tok, text, ids, [c for t in turns for c in (t["start"], t["bound"])])
    mask = np.zeros(len(ids), dtype=np.uint8)
    for t in turns:
        s, b = at[t["start"]], at[t["bound"]]
        e = s
        while e < b and ids[e] not in specials:
            e += 1
        if e < b:
            e += 1  # the end-of-turn token itself
        elif not t["exact"]:
            raise ChatTemplateError(f"assistant turn {t['index']}: no end-of-turn token after it in the rendered conversation",
                                    detail={"turn": t["index"], "reason": "turn end"})
        mask[s:e] = 1
    n = len(ids) if max_len is None else min(len(ids), max_len)
    out_ids = np.asarray(ids[:n], dtype=np.int32)
    out_mask = mask[:n].copy()
    if n > 0:
        out_mask[n - 1] = 0  # the last position has no next token to predict
    return Masked(out_ids, out_mask, n < len(ids), int(out_mask.sum()))
