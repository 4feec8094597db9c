"""JSONL + TensorBoard writing, resume truncation, rates and the progress line."""

import json
import os

import pytest

from oq2vl_jax.training import metrics


def test_writer_jsonl_tensorboard_and_truncation(tmp_path):
    writer = metrics.MetricsWriter(str(tmp_path), enabled=True)
    for step in range(1, 6):
        writer.write({"step": step, "loss": 1.0 / step, "lr": 0.1})
    writer.close()
    records = metrics.read_metrics(str(tmp_path))
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5]
    events = os.listdir(tmp_path / metrics.TENSORBOARD_DIR)
    assert events and all(e.startswith("events.out.tfevents") for e in events)
    metrics.truncate_metrics(str(tmp_path), 3)
    assert [r["step"] for r in metrics.read_metrics(str(tmp_path))] == [1, 2, 3]
    disabled = metrics.MetricsWriter(str(tmp_path / "other"), enabled=False)
    disabled.write({"step": 1, "loss": 0.0})
    disabled.close()
    assert not (tmp_path / "other").exists()


def test_window_rates_and_progress_line():
    window = metrics.Window()
    window.reset(100.0)
    for _ in range(4):
        window.add({"real_tokens": 900.0, "capacity_tokens": 1000.0, "num_images": 10.0}, flops=2e12)
    rates = window.rates(102.0, num_devices=2, peak_per_device=1e12)
    assert rates["tokens_per_s"] == pytest.approx(1800.0)
    assert rates["images_per_s"] == pytest.approx(20.0)
    assert rates["fill"] == pytest.approx(0.9)
    assert rates["step_time"] == pytest.approx(0.5)
    assert rates["mfu"] == pytest.approx(2.0)  # 8e12 FLOPs in 2 s on 2 x 1e12
    assert "mfu" not in window.rates(102.0, num_devices=2, peak_per_device=None)
    line = metrics.progress_line(10, 30, {"loss": 1.25, "lr": 1e-4, "grad_norm": 0.5, **rates, "data/skipped": 3})
    assert "step 10/30" in line and "loss 1.2500" in line and "MFU 200.0%" in line
    assert "data skipped 3" in line and "ETA 0:00:10" in line
    json.dumps(rates)  # JSON-serialisable


def test_a_partial_last_line_is_skipped_and_dropped_on_truncation(tmp_path, monkeypatch):
    warned = []  # absl's warnings, whatever handlers earlier tests left on its logger
    monkeypatch.setattr(metrics.logging, "warning", lambda msg, *args: warned.append(msg % args))
    path = tmp_path / metrics.METRICS_FILE
    path.write_text("".join(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in (1, 2, 3)) + '{"step": 4, "lo')
    assert [r["step"] for r in metrics.read_metrics(str(tmp_path))] == [1, 2, 3]
    assert any("skipped 1 line" in w for w in warned), warned
    metrics.truncate_metrics(str(tmp_path), 2)
    assert path.read_text() == "".join(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in (1, 2))
    metrics.truncate_metrics(str(tmp_path), 0)  # a fresh start (no checkpoint): every earlier record goes
    assert path.read_text() == ""
