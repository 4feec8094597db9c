"""The Qwen2 tokenizer as the reference sets it up: its special tokens, loading it offline, and preparing the copy a
checkpoint carries. Imported by data (documents), convert (import / export), training (the checkpoint's tokenizer)
and inference; this is the one place these facts live.

The reference adds `<|endofchunk|>` and `<s>` as additional special tokens to the Qwen2 tokenizer (so they get ids
len(tokenizer), len + 1: 151665 and 151666 for Qwen2.5) and makes `<s>` the BOS
(`prismatic-vlms/prismatic/models/materialize.py`, docs/data.md). A tokenizer that already has them (one prepared
here and saved with a checkpoint) keeps its ids: only missing tokens are added.
"""

from __future__ import annotations

import os
import string

from oq2vl_jax.errors import UserError

REQUIRED_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")  # present in every Qwen2 / Qwen2.5 tokenizer
ENDOFCHUNK_TOKEN = "<|endofchunk|>"
BOS_TOKEN = "<s>"
ADDED_TOKENS = (ENDOFCHUNK_TOKEN, BOS_TOKEN)  # in this order: their ids are len(tokenizer), len + 1
EOS_TOKEN = "<|im_end|>"
PAD_TOKEN = "<|endoftext|>"
IM_START_TOKEN = "<|im_start|>"
IMAGE_TOKEN = "<image>"  # LLaVA's image placeholder; in captions the reference escapes it
IMAGE_TOKEN_ESCAPED = "<image-placeholder>"
MODEL_MAX_LENGTH = 4096  # what the reference saves with its tokenizer
# The reference's `string2idx` asserts each of these is one token (prismatic-vlms/prismatic/models/vlms/prismatic.py).
SINGLE_TOKEN_WORDS = ("True", "False", "Yes", "No", *string.ascii_uppercase)


def open_tokenizer(tokenizer_dir: str, *, what: str = "tokenizer directory", model_max_length: int | None = None):
    """A HF fast tokenizer, loaded offline and unchanged (from a local copy when it is in a bucket). `what` names the
    setting in error messages."""
    from oq2vl_jax.storage import local_copy, paths as storage

    if tokenizer_dir and storage.is_remote(tokenizer_dir) and storage.isdir(tokenizer_dir):
        tokenizer_dir = local_copy.local_dir(tokenizer_dir)
    if not tokenizer_dir or not os.path.isdir(tokenizer_dir):
        raise UserError(f"{what}: {tokenizer_dir!r} is not a directory; point it at a local HF tokenizer directory "
                        "(tokenizer.json + tokenizer_config.json): the LLM's, or one built from your captions with "
                        "`python -m oq2vl_jax.data.build_tokenizer SHARDS --out DIR`")
    from transformers import AutoTokenizer  # lazy: data worker processes never need transformers

    kwargs = {} if model_max_length is None else {"model_max_length": model_max_length}
    try:
        tok = AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True, **kwargs)
    except Exception as e:
        raise UserError(f"{what}: cannot load a tokenizer from {tokenizer_dir!r} ({type(e).__name__}: {e})") from e
    if not getattr(tok, "is_fast", False) or getattr(tok, "backend_tokenizer", None) is None:
        raise UserError(f"{what}: {tokenizer_dir!r} loads a slow tokenizer; a fast tokenizer (tokenizer.json) is "
                        "required")
    return tok


def check_qwen2(tok, where: str, *, single_token_words: bool = True, what: str = "") -> None:
    """The Qwen2 special tokens are there (and, with single_token_words, the words the reference needs as single
    tokens are). `what` (a config field) prefixes the message when given."""
    vocab = tok.get_vocab()
    missing = [t for t in REQUIRED_TOKENS if t not in vocab]
    if missing:
        raise UserError(f"{what + ': ' if what else ''}the tokenizer in {where!r} lacks the Qwen2 special tokens {missing}; use the Qwen2 / "
                        "Qwen2.5 tokenizer the LLM was trained with")
    if single_token_words:
        multi = [w for w in SINGLE_TOKEN_WORDS if len(tok.encode(w, add_special_tokens=False)) != 1]
        if multi:
            raise UserError(f"the tokenizer in {where!r} splits {multi[:6]} into several tokens; the reference "
                            "requires each to be a single token (it is not a Qwen2 tokenizer)")


def add_reference_tokens(tok) -> None:
    """Adds the reference's special tokens (no-op for ones already there) and makes `<s>` the BOS."""
    present = set(tok.get_vocab())
    new = [t for t in ADDED_TOKENS if t not in present]
    if new:
        tok.add_special_tokens({"additional_special_tokens": new}, replace_extra_special_tokens=False)
    tok.bos_token = BOS_TOKEN
    if tok.pad_token is None:
        tok.pad_token = PAD_TOKEN


def load_tokenizer(tokenizer_dir: str, model_max_length: int = MODEL_MAX_LENGTH, *, what: str = "data.tokenizer_dir"):
    """The tokenizer the data pipeline encodes with: loaded offline, Qwen2 special tokens checked, the reference's
    tokens added. Raises UserError naming `what`."""
    tok = open_tokenizer(tokenizer_dir, what=what, model_max_length=model_max_length)
    check_qwen2(tok, tokenizer_dir, single_token_words=False, what=what)
    add_reference_tokens(tok)
    return tok


def token_ids(tok) -> dict:
    """The ids that matter, of a tokenizer with the reference's tokens."""
    ids = tok.convert_tokens_to_ids
    return {"bos": ids(BOS_TOKEN), "endofchunk": ids(ENDOFCHUNK_TOKEN), "eos": ids(EOS_TOKEN),
            "pad": ids(PAD_TOKEN), "im_start": ids(IM_START_TOKEN), "size": len(tok)}


def check_fits(tok, vocab_size: int, where: str) -> None:
    over = {t: i for t, i in tok.get_vocab().items() if i >= vocab_size}
    if over:
        raise UserError(f"the tokenizer in {where!r} has ids {sorted(over.items(), key=lambda x: x[1])[:4]} beyond "
                        f"the LLM's embedding rows ({vocab_size}); the tokenizer does not belong to this LLM")


def prepare(src_dir: str, out_dir: str, *, vocab_size: int) -> dict:
    """Checks, extends and saves the tokenizer in `src_dir` to `out_dir` (the copy a checkpoint carries); returns
    `token_ids`. Every id must index one of the LLM's `vocab_size` embedding rows."""
    tok = open_tokenizer(src_dir)
    check_qwen2(tok, src_dir)
    add_reference_tokens(tok)
    tok.model_max_length = MODEL_MAX_LENGTH
    tok.padding_side = "right"
    check_fits(tok, vocab_size, src_dir)
    tok.save_pretrained(out_dir)
    return token_ids(tok)
