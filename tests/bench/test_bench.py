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


def test_decode_interval_checks_refuse_negative_and_impossible_intervals():
    from oq2vl_jax.bench import decode as bd

    flops, rate = 2e9, 1e11  # a step of 2 GFLOP on a 100 GFLOP/s device takes >= 20 ms / PLAUSIBLE_FACTOR
    assert bd.implausible(0.02, flops, rate) is None
    assert "non-positive" in bd.implausible(-1e-3, flops, rate)
    assert "non-positive" in bd.implausible(0.0, flops, rate)
    assert "non-positive" in bd.implausible(float("nan"), flops, rate)
    assert "matmul rate" in bd.implausible(0.02 / bd.PLAUSIBLE_FACTOR / 2, flops, rate)


def _samples(token_ms, prefill_ms=100.0):
    from oq2vl_jax.bench.decode import Sample

    return [Sample(prefill_ms / 1e3, t / 1e3, (1, 2)) for t in token_ms]


def test_decode_ratio_comes_from_medians_with_the_range_of_the_repeats():
    from oq2vl_jax.bench import decode as bd

    ours = bd.summarize_side(_samples([2.0, 1.0, 4.0]), 8, 1e6, 1e11)
    theirs = bd.summarize_side(_samples([10.0, 30.0, 20.0], 300.0), 8, 1e6, 1e11)
    assert ours["token_ms"] == {"min": 1.0, "median": 2.0, "max": 4.0}
    assert ours["decode_tok_s"] == 8 / 2e-3
    row = bd.compare(ours, theirs)
    assert row["decode_speedup"] == 10.0 and row["decode_speedup_range"] == [2.5, 30.0]
    assert row["decode_speedup_fastest"] == 10.0
    assert row["prefill_speedup"] == 3.0 and row["refused"] is None


def test_decode_ratio_is_refused_when_any_repeat_is_implausible():
    from oq2vl_jax.bench import decode as bd

    ours = bd.summarize_side(_samples([2.0, 2.0, 2.0]), 8, 1e6, 1e11)
    theirs = bd.summarize_side(_samples([10.0, -0.5, 20.0]), 8, 1e6, 1e11)  # one repeat ran backwards
    row = bd.compare(ours, theirs)
    assert theirs["decode_tok_s"] is None and row["decode_speedup"] is None and "non-positive" in row["refused"]
    table = bd.format_table({"size": "small", "device": "cpu", "cpu_threads": 1, "new_tokens": 4, "repeats": 3,
                             "rows": [{"batch": 8, "prompt_tokens": 83, "ours": {**ours, "peak_mem_gib": None},
                                       "transformers": {**theirs, "peak_mem_gib": None}, **row,
                                       "same_tokens": True}]})
    assert "refused: non-positive" in table and "| 8 | 83 |" in table
    assert all(line.count("|") == table.splitlines()[1].count("|") for line in table.splitlines()[1:])


@pytest.mark.slow
def test_decode_benchmark_runs_both_sides_on_the_same_weights():
    from oq2vl_jax.bench import decode as bench_decode

    rows = []
    result = bench_decode.run_decode_bench("small", batches=(2,), new_tokens=4, repeats=2,
                                           on_row=lambda r: rows.append(len(r["rows"])))
    row = result["rows"][0]
    assert rows == [1]  # the partial result was handed over after the batch size
    assert row["same_tokens"] and len(row["ours"]["first_row_tokens"]) == 4
    for side in ("ours", "transformers"):
        assert row[side]["repeats"] == 2 and row[side]["refused"] is None
        assert 0 < row[side]["token_ms"]["min"] <= row[side]["token_ms"]["median"] <= row[side]["token_ms"]["max"]
    assert row["decode_speedup"] > 0
    assert "| 2 |" in bench_decode.format_table(result)
