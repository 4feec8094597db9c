"""WebDataset shards in a bucket (a real S3 server, moto): the same records as from local disk, read by ranged GETs
pinned to the indexed object version; the index in the local cache, or copied from beside the shards."""

import os

import pytest

from fixtures.data import numbered_samples, write_numbered_shards
from oq2vl_jax.data.sources import __main__ as sources_cli, webdataset
from oq2vl_jax.data.sources.registry import open_source, source_path_exists
from oq2vl_jax.data.sources.webdataset import WebDatasetSource, write_tar_shard
from oq2vl_jax.errors import UserError
from oq2vl_jax.storage import paths
from fixtures.s3 import bucket, s3_server  # noqa: F401 (fixtures)


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("OQ2VL_CACHE", str(tmp_path / "home"))  # the local index cache
    return str(tmp_path / "home")


def _upload(local_dir: str, remote: str) -> None:
    paths.upload_files(local_dir, remote, sorted(n for n in os.listdir(local_dir) if n.endswith(".tar")))


def test_bucket_source_reads_what_local_disk_reads(tmp_path, bucket, home):
    local = write_numbered_shards(str(tmp_path / "shards"), 30, shard_size=8)
    _upload(local, bucket + "/cc")
    spec = bucket + "/cc/{00000..00003}.tar"
    assert source_path_exists({"kind": "webdataset", "path": spec})
    assert not source_path_exists({"kind": "webdataset", "path": bucket + "/cc/{00000..00009}.tar"})
    remote = WebDatasetSource(spec)
    assert remote.root == bucket + "/cc" and len(remote) == 30 and remote.problems == {}
    assert remote.index_path.startswith(os.path.join(home, "wds_index"))
    expected = numbered_samples(30)
    for i in (0, 7, 8, 29):
        parts = remote[i]["documents"][0]["parts"]
        assert parts == [("image", expected[i]["jpg"]), ("text", expected[i]["txt"])]
    assert [WebDatasetSource(local)[i] for i in range(30)] == [
        {**remote[i], "source": "shards"} for i in range(30)]
    assert len(open_source({"kind": "webdataset", "path": bucket + "/cc"})) == 30  # a prefix: every .tar below


def test_replaced_object_is_counted_not_misread(tmp_path, bucket, home):
    local = write_numbered_shards(str(tmp_path / "shards"), 10, shard_size=5)
    _upload(local, bucket + "/cc")
    source = WebDatasetSource(bucket + "/cc")
    write_tar_shard(str(tmp_path / "other.tar"), numbered_samples(5, start=100))
    paths.write_bytes(bucket + "/cc/00000.tar", open(tmp_path / "other.tar", "rb").read())
    assert source[0]["skips"] == {"shard_changed": 1} and source[0]["documents"] == []
    assert source[5]["skips"] == {}  # the other shard is unchanged
    assert len(WebDatasetSource(bucket + "/cc")) == 10  # a new fingerprint: indexed again, records of the new object
    replaced = WebDatasetSource(bucket + "/cc")[0]["documents"][0]["parts"][1]
    assert replaced == ("text", numbered_samples(1, 100)[0]["txt"])


def test_index_published_beside_the_shards_is_reused_by_other_hosts(tmp_path, bucket, home, monkeypatch, capsys):
    local = write_numbered_shards(str(tmp_path / "shards"), 12, shard_size=6)
    _upload(local, bucket + "/cc")
    assert sources_cli.main(["index", bucket + "/cc", "--workers", "1"]) == 0
    assert f"(and {bucket}/cc/oq2vl_index." in capsys.readouterr().out
    monkeypatch.setenv("OQ2VL_CACHE", str(tmp_path / "another_host"))

    def no_scan(path):
        raise AssertionError(f"{path} was scanned again")
    monkeypatch.setattr(webdataset, "scan_shard", no_scan)
    source = WebDatasetSource(bucket + "/cc")
    assert len(source) == 12 and source.index_path.startswith(str(tmp_path / "another_host"))
    assert source[11]["documents"][0]["parts"][1] == ("text", numbered_samples(12)[11]["txt"])


def test_missing_bucket_shards_are_one_line(bucket, home):
    with pytest.raises(UserError, match="matches no file"):
        WebDatasetSource(bucket + "/none/*.tar")
    with pytest.raises(UserError, match="names 2 of 2 shards"):
        WebDatasetSource(bucket + "/none/{0..1}.tar")
