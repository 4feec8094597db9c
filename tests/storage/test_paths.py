"""oq2vl_jax/storage: the same calls on a local directory and on a bucket of a real S3 server (moto)."""

import os

import pytest

from oq2vl_jax.errors import UserError
from oq2vl_jax.storage import paths
from fixtures.s3 import bucket, s3_server  # noqa: F401 (fixtures)


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path):
    return str(tmp_path) if request.param == "local" else request.getfixturevalue("bucket")


def test_resolve_keeps_uris_and_absolutizes_local_paths():
    assert paths.resolve("s3://b/x//y/") == "s3://b/x/y"
    assert paths.resolve("gs://b") == "gs://b"
    assert paths.resolve("rel") == os.path.abspath("rel")
    assert paths.join("s3://b/x", "y") == "s3://b/x/y"


def test_write_read_stat_list(root):
    f = paths.join(root, "d", "a.bin")
    paths.makedirs(paths.dirname(f))
    paths.write_bytes(f, b"0123456789")
    assert paths.exists(f) and paths.isfile(f) and paths.isdir(paths.join(root, "d"))
    assert paths.read_bytes(f) == b"0123456789"
    size, version = paths.stat(f)
    assert size == 10 and version
    assert paths.read_range(f, 3, 4, version) == b"3456"
    assert paths.listdir(paths.join(root, "d")) == ["a.bin"]
    assert paths.glob(paths.join(root, "d", "*.bin")) == [f]
    assert paths.find(root, ".bin") == [f]
    paths.write_bytes(f, b"new")  # replaced whole
    assert paths.read_bytes(f) == b"new"
    paths.remove(f)
    paths.remove(f)  # gone already: nothing to do
    assert not paths.exists(f)


def test_create_exclusive_has_one_winner(root):
    lock = paths.join(root, "lock")
    paths.makedirs(root)
    assert paths.create_exclusive(lock, b"first")
    assert not paths.create_exclusive(lock, b"second")
    assert paths.read_bytes(lock) == b"first"
    from concurrent.futures import ThreadPoolExecutor
    race = paths.join(root, "race")
    with ThreadPoolExecutor(8) as pool:  # eight creators at once: exactly one wins, whatever the timing
        won = list(pool.map(lambda i: paths.create_exclusive(race, str(i).encode()), range(8)))
    assert won.count(True) == 1 and paths.read_bytes(race) == str(won.index(True)).encode()


def test_read_range_refuses_a_replaced_object(bucket):
    f = bucket + "/shard.tar"
    paths.write_bytes(f, b"a" * 100)
    _, version = paths.stat(f)
    paths.write_bytes(f, b"b" * 100)
    with pytest.raises(paths.VersionChanged):
        paths.read_range(f, 0, 10, version)


def test_missing_extra_is_one_line(monkeypatch):
    import builtins
    real = builtins.__import__

    def no_gcsfs(name, *a, **k):
        if name == "gcsfs":
            raise ImportError(name)
        return real(name, *a, **k)
    monkeypatch.setattr(builtins, "__import__", no_gcsfs)
    with pytest.raises(UserError, match=r'pip install "oq2vl_jax\[gcs\]"'):
        paths.filesystem("gs://bucket/x")
