"""demo/sft.py (synthetic SFT conversations, written once, never over someone's files) and the pieces of
demo/answers.py that need no model."""

from __future__ import annotations

import json
import os
import runpy

import numpy as np
import pytest

from fixtures.paths import REPO
from oq2vl_jax.demo import sft as demo_sft
from oq2vl_jax.demo.answers import answer_spans, blind_baseline
from oq2vl_jax.errors import UserError



def test_conversations(tmp_path):
    paths = demo_sft.write_sft_demo(str(tmp_path), num_train=24, num_eval=6, image_size=16, seed=2)
    train = json.load(open(paths["train"]))
    assert len(train) == 24 and len(json.load(open(paths["eval"]))) == 6
    for i, record in enumerate(train):
        turns = record["conversations"]
        assert [t["from"] for t in turns] == ["human", "gpt"] * (len(turns) // 2)
        assert len(record["answer_kinds"]) == len(turns) // 2
        if i % 6 == 5:
            assert "image" not in record and set(record["answer_kinds"]) == {"text"}
        else:
            assert os.path.exists(os.path.join(paths["image_root"], record["image"]))
            assert turns[0]["value"].startswith("<image>\n") and all(t["value"][0].isupper() for t in turns[1::2])
            colour = record["colour"].capitalize() + "."
            assert all(a["value"] == colour for a, k in zip(turns[1::2], record["answer_kinds"]) if k == "colour")


def test_prepare_writes_once_and_refuses_foreign_dirs(tmp_path):
    config = runpy.run_path(os.path.join(REPO, "configs", "demo_sft.py"))["get_config"]()
    config.demo_sft.update(num_train=12, num_eval=4)
    paths = demo_sft.prepare_sft_demo(config, str(tmp_path))
    assert config.data.sources[0]["path"] == paths["train"] and config.data.sources[0]["kind"] == "llava"
    assert config.data.eval_sources[0]["path"] == paths["eval"]
    mtime = os.stat(paths["train"]).st_mtime_ns
    again = runpy.run_path(os.path.join(REPO, "configs", "demo_sft.py"))["get_config"]()
    assert demo_sft.prepare_sft_demo(again, str(tmp_path)) == paths and os.stat(paths["train"]).st_mtime_ns == mtime
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    config = runpy.run_path(os.path.join(REPO, "configs", "demo_sft.py"))["get_config"]()
    config.demo_sft.data_dir = str(foreign)
    with pytest.raises(UserError, match="refusing"):
        demo_sft.prepare_sft_demo(config, str(tmp_path))
    assert (foreign / "notes.txt").read_text() == "keep me"
    config.data.sources = ({"kind": "llava", "path": "/data/x.json"},)  # the user's data: left alone
    assert demo_sft.prepare_sft_demo(config, str(tmp_path)) is None


def test_answer_spans_and_blind_baseline(tmp_path):
    mask = np.array([0, 0, 1, 1, 1, 0, 0, 1, 1], bool)
    assert answer_spans(mask) == [(2, 5), (7, 9)] and answer_spans(np.zeros(3, bool)) == []
    paths = demo_sft.write_sft_demo(str(tmp_path), num_train=60, num_eval=12, image_size=16, seed=0)
    scores = blind_baseline(paths["train"], json.load(open(paths["eval"])))
    assert scores["text"] == 1.0  # one fixed answer per text question
    assert all(0.0 <= v <= 1.0 for v in scores.values()) and scores.get("describe", 0.0) < 0.5
