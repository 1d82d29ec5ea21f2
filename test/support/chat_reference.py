"""transformers' side of test/equivalence/chat-template.test.ts.

stdin: {"cases": [{"dir", "messages", "add_generation_prompt", "vars", "turns", "header"}]};
`turns` are the assistant turns as the template renders them (what the loss mask must cover,
before the end-of-turn token), each after the assistant `header` (one, or one per turn). stdout: [{"text", "ids", "mask", "method"}] per case: apply_chat_template's
text and ids, and a loss mask computed independently of Draftwire's prefix rendering: the
template's {% generation %} blocks (return_assistant_tokens_mask) when it has them, else the
char offsets of the tokens (return_offsets_mapping): a token is supervised when it lies inside
an assistant turn's text (found in order, after its header), or is the token right after it.
"""
import json
import sys

from transformers import AutoTokenizer

tokenizers = {}


def load(d):
    if d not in tokenizers:
        tokenizers[d] = AutoTokenizer.from_pretrained(d)
    return tokenizers[d]


def offsets_mask(tok, text, turns, header):
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    offs = enc["offset_mapping"]
    mask = [0] * len(offs)
    cursor = 0
    for k, turn in enumerate(turns):
        head = header[k] if isinstance(header, list) else header
        pos = text.find(head + turn, cursor)
        if pos < 0:
            raise SystemExit(f"assistant turn {turn!r} not found in {text!r}")
        pos += len(head)
        end = pos + len(turn)
        inside = [k for k, (s, e) in enumerate(offs) if s >= pos and e <= end and e > s]
        after = next(k for k, (s, e) in enumerate(offs) if s >= end)
        if inside and inside[0] > 0 and offs[inside[0] - 1][1] > pos:
            raise SystemExit(f"a token straddles the start of {turn!r}")
        for k in inside + [after]:
            mask[k] = 1
        cursor = end
    return enc["input_ids"], mask


def main():
    out = []
    for case in json.load(sys.stdin)["cases"]:
        tok = load(case["dir"])
        kw = dict(case.get("vars") or {})
        gen = case.get("add_generation_prompt", False)
        text = tok.apply_chat_template(case["messages"], tokenize=False, add_generation_prompt=gen, **kw)
        enc = tok.apply_chat_template(case["messages"], tokenize=True, add_generation_prompt=gen, **kw)
        ids = enc["input_ids"] if hasattr(enc, "keys") else enc
        res = {"text": text, "ids": list(ids)}
        if case.get("turns") is not None:
            if "{% generation %}" in tok.chat_template or "{%- generation %}" in tok.chat_template:
                m = tok.apply_chat_template(case["messages"], tokenize=True, return_dict=True,
                                            return_assistant_tokens_mask=True, **kw)
                res["mask"], res["method"] = list(m["assistant_masks"]), "generation"
            else:
                tids, mask = offsets_mask(tok, text, case["turns"], case["header"])
                if tids != res["ids"]:
                    raise SystemExit("tokenizer(text) differs from apply_chat_template(tokenize=True)")
                res["mask"], res["method"] = mask, "offsets"
            res["mask"][-1] = 0  # as Draftwire: the last position predicts nothing
        out.append(res)
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
