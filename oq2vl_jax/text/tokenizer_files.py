"""LLaVA's `<image>` token on the tokenizer of an export, its removal on import, and copying a model directory's
tokenizer files. Everything else about the tokenizer (the reference's special tokens, loading, preparing a
checkpoint's copy) is in oq2vl_jax/text/tokens.py."""

from __future__ import annotations

import json
import os
import shutil

from oq2vl_jax.errors import UserError
from oq2vl_jax.text.tokens import IMAGE_TOKEN

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "vocab.json", "merges.txt")


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


def copy_files(src_dir: str, out_dir: str) -> None:
    """Copies the tokenizer files of a model directory (whose config.json may name a model transformers does not
    know) into a directory of their own."""
    os.makedirs(out_dir, exist_ok=True)
    for name in TOKENIZER_FILES:
        if os.path.isfile(os.path.join(src_dir, name)):
            shutil.copyfile(os.path.join(src_dir, name), os.path.join(out_dir, name))
