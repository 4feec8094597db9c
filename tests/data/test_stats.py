import pytest
from absl import logging

from oq2vl_jax.data import stats


def test_keys_and_sums():
    assert len(set(stats.STATS_KEYS)) == len(stats.STATS_KEYS)
    a = stats.empty_stats()
    stats.add_counts(a, {"image_corrupt": 2, "documents": 5})
    total = stats.sum_stats([a, {"image_corrupt": 1, "real_tokens": 7}])
    assert total["image_corrupt"] == 3 and total["documents"] == 5 and total["real_tokens"] == 7
    with pytest.raises(KeyError):
        stats.add_counts(stats.empty_stats(), {"nonsense": 1})


def test_data_stats_accumulates_and_logs(monkeypatch):
    lines = []
    monkeypatch.setattr(logging, "info", lambda msg, *a: lines.append(msg % a if a else msg))
    ds = stats.DataStats()
    ds.update({"documents": 4, "num_images": 4, "real_tokens": 90, "capacity_tokens": 100, "caption_empty": 1})
    ds.update({"documents": 6, "num_images": 6, "real_tokens": 100, "capacity_tokens": 100,
               "repaired_image_mode": 2})
    assert ds.batches == 2 and ds.skipped == 1 and ds.fill == pytest.approx(0.95)
    summary = ds.summary()
    assert summary["documents"] == 10 and summary["caption_empty"] == 1 and summary["fill"] == 0.95
    assert "image_corrupt" not in summary
    line = ds.log_summary("train data")
    assert lines == [line]
    assert line.startswith("train data: 2 batches, 10 documents") and "caption_empty=1" in line
    assert "repaired_image_mode=2" in line and "fill 95.00%" in line
