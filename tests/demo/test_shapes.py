import io
import json
import os
import tarfile

import numpy as np
from PIL import Image

from oq2vl_jax.data.sources.webdataset import WebDatasetSource
from oq2vl_jax.demo import shapes as demo


def test_demo_dataset_layout_and_captions(tmp_path):
    paths = demo.write_demo_dataset(str(tmp_path), num_train=40, num_eval=10, image_size=48, seed=3, num_sft=12,
                                    shard_size=16)
    assert sorted(os.listdir(paths["train"])) == ["00000.tar", "00001.tar", "00002.tar"]
    assert os.listdir(paths["eval"]) == ["00000.tar"]
    with tarfile.open(os.path.join(paths["train"], "00000.tar")) as tar:
        names = tar.getnames()
        meta = json.load(tar.extractfile(names[2]))
        image = Image.open(io.BytesIO(tar.extractfile(names[0]).read()))
        caption = tar.extractfile(names[1]).read().decode()
    assert names[:3] == ["train000000.jpg", "train000000.txt", "train000000.json"]
    assert image.size == (48, 48) and meta["caption"] == caption
    truth = {k: meta[k] for k in ("colour", "shape", "position")}
    assert demo.attributes_in_text(caption) == truth and demo.score_attributes(caption, truth) == 1.0
    # the shape is drawn where the caption says, in the named colour
    arr = np.asarray(image.convert("RGB")).astype(int)
    cy = {"top": 12, "bottom": 36}.get(meta["position"].split()[0], 24)
    cx = {"left": 12, "right": 36}.get(meta["position"].split()[-1], 24)
    assert np.abs(arr[cy, cx] - demo.COLOURS[meta["colour"]]).max() < 40
    assert len(WebDatasetSource(paths["train"])) == 40 and len(WebDatasetSource(paths["eval"])) == 10
    held_out = [json.loads(line) for line in open(paths["eval_meta"])]
    assert len(held_out) == 10 and all(h["key"].startswith("eval") for h in held_out)
    sft = json.load(open(paths["sft_json"]))
    assert len(sft) == 12
    for record in sft:
        assert os.path.exists(os.path.join(paths["sft_image_root"], record["image"]))
        turns = record["conversations"]
        assert [t["from"] for t in turns] == ["human", "gpt"] * (len(turns) // 2)
        assert turns[0]["value"].startswith("<image>\n")


def test_demo_is_deterministic_per_seed(tmp_path):
    a = demo.write_demo_dataset(str(tmp_path / "a"), num_train=8, num_eval=2, seed=1, num_sft=2, with_tokenizer=False)
    b = demo.write_demo_dataset(str(tmp_path / "b"), num_train=8, num_eval=2, seed=1, num_sft=2, with_tokenizer=False)
    c = demo.write_demo_dataset(str(tmp_path / "c"), num_train=8, num_eval=2, seed=2, num_sft=2, with_tokenizer=False)
    read = lambda p: open(os.path.join(p["train"], "00000.tar"), "rb").read()  # noqa: E731
    assert read(a) == read(b) != read(c)


def test_attribute_scoring():
    truth = {"colour": "green", "shape": "star", "position": "bottom right"}
    assert demo.score_attributes("A green star at the bottom right.", truth) == 1.0
    assert demo.score_attributes("a green circle at the top left", truth) == 1 / 3
    assert demo.attributes_in_text("nothing here") == {"colour": None, "shape": None, "position": None}
    assert demo.caption_for("red", "circle", "top left") == "a red circle at the top left"
    assert demo.caption_for("red", "circle", "center") == "a red circle in the center"


def test_tiny_tokenizer_loads_offline_with_qwen2_specials(tmp_path):
    from transformers import AutoTokenizer

    out = demo.build_tiny_tokenizer(str(tmp_path / "tok"), texts=["an extra zebra sentence"])
    assert out == str(tmp_path / "tok")
    assert sorted(os.listdir(out)) == ["tokenizer.json", "tokenizer_config.json"]
    tok = AutoTokenizer.from_pretrained(out, local_files_only=True)
    assert 512 <= len(tok) <= 1024
    vocab = tok.get_vocab()
    assert all(t in vocab for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>"))
    assert tok.pad_token == "<|endoftext|>" and tok.eos_token == "<|im_end|>"
    text = "a purple diamond at the bottom right"
    assert tok.decode(tok(text)["input_ids"]) == text
    assert len(tok("a red circle")["input_ids"]) <= 4  # trained on the demo vocabulary: whole words
    for word in ("Yes", "No", "True", "False"):
        assert len(tok(word, add_special_tokens=False)["input_ids"]) == 1
    again = demo.build_tiny_tokenizer(str(tmp_path / "tok2"), texts=["an extra zebra sentence"])
    assert open(os.path.join(out, "tokenizer.json")).read() == open(os.path.join(again, "tokenizer.json")).read()
