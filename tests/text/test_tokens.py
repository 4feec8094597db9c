"""oq2vl_jax/text/tokens.py: the reference's special tokens on a Qwen2-style tokenizer, loading errors, and the copy a
checkpoint carries (prepared once, ids unchanged when loaded again)."""

import json
import os

import pytest

from fixtures.data import tiny_tokenizer_dir  # noqa: F401  (fixture)
from oq2vl_jax.errors import UserError
from oq2vl_jax.text import tokens


def test_load_tokenizer_adds_reference_tokens(tiny_tokenizer_dir):
    with open(os.path.join(tiny_tokenizer_dir, "tokenizer.json")) as f:
        base_size = len(json.load(f)["model"]["vocab"])
    tok = tokens.load_tokenizer(tiny_tokenizer_dir)
    assert len(tok) == base_size + 2
    assert tok.convert_tokens_to_ids("<|endofchunk|>") == base_size
    assert tok.bos_token == "<s>" and tok.bos_token_id == base_size + 1
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    assert tok("<s>a", add_special_tokens=False)["input_ids"][0] == tok.bos_token_id  # matched as a special token


def test_load_tokenizer_errors(tmp_path, tiny_tokenizer_dir):
    with pytest.raises(UserError, match="tokenizer_dir"):
        tokens.load_tokenizer(str(tmp_path / "nope"))
    with pytest.raises(UserError, match="cannot load"):
        tokens.load_tokenizer(str(tmp_path))  # empty directory
    # a tokenizer without <|im_start|>
    spec = json.load(open(os.path.join(tiny_tokenizer_dir, "tokenizer.json")))
    spec["added_tokens"] = [t for t in spec["added_tokens"] if t["content"] != "<|im_start|>"]
    spec["model"]["vocab"].pop("<|im_start|>")
    (tmp_path / "bad").mkdir()
    json.dump(spec, open(tmp_path / "bad" / "tokenizer.json", "w"))
    (tmp_path / "bad" / "tokenizer_config.json").write_text(
        open(os.path.join(tiny_tokenizer_dir, "tokenizer_config.json")).read())
    with pytest.raises(UserError, match=r"<\|im_start\|>"):
        tokens.load_tokenizer(str(tmp_path / "bad"))


def test_prepared_copy_keeps_its_ids_when_loaded_again(tmp_path, tiny_tokenizer_dir):  # noqa: F811
    ids = tokens.prepare(tiny_tokenizer_dir, str(tmp_path / "tok"), vocab_size=1024)
    loaded = tokens.load_tokenizer(str(tmp_path / "tok"))
    assert tokens.token_ids(loaded) == ids == tokens.token_ids(tokens.load_tokenizer(tiny_tokenizer_dir))
    assert ids["endofchunk"] + 1 == ids["bos"] == ids["size"] - 1
    assert loaded.bos_token == tokens.BOS_TOKEN and loaded.model_max_length == tokens.MODEL_MAX_LENGTH


def test_prepare_refuses_a_tokenizer_larger_than_the_embedding(tmp_path, tiny_tokenizer_dir):  # noqa: F811
    with pytest.raises(UserError, match="beyond the LLM's embedding rows"):
        tokens.prepare(tiny_tokenizer_dir, str(tmp_path / "tok"), vocab_size=100)
    assert not os.path.exists(tmp_path / "tok")
