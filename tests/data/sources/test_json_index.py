"""data/sources/json_index.py: byte offsets of JSON array elements / JSON lines, exact on nasty strings, bounded memory,
tied to the file (stale index rebuilt)."""

from __future__ import annotations

import json
import os
import pickle
import tracemalloc

import numpy as np
import pytest

from oq2vl_jax.data.sources import json_index
from oq2vl_jax.errors import UserError

NASTY = ["plain", "quote \" inside", "backslash \\", "two \\\\", "escaped \\\" quote", "brackets [ { ] } , :",
         "unicode é ✓ \u2028", "ends with backslash \\", "", "\\\\\\\"", "\n newline \t tab"]


def records(n: int) -> list:
    return [{"id": i, "value": NASTY[i % len(NASTY)] + "\\" * (i % 4), "nested": [[i, {"a": "]"}], []]}
            for i in range(n)]


@pytest.mark.parametrize("chunk_bytes", [1, 7, 64, 1 << 20])
def test_array_offsets_exact_across_chunk_boundaries(tmp_path, chunk_bytes):
    data = records(120) + ["a string element", 17, None, [1, 2]]
    path = tmp_path / "x.json"
    path.write_text(json.dumps(data, indent=1 if chunk_bytes == 7 else None, ensure_ascii=False))
    entries = json_index.scan(str(path), chunk_bytes=chunk_bytes)
    raw = path.read_bytes()
    assert [json.loads(raw[o:o + n]) for o, n in entries] == data


def test_lines_and_blank_lines(tmp_path):
    path = tmp_path / "x.jsonl"
    data = records(30)
    path.write_text("\n".join(json.dumps(r) for r in data[:10]) + "\n\n  \n" + "\n".join(
        json.dumps(r) for r in data[10:]))  # no trailing newline
    assert json_index.detect_kind(str(path)) == "lines"
    recs = json_index.JsonRecords(str(path))
    assert len(recs) == 30 and [recs[i] for i in range(30)] == data


def test_malformed_and_empty(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('[{"a": 1}, {"b": "unterminated}]')
    with pytest.raises(UserError, match="cannot index"):
        json_index.build_index(str(bad))
    empty = tmp_path / "empty.json"
    empty.write_text(" [ \n ] ")
    assert len(json_index.JsonRecords(str(empty))) == 0


def test_index_is_tied_to_the_file(tmp_path):
    path = tmp_path / "data.json"
    path.write_text(json.dumps(records(5)))
    npy, meta = json_index.build_index(str(path))
    assert npy == str(path) + json_index.INDEX_SUFFIX + ".npy" and meta["num_records"] == 5
    first = os.stat(npy).st_mtime_ns
    assert json_index.build_index(str(path))[0] == npy and os.stat(npy).st_mtime_ns == first  # reused
    path.write_text(json.dumps(records(7)))  # changed size and mtime: stale, rebuilt
    assert json_index.build_index(str(path))[1]["num_records"] == 7
    os.utime(path, ns=(1, 1))  # same size, other mtime: stale too
    assert json_index.build_index(str(path))[1]["file"]["mtime_ns"] == 1
    elsewhere = tmp_path / "idx"
    recs = json_index.JsonRecords(str(path), index_dir=str(elsewhere))
    assert recs.index_path.startswith(str(elsewhere)) and recs[6]["id"] == 6
    clone = pickle.loads(pickle.dumps(recs))
    assert clone._entries is None and clone[3] == recs[3]
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_memory_stays_bounded_on_a_multi_mb_file(tmp_path):
    """Indexing and reading a ~45 MB JSON list never holds the file: tracemalloc peak << file size (a few scan
    chunks, whatever the file size)."""
    path = tmp_path / "big.json"
    answer = "The man is holding the umbrella over his head to protect himself from the rain. " * 12
    with open(path, "w") as f:  # written record by record
        f.write("[")
        for i in range(40000):
            f.write(("," if i else "") + json.dumps({"id": i, "image": f"coco/{i:012d}.jpg", "conversations": [
                {"from": "human", "value": "<image>\nWhat is the man doing?"}, {"from": "gpt", "value": answer}]}))
        f.write("]")
    size = os.path.getsize(path)
    assert size > 40e6
    tracemalloc.start()
    try:
        recs = json_index.JsonRecords(str(path))
        picked = [recs[i]["id"] for i in np.random.default_rng(0).integers(0, len(recs), 200)]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(recs) == 40000 and all(0 <= i < 40000 for i in picked)
    assert peak < size / 4 and peak < 10 * json_index.CHUNK_BYTES, (peak, size)


def test_cli_builds_the_index_ahead_of_time(tmp_path):
    """`python -m oq2vl_jax.data.sources.json_index FILE` (docs/sft.md), and one error line for a bad file."""
    import subprocess
    import sys
    path = tmp_path / "mammoth_si_10M.json"
    path.write_text(json.dumps(records(9)))
    cmd = [sys.executable, "-m", "oq2vl_jax.data.sources.json_index", str(path), "--index-dir", str(tmp_path / "idx")]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "9 array records" in out.stdout, out.stderr
    assert json_index.JsonRecords(str(path), index_dir=str(tmp_path / "idx")).index_path.startswith(
        str(tmp_path / "idx"))
    (tmp_path / "bad.json").write_text("[1, 2")
    out = subprocess.run([sys.executable, "-m", "oq2vl_jax.data.sources.json_index", str(tmp_path / "bad.json")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and out.stderr.startswith("error: ") and len(out.stderr.strip().splitlines()) == 1
