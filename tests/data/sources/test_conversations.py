"""data/sources/conversations.py: LLaVA / MAmmoTH-VL sources read lazily, unusable images counted (kept text-only or
skipped), and SFT documents through the whole pipeline (packed and one conversation per row)."""

from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest

from fixtures.data import base_config, image_bytes, tiny_tokenizer, tiny_tokenizer_dir  # noqa: F401 (fixtures)
from oq2vl_jax.batch import validate_batch
from oq2vl_jax.data import pipeline
from oq2vl_jax.data.sources.conversations import ConversationFormatter, LlavaSource, MammothSource
from oq2vl_jax.data.sources.registry import open_source
from oq2vl_jax.errors import UserError
from oq2vl_jax.text import chat
from oq2vl_jax.text.documents import TextEncoder

T = 8


def turns(q="<image>\nWhat colour is the shape?", a="Red."):
    return [{"from": "human", "value": q}, {"from": "gpt", "value": a}]


@pytest.fixture()
def llava_dir(tmp_path):
    (tmp_path / "coco").mkdir()
    for name, colour in (("a.jpg", (200, 30, 30)), ("b.jpg", (30, 30, 200))):
        (tmp_path / "coco" / name).write_bytes(image_bytes((20, 16), colour))
    (tmp_path / "coco" / "corrupt.jpg").write_bytes(b"not an image")
    records = [
        {"id": "one", "image": "coco/a.jpg", "conversations": turns()},
        {"id": "two", "image": ["coco/a.jpg", "coco/b.jpg"],
         "conversations": turns("<image>\n<image>\nWhich one is blue?", "The second.")},
        {"id": "text", "conversations": turns("What is a circle?", "A round shape.")},
        {"id": "gone", "image": "coco/missing.jpg", "conversations": turns()},
        {"id": "corrupt", "image": "coco/corrupt.jpg", "conversations": turns()},
        {"id": "badroles", "conversations": [{"from": "robot", "value": "x"}, {"from": "gpt", "value": "y"}]},
        {"id": "broken"},
        {"id": "multi", "image": "coco/b.jpg", "conversations": turns() + turns("Where is it?", "In the center.")},
    ]
    (tmp_path / "llava.json").write_text(json.dumps(records, indent=1))
    return tmp_path, records


def test_llava_source_records(llava_dir):
    root, records = llava_dir
    src = open_source({"kind": "llava", "path": str(root / "llava.json"), "image_root": str(root)})
    assert isinstance(src, LlavaSource) and len(src) == len(records)
    r0, r1 = src[0], src[1]
    assert r0["images"] == [(root / "coco" / "a.jpg").read_bytes()] and r0["key"] == "one" and r0["skips"] == {}
    assert r0["conversations"] == records[0]["conversations"]
    assert len(r1["images"]) == 2 and r1["image_paths"][1].endswith("coco/b.jpg")
    assert src[2]["images"] == [] and src[3]["images"] == [None]  # missing file: decided by the formatter
    assert src[6]["skips"] == {"record_unreadable": 1}
    clone = pickle.loads(pickle.dumps(src))
    assert clone.records._entries is None and clone[7]["conversations"] == records[7]["conversations"]


@pytest.mark.parametrize("policy", ["text_only", "skip"])
def test_formatter_counts_unusable_images(llava_dir, tiny_tokenizer, policy):
    root, _ = llava_dir
    src = LlavaSource(str(root / "llava.json"), image_root=str(root))
    fmt = ConversationFormatter(TextEncoder.from_tokenizer(tiny_tokenizer), chat_format="open_qwen2vl",
                                tokens_per_image=T, max_image_pixels=10**8, missing_image=policy)
    out = [fmt(src[i]) for i in (0, 1, 2, 3, 4, 5)]
    assert [len(docs) for docs, _ in out[:3]] == [1, 1, 1]
    assert [d[0][0].num_images for d, _ in out[:3]] == [1, 2, 0] and len(out[1][0][0][1]) == 2
    assert out[5] == ([], {"conversation_invalid": 1})
    if policy == "text_only":
        assert out[3][1] == {"repaired_image_dropped": 1} and out[4][1] == {"repaired_image_dropped": 1}
        layout, images = out[3][0][0]
        expected = chat.conversation_document(turns("What colour is the shape?"), "open_qwen2vl", tiny_tokenizer, T)
        assert images == [] and np.array_equal(layout.ids, expected.layout.ids)
    else:
        assert out[3] == ([], {"image_missing": 1}) and out[4] == ([], {"image_corrupt": 1})


