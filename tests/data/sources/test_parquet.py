"""Hugging Face parquet datasets: a fixture in the published SynthDoG layout (data/train-*.parquet, `image` as the
datasets Image struct {bytes, path}, `ground_truth` JSON with gt_parse.text_sequence) goes through the pipeline into
a VLM loss; random access across row groups, per-host sharding, bad rows counted."""

import dataclasses
import json
import os

import jax
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from flax import nnx

from fixtures.data import base_config, image_bytes, sample_numbers, tiny_tokenizer, tiny_tokenizer_dir  # noqa: F401
from oq2vl_jax.batch import validate_batch
from oq2vl_jax.data import pipeline
from oq2vl_jax.data.sources.parquet import ParquetSource
from oq2vl_jax.data.sources.registry import open_source
from oq2vl_jax.errors import UserError
from oq2vl_jax.models.presets import ModelOptions, VLMConfig, llm_preset, vision_preset
from oq2vl_jax.models.vlm import VLM

N = 22
T = 9


def write_synthdog(root: str, bad_rows: bool = False) -> str:
    """Two files `data/train-0000k-of-00002.parquet`, row groups of 4 rows."""
    os.makedirs(os.path.join(root, "data"), exist_ok=True)
    rows = []
    for i in range(N):
        colour = ((i * 37) % 256, (i * 91) % 256, (i * 53) % 256)
        rows.append({"image": {"bytes": image_bytes((12, 10), colour), "path": f"{i}.jpg"},
                     "ground_truth": json.dumps({"gt_parse": {"text_sequence": f"sample {i} is a red circle"}})})
    if bad_rows:
        rows.append({"image": {"bytes": image_bytes(), "path": "x.jpg"}, "ground_truth": "{not json"})
        rows.append({"image": {"bytes": None, "path": "y.jpg"}, "ground_truth": json.dumps({"gt_parse": {
            "text_sequence": "no image"}})})
    half = len(rows) // 2
    for k, part in enumerate((rows[:half], rows[half:])):
        table = pa.Table.from_pylist(part)
        pq.write_table(table, os.path.join(root, "data", f"train-{k:05d}-of-00002.parquet"), row_group_size=4)
    return root


def spec(root):
    return {"kind": "parquet", "path": os.path.join(root, "data", "train-*.parquet"), "image_column": "image",
            "text_column": "ground_truth", "text_json_path": "gt_parse.text_sequence"}


def test_random_access_across_row_groups(tmp_path):
    root = write_synthdog(str(tmp_path / "sd"), bad_rows=True)
    source = open_source(spec(root))
    assert isinstance(source, ParquetSource) and len(source) == N + 2
    order = np.random.default_rng(0).permutation(N)
    for i in order:
        text = source[int(i)]["documents"][0]["parts"][1][1]
        assert text == f"sample {i} is a red circle"
    assert source[N]["skips"] == {"record_unreadable": 1} and source[N + 1]["skips"] == {"image_missing": 1}
    with pytest.raises(UserError, match="no column 'text'"):
        open_source(dict(spec(root), text_column="text"))


def test_synthdog_layout_trains_through_the_pipeline(tmp_path, tiny_tokenizer_dir, tiny_tokenizer):
    root = write_synthdog(str(tmp_path / "sd"))
    cfg = base_config(tiny_tokenizer_dir, [spec(root)], num_epochs=1, image_size=28)
    kwargs = dict(tokens_per_image=T, rows_per_batch=2, seed=0)
    batches = list(pipeline.build_iterator(cfg, process_index=0, process_count=1, **kwargs))
    assert sorted(n for b in batches for n in sample_numbers(b, tiny_tokenizer)) == list(range(N))
    per_host = [sorted(n for b in pipeline.build_iterator(cfg, process_index=h, process_count=2, **kwargs)
                       for n in sample_numbers(b, tiny_tokenizer)) for h in range(2)]
    assert not set(per_host[0]) & set(per_host[1]) and sorted(per_host[0] + per_host[1]) == list(range(N))
    vocab = pipeline.model_vocab_size(cfg)
    config = VLMConfig(vision=vision_preset("siglip-tiny"),
                       llm=dataclasses.replace(llm_preset("qwen2-tiny"), vocab_size=vocab), tokens_per_image=T)
    batch = batches[0]
    validate_batch(batch, T, require_loss=True)
    model = VLM(config, ModelOptions(attention="xla"), rngs=nnx.Rngs(0))
    total, weight = jax.jit(lambda m, b: m.loss(b))(model, {k: v for k, v in batch.items() if k != "stats"})
    assert float(weight) > 0 and np.isfinite(float(total))


def test_read_threads_never_share_a_parquet_reader_at_once(tmp_path, monkeypatch):
    """Grain's read threads index one source at once; a pyarrow ParquetFile is not thread-safe (concurrent
    read_row_group on one handle segfaulted), so row groups are read one at a time, and the records are unchanged."""
    import threading
    import time

    src = open_source(spec(write_synthdog(str(tmp_path))))
    expected = [src[i] for i in range(len(src))]
    real, active, peak, guard = pq.ParquetFile, [0], [0], threading.Lock()

    class Watched:
        def __init__(self, *args, **kwargs):
            self._file = real(*args, **kwargs)

        def __getattr__(self, name):  # metadata, schema: the real reader's
            return getattr(self._file, name)

        def read_row_group(self, *args, **kwargs):
            with guard:
                active[0] += 1
                peak[0] = max(peak[0], active[0])
            time.sleep(0.005)
            try:
                return self._file.read_row_group(*args, **kwargs)
            finally:
                with guard:
                    active[0] -= 1

    monkeypatch.setattr(pq, "ParquetFile", Watched)
    fresh = open_source(spec(str(tmp_path)))
    barrier, got = threading.Barrier(8), {}

    def work(t):
        barrier.wait()
        for i in range(t, len(fresh), 8):
            got[i] = fresh[i]

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert peak[0] == 1
    assert [got[i] for i in range(len(fresh))] == expected
