"""storage/mirror.py: a local staging directory copied whole into a bucket (a real S3 server, moto)."""

import os

import pytest

from oq2vl_jax.storage import paths
from oq2vl_jax.storage.mirror import Mirror, staged_dir
from fixtures.s3 import bucket, s3_server  # noqa: F401 (fixtures)


def test_sync_uploads_changed_files_whole(bucket):
    paths.write_text(bucket + "/run/metrics.jsonl", '{"step": 1}\n')
    mirror = Mirror(bucket + "/run", names_to_fetch=("metrics.jsonl", "absent.txt"))
    local = os.path.join(mirror.local_dir, "metrics.jsonl")
    assert open(local).read() == '{"step": 1}\n' and mirror.sync() == 0  # fetched, nothing changed yet
    with open(local, "a") as f:
        f.write('{"step": 2}\n')
    os.makedirs(os.path.join(mirror.local_dir, "tb"))
    open(os.path.join(mirror.local_dir, "tb", "events"), "wb").write(b"e")
    assert mirror.sync() == 2 and mirror.sync() == 0
    assert paths.read_text(bucket + "/run/metrics.jsonl") == '{"step": 1}\n{"step": 2}\n'
    mirror.close()
    assert paths.read_bytes(bucket + "/run/tb/events") == b"e" and not os.path.exists(mirror.local_dir)


def test_staged_dir_resumes_and_copies_back_however_the_block_ends(bucket, tmp_path):
    with staged_dir(str(tmp_path)) as out:
        assert out == str(tmp_path)  # a local directory is used as it is
    paths.write_text(bucket + "/eval/demo/predictions.jsonl", "a\n")
    with pytest.raises(KeyboardInterrupt):
        with staged_dir(bucket + "/eval") as out:
            assert open(os.path.join(out, "demo", "predictions.jsonl")).read() == "a\n"  # what is there: resumed
            with open(os.path.join(out, "demo", "predictions.jsonl"), "a") as f:
                f.write("b\n")
            raise KeyboardInterrupt
    assert paths.read_text(bucket + "/eval/demo/predictions.jsonl") == "a\nb\n"