def test_mammoth_split_and_raw_layouts(tmp_path):
    split = tmp_path / "instruction_si_split"
    split.mkdir()
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "a.jpg").write_bytes(image_bytes())
    sample = {"id": "s1", "image": "a.jpg", "source": "x", "conversations": turns()}
    text = {"id": "t1", "source": "y", "conversations": turns("q", "a")}
    json.dump(sample, open(split / "a_jpg.json", "w"))
    json.dump(text, open(split / "yt1.json", "w"))
    lines = [{"path": "a_jpg.json", "length": 731}, {"path": "yt1.json", "length": 2}, {"path": "gone", "length": 1}]
    jsonl = tmp_path / "mammoth_si_10M_simple.jsonl"
    jsonl.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    src = open_source({"kind": "mammoth", "path": str(jsonl), "image_root": str(tmp_path / "imgs")})
    assert isinstance(src, MammothSource) and len(src) == 3
    assert src[0]["images"] == [image_bytes()] and src[0]["key"] == "s1"
    assert src[1]["images"] == [] and src[1]["conversations"] == text["conversations"]
    assert src[2]["skips"] == {"record_unreadable": 1}
    raw = tmp_path / "mammoth_si_10M.json"  # the raw form: a LLaVA-style list, read through the same index
    raw.write_text(json.dumps([sample, text]))
    src = MammothSource(str(raw), image_root=str(tmp_path / "imgs"))
    assert len(src) == 2 and src[0]["images"] == [image_bytes()] and src[1]["key"] == "t1"


def _conversations(cfg, rows, tpi=T):
    batches = []
    for batch in pipeline.build_iterator(cfg, tokens_per_image=tpi, rows_per_batch=rows, seed=0):
        validate_batch(batch, tpi, require_loss=True)
        batches.append(batch)
    return batches


@pytest.mark.parametrize("packing", ["ffd_fill", "none"])
def test_sft_through_the_pipeline(llava_dir, tiny_tokenizer_dir, tiny_tokenizer, packing):
    root, records = llava_dir
    spec = {"kind": "llava", "path": str(root / "llava.json"), "image_root": str(root)}
    cfg = base_config(tiny_tokenizer_dir, [spec], num_epochs=1, packing=packing, shuffle=False, shuffle_rows=False,
                      row_length=96)
    batches = _conversations(cfg, rows=2)
    stats = {k: sum(b["stats"][k] for b in batches) for k in batches[0]["stats"]}
    # kept: one, two, text, gone (text-only), corrupt (text-only), multi; rejected: badroles; unreadable: broken
    assert stats["documents"] == 6 and stats["num_images"] == 4
    assert stats["repaired_image_dropped"] == 2 and stats["conversation_invalid"] == 1
    assert stats["record_unreadable"] == 1
    trained = []
    for b in batches:
        for r in range(b["input_ids"].shape[0]):
            if packing == "none":
                assert b["segment_ids"][r].max() <= 1  # one conversation per row
            if b["segment_ids"][r].max() > 0 and not b["image_mask"][r].any():
                assert not b["image_valid"][r].any()  # text-only row: no image slot, no vision compute
            trained.append(tiny_tokenizer.decode(b["targets"][r][b["loss_weights"][r] > 0]))
    answers = "".join(trained)
    for answer in ("Red.", "The second.", "A round shape.", "In the center."):
        assert answer + "<|im_end|>\n" in answers
    assert "What colour" not in answers and "assistant" not in answers


def test_truncated_conversations(llava_dir, tiny_tokenizer_dir, tiny_tokenizer):
    """Cut at the row length (never through the image): kept while an answer token is left, else counted."""
    root, _ = llava_dir
    long_question = "<image>\n" + "What colour is the shape? " * 30
    records = [{"id": "long", "image": "coco/a.jpg", "conversations": turns(long_question, "Red.")},
               {"id": "cut", "image": "coco/a.jpg", "conversations": turns() + turns(long_question[8:], "Blue.")}]
    (root / "long.json").write_text(json.dumps(records))
    spec = {"kind": "llava", "path": str(root / "long.json"), "image_root": str(root)}
    batches = _conversations(base_config(tiny_tokenizer_dir, [spec], num_epochs=1, row_length=96), rows=2)
    stats = {k: sum(b["stats"][k] for b in batches) for k in batches[0]["stats"]}
    assert stats["conversation_invalid"] == 1 and stats["truncated_overlong"] == 1 and stats["documents"] == 1
    kept = batches[0]["targets"][batches[0]["loss_weights"] > 0]
    assert tiny_tokenizer.decode(kept).startswith("Red.<|im_end|>")


def test_sft_config_errors(llava_dir, tiny_tokenizer_dir):
    root, _ = llava_dir
    spec = {"kind": "llava", "path": str(root / "llava.json"), "image_root": str(root)}
    for field, value in (("chat_format", "vicuna"), ("missing_image", "grey")):
        with pytest.raises(UserError, match=f"data.{field}"):
            _conversations(base_config(tiny_tokenizer_dir, [spec], **{field: value}), rows=1)
