"""Tokenizer files of a model directory: copied alone (no weights, no config.json)."""

import os

from oq2vl_jax.text import tokenizer_files


def test_copy_files_takes_only_the_tokenizer_files(tmp_path):
    src, out = tmp_path / "model", tmp_path / "tok"
    src.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "config.json", "model.safetensors"):
        (src / name).write_text(name)
    tokenizer_files.copy_files(str(src), str(out))
    assert sorted(os.listdir(out)) == ["tokenizer.json", "tokenizer_config.json"]
    assert (out / "tokenizer.json").read_text() == "tokenizer.json"
