"""A webdataset index is tied to the shards it describes (oq2vl_jax/data/sources/webdataset.py): single-tar sources in
one directory never share one, and an index whose shards changed is never used."""

import os
import subprocess
import sys

from fixtures.paths import REPO
from fixtures.data import numbered_samples
from oq2vl_jax.data.sources.webdataset import WebDatasetSource, write_tar_shard



def captions(source) -> list[str]:
    return [source[i]["documents"][0]["parts"][1][1] if source[i]["documents"] else None for i in range(len(source))]


def two_tars(directory, n=500):
    # different caption lengths in the two tars: a record read through the other tar's offsets comes out wrong
    a = numbered_samples(n)
    b = [dict(s, txt=s["txt"] + " and more words" * (1 + i % 3)) for i, s in enumerate(numbered_samples(n, start=n))]
    write_tar_shard(os.path.join(directory, "A.tar"), a)
    write_tar_shard(os.path.join(directory, "B.tar"), b)
    return [s["txt"] for s in a], [s["txt"] for s in b]


def test_single_tar_sources_in_one_directory_keep_their_own_index(tmp_path):
    want_a, want_b = two_tars(str(tmp_path))
    src_a = WebDatasetSource(str(tmp_path / "A.tar"))
    src_b = WebDatasetSource(str(tmp_path / "B.tar"))  # used to overwrite A's index (498 of 500 records wrong)
    got_a = captions(src_a)
    assert sum(g != w for g, w in zip(got_a, want_a)) == 0 and len(got_a) == len(want_a)
    assert captions(src_b) == want_b
    assert src_a.index_path != src_b.index_path
    # a fresh process (a Grain worker) maps the index again: still each source's own
    assert captions(WebDatasetSource(str(tmp_path / "A.tar"))) == want_a


def test_index_cli_with_several_tars_and_one_index_dir(tmp_path):
    want_a, want_b = two_tars(str(tmp_path), n=60)
    index_dir = str(tmp_path / "idx")
    proc = subprocess.run([sys.executable, "-m", "oq2vl_jax.data.sources", "index", str(tmp_path / "A.tar"),
                           str(tmp_path / "B.tar"), "--index-dir", index_dir, "--workers", "1"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("60 records") == 2
    assert captions(WebDatasetSource(str(tmp_path / "A.tar"), index_dir=index_dir)) == want_a
    assert captions(WebDatasetSource(str(tmp_path / "B.tar"), index_dir=index_dir)) == want_b
    assert len([n for n in os.listdir(index_dir) if n.endswith(".npy")]) == 2


def test_a_rewritten_shard_is_reindexed_never_read_through_the_old_index(tmp_path):
    write_tar_shard(str(tmp_path / "A.tar"), numbered_samples(20))
    old = WebDatasetSource(str(tmp_path / "A.tar"))
    _ = old[0]
    replacement = [dict(s, txt=s["txt"] + " rewritten") for s in numbered_samples(25, start=100)]
    write_tar_shard(str(tmp_path / "A.tar"), replacement)
    os.utime(tmp_path / "A.tar", ns=(1, 1))  # a different mtime even on a coarse-clock file system
    assert old[3]["skips"] == {"shard_changed": 1} and not old[3]["documents"]  # counted, not misread
    fresh = WebDatasetSource(str(tmp_path / "A.tar"))
    assert captions(fresh) == [s["txt"] for s in replacement]
    assert [n for n in os.listdir(tmp_path) if n.endswith(".npy")] == [os.path.basename(fresh.index_path)]
