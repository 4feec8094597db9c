"""`python -m oq2vl_jax.curate score` end to end: per-shard parquet scores equal transformers SiglipModel on the same
preprocessed pixels and tokens; a second run resumes (skips current shards), a changed shard is rescored; `select`
over the scores through the CLI; a bad model path is one line."""

import json
import os
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import transformers

from fixtures.paths import REPO
from fixtures.curate import N, write_datacomp_shards
from fixtures.model import randomize_
from oq2vl_jax.curate import shards as shards_lib
from oq2vl_jax.data import images
from oq2vl_jax.data.sources.selection import read_selection
from oq2vl_jax.demo import shapes as demo

VISION = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4, patch_size=4,
              image_size=28, layer_norm_eps=1e-6)
TEXT = dict(vocab_size=800, hidden_size=32, intermediate_size=40, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=12, projection_size=32, layer_norm_eps=1e-6)


def curate(*args):
    return subprocess.run([sys.executable, "-m", "oq2vl_jax.curate", *args], capture_output=True, text=True,
                          cwd=REPO, env={**os.environ, "JAX_PLATFORMS": "cpu"}, timeout=300)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("siglip"))
    cfg = transformers.SiglipConfig(text_config=dict(TEXT, hidden_act="gelu_pytorch_tanh"),
                                    vision_config=dict(VISION, hidden_act="gelu_pytorch_tanh"))
    model = randomize_(transformers.SiglipModel(cfg).to(torch.float32), seed=3)
    model.save_pretrained(path)
    demo.build_tiny_tokenizer(path)
    return path, model


@pytest.mark.slow
def test_score_cli_matches_siglip_model_and_resumes(tmp_path, model_dir):
    path, model = model_dir
    root = write_datacomp_shards(str(tmp_path / "dc"))
    out = str(tmp_path / "scores")
    r = curate("score", "--model", path, "--shards", root, "--out", out, "--batch-size", "8")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.strip().splitlines()[-1]) == {"shards": 2, "skipped_current": 0, "scored_shards": 2,
                                                            "samples": N, "unscored": 0}
    assert "samples/s" in r.stderr  # progress with rate
    tok = transformers.AutoTokenizer.from_pretrained(path)
    for name in ("00000000.tar", "00000001.tar"):
        table = pq.read_table(shards_lib.table_path(out, name, "siglip")).to_pydict()
        samples = list(shards_lib.iter_samples(os.path.join(root, name)))
        assert table["key"] == [s["key"] for s in samples] and table["uid"] == [s["uid"] for s in samples]
        pixels = np.stack([images.decode_image(s["image"], 28)[0] for s in samples]).astype(np.float32) / 127.5 - 1
        ids = tok([s["caption"] for s in samples], padding="max_length", truncation=True, max_length=12)["input_ids"]
        with torch.no_grad():
            logits = model(input_ids=torch.tensor(ids),
                           pixel_values=torch.from_numpy(pixels).permute(0, 3, 1, 2)).logits_per_image.numpy()
        np.testing.assert_allclose(table["score"], np.diag(logits), atol=1e-4)
    again = curate("score", "--model", path, "--shards", root, "--out", out, "--batch-size", "8")
    assert json.loads(again.stdout.strip().splitlines()[-1])["skipped_current"] == 2
    sel = str(tmp_path / "sel.npz")
    r = curate("select", "--shards", root, "--tables", out, "--task", "siglip", "--out", sel,
               "--rule", '{"and": [{"table": "siglip", "top_fraction": 0.5}, {"basic": {}}]}')
    assert r.returncode == 0, r.stderr
    meta, shard, _ = read_selection(sel)
    assert 0 < len(shard) <= N // 2 + 1 and meta["counts"]["rows"] == N


def test_bad_model_is_one_line(tmp_path, capsys):
    """The entry point's main() in process (the subprocess form is in the slow test above)."""
    from oq2vl_jax.curate.__main__ import main
    root = write_datacomp_shards(str(tmp_path / "dc"))
    assert main(["score", "--model", str(tmp_path / "nope"), "--shards", root, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: --model") and "nope" in err[-1]
    assert main(["select", "--shards", root, "--tables", str(tmp_path), "--rule", "{bad", "--out",
                 str(tmp_path / "s.npz")]) == 2
    assert "--rule" in capsys.readouterr().err
