"""The step benchmark and its synthetic rows (the benchmark itself runs on GPUs; here its tiny mode on CPU)."""

import jax
import numpy as np
import pytest

from configs import demo
from oq2vl_jax.batch import validate_batch
from oq2vl_jax.bench import step as bench
from oq2vl_jax.bench.shapes import pretraining_rows
from oq2vl_jax.models.presets import open_qwen2vl


def test_pretraining_rows_look_like_the_papers_packed_data():
    rows = pretraining_rows(8, config=open_qwen2vl(144), images_per_row=32, slots=32, seed=1)
    validate_batch(rows, 144, require_loss=True)
    images = rows["image_valid"].sum(1)
    assert 22 <= images.mean() <= 27  # ~25 caption documents of 146 + ~20 tokens fill a 4096-token row
    assert (rows["segment_ids"] > 0).mean() > 0.95
    docs = [len(np.unique(r[r > 0])) for r in rows["segment_ids"]]
    assert docs == images.tolist()  # one image per caption document


def test_tiny_step_benchmark_runs_and_counts_flops():
    cfg = demo.get_config()
    cfg.train.stage = "pretrain"  # the GPU configs' stage: frozen vision tower, decay mask over trained towers only
    result = bench.run_step_bench(cfg, rows=2, steps=1, warmup=1, tiny=True, matmul_size=0,
                                    devices=jax.devices()[:1])
    assert result["step_ms"] > 0 and np.isfinite(result["loss"])
    assert result["tokens_per_s"] == result["real_tokens"] / (result["step_ms"] / 1e3)
    assert result["tflops_per_device"] > 0


@pytest.mark.slow
def test_decode_benchmark_runs_both_sides_on_the_same_weights():
    from oq2vl_jax.bench import decode as bench_decode

    result = bench_decode.run_decode_bench("small", batches=(2,), new_tokens=4, repeats=1)
    row = result["rows"][0]
    assert row["same_tokens"] and len(row["ours"]["first_row_tokens"]) == 4
    assert row["ours"]["decode_tok_s"] > 0 and row["transformers"]["decode_tok_s"] > 0
    assert "| 2 |" in bench_decode.format_table(result)
