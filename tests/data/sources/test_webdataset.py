import os
import pickle

import numpy as np
import pytest

from fixtures.data import image_bytes, numbered_samples, write_numbered_shards
from oq2vl_jax.data.sources import __main__ as sources_cli, webdataset
from oq2vl_jax.data.sources.webdataset import (INDEX_NAME, WebDatasetSource, build_index, scan_shard, split_member_name,
                                               write_tar_shard)
from oq2vl_jax.errors import UserError


def test_split_member_name_follows_webdataset():
    assert split_member_name("000123.jpg") == ("000123", "jpg")
    assert split_member_name("dir/abc.seg.TXT") == ("dir/abc", "seg.txt")
    assert split_member_name("README") is None and split_member_name(".hidden") is None


def test_index_reads_back_members(tmp_path):
    write_numbered_shards(str(tmp_path), 40, shard_size=16)
    src = WebDatasetSource(str(tmp_path))
    assert len(src) == 40 and src.problems == {}
    assert os.path.dirname(src.index_path) == str(tmp_path) and os.path.basename(src.index_path).startswith(INDEX_NAME)
    assert os.path.exists(src.index_path[:-4] + ".json")
    expected = numbered_samples(40)
    for i in (0, 15, 16, 39):
        record = src[i]
        assert record["skips"] == {} and len(record["documents"]) == 1
        parts = record["documents"][0]["parts"]
        assert parts == [("image", expected[i]["jpg"]), ("text", expected[i]["txt"])]
        assert record["index"] == i


def test_index_is_cached_and_rebuilt_when_shards_change(tmp_path):
    write_numbered_shards(str(tmp_path), 20, shard_size=10)
    npy = build_index(str(tmp_path))
    stamp = os.stat(npy).st_mtime_ns
    assert build_index(str(tmp_path)) == npy
    assert os.stat(npy).st_mtime_ns == stamp  # up to date: not rebuilt
    write_tar_shard(str(tmp_path / "00002.tar"), numbered_samples(5, start=20))
    assert len(WebDatasetSource(str(tmp_path))) == 25  # new shard noticed, index rebuilt
    assert not os.path.exists(npy)  # the stale index of that selection is gone


def test_index_dir_override_and_cli(tmp_path, capsys):
    shards = write_numbered_shards(str(tmp_path / "shards"), 12, shard_size=5)
    index_dir = str(tmp_path / "idx")
    assert sources_cli.main(["index", shards, "--index-dir", index_dir, "--workers", "1"]) == 0
    assert "12 records" in capsys.readouterr().out
    assert any(n.startswith(INDEX_NAME) and n.endswith(".npy") for n in os.listdir(index_dir))
    assert not any(n.startswith(INDEX_NAME) for n in os.listdir(shards))
    assert len(WebDatasetSource(shards, index_dir=index_dir)) == 12
    assert sources_cli.main(["index", str(tmp_path / "missing")]) == 2


def test_damaged_shards_become_counted_skip_entries(tmp_path):
    good = numbered_samples(3)
    write_tar_shard(str(tmp_path / "a.tar"), [
        good[0],
        {"__key__": "nocap", "jpg": image_bytes()},                    # image without caption
        {"__key__": "noimg", "txt": "a caption without its image"},     # caption without image
        {"__key__": "metaonly", "json": {"key": "metaonly"}},           # neither
        {"__key__": "latin1", "png": image_bytes(fmt="PNG"), "txt": "caf\xe9".encode("latin-1")},
    ])
    write_tar_shard(str(tmp_path / "b.tar"), good[1:3] + numbered_samples(3, start=10))
    data = open(tmp_path / "b.tar", "rb").read()
    # cut inside the 4th sample's image: 3 complete samples survive, the cut is counted once
    offsets = [m for m in scan_shard(str(tmp_path / "b.tar"))["image_offset"]]
    open(tmp_path / "b.tar", "wb").write(data[: offsets[3] + 10])
    (tmp_path / "c.tar").write_bytes(b"")                         # empty file
    (tmp_path / "d.tar").write_bytes(b"not a tar file " * 100)   # garbage
    src = WebDatasetSource(str(tmp_path))
    assert src.problems == {"caption_missing": 1, "image_missing": 2, "shard_truncated": 1, "shard_unreadable": 2}
    records = [src[i] for i in range(len(src))]
    skips = {}
    for r in records:
        for k, v in r["skips"].items():
            skips[k] = skips.get(k, 0) + v
    assert skips == src.problems
    good_docs = [r for r in records if r["documents"]]
    assert len(good_docs) == 1 + 1 + 3
    latin = next(r for r in good_docs if r["repairs"])
    assert latin["repairs"] == {"repaired_text_utf8": 1}
    assert latin["documents"][0]["parts"][1] == ("text", "caf\ufffd")


def test_truncated_inside_a_header_is_detected(tmp_path):
    write_tar_shard(str(tmp_path / "a.tar"), numbered_samples(4))
    data = open(tmp_path / "a.tar", "rb").read()
    entries = scan_shard(str(tmp_path / "a.tar"))
    cut = int(entries["text_offset"][1]) + 512 + 100  # past sample 1's caption, inside the next header
    open(tmp_path / "a.tar", "wb").write(data[:cut])
    entries = scan_shard(str(tmp_path / "a.tar"))
    reasons = [webdataset.status_reason(int(s)) for s in entries["status"]]
    assert reasons == [None, None, "shard_truncated"]


def test_shard_changed_after_indexing_is_counted_not_fatal(tmp_path):
    write_numbered_shards(str(tmp_path), 4, shard_size=4)
    src = WebDatasetSource(str(tmp_path))
    data = open(tmp_path / "00000.tar", "rb").read()
    open(tmp_path / "00000.tar", "wb").write(data[:1024])
    assert src[3]["skips"] == {"shard_changed": 1}
    assert src[0]["skips"] == {"shard_changed": 1}  # even where the old offsets would still read bytes
    os.remove(tmp_path / "00000.tar")
    assert src[0]["skips"] == {"shard_unreadable": 1}


def test_source_pickles_without_the_index(tmp_path):
    write_numbered_shards(str(tmp_path), 8, shard_size=8)
    src = WebDatasetSource(str(tmp_path))
    _ = src[0]
    assert isinstance(src.entries, np.memmap)
    clone = pickle.loads(pickle.dumps(src))
    assert clone._entries is None and clone[5]["documents"] == src[5]["documents"]


def test_missing_or_empty_path_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="matches no file"):
        WebDatasetSource(str(tmp_path / "nope"))
    with pytest.raises(UserError, match="no .tar shards"):
        WebDatasetSource(str(tmp_path))


def test_a_repeated_sample_key_is_counted_not_vanished(tmp_path):
    first, second, other = numbered_samples(3)
    second = dict(second, __key__=first["__key__"])
    write_tar_shard(str(tmp_path / "a.tar"), [first, other, second])          # key met again after another
    write_tar_shard(str(tmp_path / "b.tar"), [dict(first, __key__="k"), dict(second, __key__="k")])  # back to back
    src = WebDatasetSource(str(tmp_path))
    assert src.problems == {"duplicate_key": 2} and len(src) == 5
    records = [src[i] for i in range(len(src))]
    assert sum(r["skips"].get("duplicate_key", 0) for r in records) == 2
    texts = sorted(r["documents"][0]["parts"][1][1] for r in records if r["documents"])
    assert texts == sorted([first["txt"], other["txt"], first["txt"]])  # each key's first sample kept
