"""The tokenizer a checkpoint carries: the Qwen2 tokenizer with the reference's additions (docs/reference_notes.md §3).

`prepare` loads an HF tokenizer directory, checks it is a Qwen2 tokenizer the reference could use, adds
`<|endofchunk|>` and `<s>` as additional special tokens (so they get ids len(tokenizer), len + 1: 151665 and 151666
for Qwen2.5), makes `<s>` the BOS and saves the result. The data pipeline's own loader (oq2vl_jax.data.tokenizer)
does the same on load; the conversion package must not import it, so the small part needed here is repeated.

LLaVA exports additionally get an `<image>` token; `strip_added_token` removes it again on import.
"""

from __future__ import annotations

import json
import os
import shutil
import string

from oq2vl_jax.errors import UserError

REQUIRED_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
ADDED_TOKENS = ("<|endofchunk|>", "<s>")
BOS_TOKEN = "<s>"
PAD_TOKEN = "<|endoftext|>"
IMAGE_TOKEN = "<image>"
MODEL_MAX_LENGTH = 4096
# The reference's `string2idx` asserts each of these is one token (prismatic.py:85-89).
SINGLE_TOKEN_WORDS = ("True", "False", "Yes", "No", *string.ascii_uppercase)


def load(tokenizer_dir: str):
    if not tokenizer_dir or not os.path.isdir(tokenizer_dir):
        raise UserError(f"tokenizer directory '{tokenizer_dir}' does not exist")
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
    except Exception as e:
        raise UserError(f"cannot load a tokenizer from '{tokenizer_dir}' ({type(e).__name__}: {e})") from e
    if not getattr(tok, "is_fast", False):
        raise UserError(f"'{tokenizer_dir}' loads a slow tokenizer; a fast one (tokenizer.json) is required")
    return tok


def check_qwen2(tok, where: str) -> None:
    vocab = tok.get_vocab()
    missing = [t for t in REQUIRED_TOKENS if t not in vocab]
    if missing:
        raise UserError(f"the tokenizer in '{where}' lacks the Qwen2 special tokens {missing}; "
                        "use the Qwen2 / Qwen2.5 tokenizer the LLM was trained with")
    multi = [w for w in SINGLE_TOKEN_WORDS if len(tok.encode(w, add_special_tokens=False)) != 1]
    if multi:
        raise UserError(f"the tokenizer in '{where}' splits {multi[:6]} into several tokens; the reference requires "
                        "each to be a single token (it is not a Qwen2 tokenizer)")


def _check_ids(tok, vocab_size: int, where: str) -> None:
    over = {t: i for t, i in tok.get_vocab().items() if i >= vocab_size}
    if over:
        raise UserError(f"the tokenizer in '{where}' has ids {sorted(over.items(), key=lambda x: x[1])[:4]} beyond "
                        f"the LLM's embedding rows ({vocab_size}); the tokenizer does not belong to this LLM")


def add_reference_tokens(tok) -> None:
    """Adds the reference's special tokens (no-op for ones already there) and makes `<s>` the BOS."""
    present = set(tok.get_vocab())
    new = [t for t in ADDED_TOKENS if t not in present]
    if new:
        tok.add_special_tokens({"additional_special_tokens": new}, replace_extra_special_tokens=False)
    tok.bos_token = BOS_TOKEN
    if tok.pad_token is None:
        tok.pad_token = PAD_TOKEN
    tok.model_max_length = MODEL_MAX_LENGTH
    tok.padding_side = "right"


def prepare(src_dir: str, out_dir: str, *, vocab_size: int) -> dict:
    """Checks, extends and saves the tokenizer in `src_dir` to `out_dir`; returns the ids that matter."""
    tok = load(src_dir)
    check_qwen2(tok, src_dir)
    add_reference_tokens(tok)
    _check_ids(tok, vocab_size, src_dir)
    tok.save_pretrained(out_dir)
    return token_ids(tok)


def token_ids(tok) -> dict:
    ids = tok.convert_tokens_to_ids
    return {"bos": ids(BOS_TOKEN), "endofchunk": ids("<|endofchunk|>"), "eos": ids("<|im_end|>"),
            "pad": ids(PAD_TOKEN), "im_start": ids("<|im_start|>"), "size": len(tok)}


def add_image_token(tok, vocab_size: int, where: str) -> int:
    """Adds `<image>` (LLaVA's placeholder) as a special token; returns its id, which must index an embedding row."""
    from tokenizers import AddedToken

    if IMAGE_TOKEN not in tok.get_vocab():
        tok.add_tokens([AddedToken(IMAGE_TOKEN, special=True, normalized=False)], special_tokens=True)
    image_id = tok.convert_tokens_to_ids(IMAGE_TOKEN)
    if image_id >= vocab_size:
        raise UserError(f"'{IMAGE_TOKEN}' would get id {image_id} in the tokenizer of '{where}', beyond the LLM's "
                        f"{vocab_size} embedding rows")
    return image_id


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "vocab.json", "merges.txt")


def _without(value, token: str):
    if isinstance(value, list):
        return [_without(v, token) for v in value if v != token and not (isinstance(v, dict) and
                                                                          v.get("content") == token)]
    if isinstance(value, dict):
        return {k: _without(v, token) for k, v in value.items() if k != token and v != token and not (
            isinstance(v, dict) and v.get("content") == token)}
    return value


def strip_added_token(src_dir: str, out_dir: str, token: str) -> None:
    """Copies the tokenizer files of `src_dir` without the added token `token` (only ever added last, so no other
    id moves): its entries are dropped from tokenizer.json's added_tokens and from the special-token lists."""
    os.makedirs(out_dir, exist_ok=True)
    for name in TOKENIZER_FILES:
        path = os.path.join(src_dir, name)
        if not os.path.isfile(path):
            continue
        if name.endswith(".json") and name != "vocab.json":
            with open(path) as f:
                data = json.load(f)
            if name == "tokenizer.json":
                data["added_tokens"] = _without(data.get("added_tokens", []), token)
            else:
                data = _without(data, token)
            with open(os.path.join(out_dir, name), "w") as f:
                json.dump(data, f, ensure_ascii=False, indent=None if name == "tokenizer.json" else 2)
        else:
            shutil.copyfile(path, os.path.join(out_dir, name))
