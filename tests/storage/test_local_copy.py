"""storage/local_copy.py: local copies of bucket directories and files, keyed by the objects' versions (moto S3)."""

import os

import pytest

from oq2vl_jax.errors import UserError
from oq2vl_jax.storage import local_copy, paths
from fixtures.s3 import bucket, s3_server  # noqa: F401 (fixtures)


def test_local_copy_follows_object_versions(bucket, tmp_path, monkeypatch):
    monkeypatch.setenv("OQ2VL_CACHE", str(tmp_path / "cache"))
    paths.write_text(bucket + "/tok/vocab.json", "{}")
    paths.write_text(bucket + "/tok/sub/merges.txt", "a b")
    first = local_copy.local_dir(bucket + "/tok")
    assert sorted(os.listdir(first)) == ["sub", "vocab.json"]
    assert local_copy.local_dir(bucket + "/tok") == first  # unchanged: the same copy
    paths.write_text(bucket + "/tok/vocab.json", '{"a": 1}')
    second = local_copy.local_dir(bucket + "/tok")
    assert second != first and open(os.path.join(second, "vocab.json")).read() == '{"a": 1}'
    with pytest.raises(UserError, match="holds no files"):
        local_copy.local_dir(bucket + "/nothing")


def test_local_file_and_local_paths_pass_through(bucket, tmp_path, monkeypatch):
    monkeypatch.setenv("OQ2VL_CACHE", str(tmp_path / "cache"))
    assert local_copy.local_file(str(tmp_path / "x")) == str(tmp_path / "x")
    paths.write_bytes(bucket + "/sel.npz", b"one")
    first = local_copy.local_file(bucket + "/sel.npz")
    assert open(first, "rb").read() == b"one" and first.startswith(str(tmp_path / "cache"))
    paths.write_bytes(bucket + "/sel.npz", b"two")
    assert open(local_copy.local_file(bucket + "/sel.npz"), "rb").read() == b"two"
    with pytest.raises(UserError, match="does not exist"):
        local_copy.local_file(bucket + "/missing.npz")
