"""Selecting shards (oq2vl_jax/data/sources/shard_paths.py): directories, single tars, globs, brace ranges and lists,
through the `sources info` command and the trainer's config parser; missing shards are errors, never silent gaps."""

import os
import subprocess
import sys

import pytest

from fixtures.paths import REPO
from fixtures.data import (base_config, sample_numbers, tiny_tokenizer, tiny_tokenizer_dir,  # noqa: F401
                           write_numbered_shards)
from oq2vl_jax.data.pipeline import build_iterator
from oq2vl_jax.data.sources.registry import source_path_exists
from oq2vl_jax.data.sources.shard_paths import expand_braces, expand_shards
from oq2vl_jax.errors import UserError
from fixtures.configs import parse



@pytest.fixture
def shards(tmp_path):
    """tmp/a/00000..00003.tar (4 records each) and tmp/b/00000..00001.tar."""
    write_numbered_shards(str(tmp_path / "a"), 16, shard_size=4)
    write_numbered_shards(str(tmp_path / "b"), 8, shard_size=4, start=100)
    return tmp_path


def test_brace_expansion():
    assert expand_braces("/d/{00008..00011}.tar") == [f"/d/{i:05d}.tar" for i in range(8, 12)]
    assert expand_braces("/d/{a,b}-{1..2}.tar") == ["/d/a-1.tar", "/d/a-2.tar", "/d/b-1.tar", "/d/b-2.tar"]
    assert expand_braces("/d/{x}.tar") == ["/d/{x}.tar"]
    with pytest.raises(UserError, match="empty range"):
        expand_braces("/d/{5..2}.tar")


def test_selection_forms(shards):
    a = str(shards / "a")
    assert expand_shards(a) == (a, ["00000.tar", "00001.tar", "00002.tar", "00003.tar"])
    assert expand_shards(a + "/0000[12].tar")[1] == ["00001.tar", "00002.tar"]
    assert expand_shards(a + "/{00001..00003}.tar")[1] == ["00001.tar", "00002.tar", "00003.tar"]
    root, names = expand_shards((a + "/00000.tar", str(shards / "b" / "*.tar"), a + "/00000.tar"))
    assert root == str(shards) and names == ["a/00000.tar", "b/00000.tar", "b/00001.tar"]  # duplicates once


def test_missing_shards_are_errors_not_gaps(shards):
    a = str(shards / "a")
    with pytest.raises(UserError, match=r"names 2 of 6 shards .* \(first: .*00004.tar"):
        expand_shards(a + "/{00000..00005}.tar")
    with pytest.raises(UserError, match="matches no file"):
        expand_shards(a + "/train-*.tar")
    with pytest.raises(UserError, match="expected a path"):
        expand_shards(())
    assert source_path_exists({"kind": "webdataset", "path": a + "/*.tar"})
    assert not source_path_exists({"kind": "webdataset", "path": a + "/{00000..00005}.tar"})


def test_info_cli_reads_a_brace_range_and_a_glob(shards):
    pattern = str(shards / "a" / "{00001..00002}.tar")
    proc = subprocess.run([sys.executable, "-m", "oq2vl_jax.data.sources", "info", "webdataset", pattern],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert ": 8 records" in proc.stdout
    bad = subprocess.run([sys.executable, "-m", "oq2vl_jax.data.sources", "info", "webdataset",
                          str(shards / "a" / "{00003..00009}.tar")], cwd=REPO, capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode == 2 and "names 6 of 7 shards" in bad.stderr and "Traceback" not in bad.stderr


def test_a_list_from_the_command_line_feeds_the_pipeline(shards, tiny_tokenizer_dir, tiny_tokenizer):
    spec = (f'({{"kind": "webdataset", "path": ("{shards}/a/{{00000..00001}}.tar", "{shards}/b/*.tar")}},)')
    config = parse("demo", f"--config.data.sources={spec}")
    cfg = base_config(tiny_tokenizer_dir, config.data.sources, num_epochs=1, shuffle=False)
    numbers = []
    for batch in build_iterator(cfg, tokens_per_image=4, rows_per_batch=4, seed=0, process_index=0,
                                process_count=1):
        numbers += sample_numbers(batch, tiny_tokenizer)
    assert sorted(numbers) == list(range(8)) + list(range(100, 108))
