"""Every source kind reads the same records from an S3 bucket (a real S3 server, moto) as from local disk: LLaVA JSON
with its images, parquet row groups by ranged reads, a selection file over bucket shards, packed JSON."""

import os

import numpy as np
import pytest

from data_fixtures import write_numbered_shards
from oq2vl_jax.curate import shards as shards_lib
from oq2vl_jax.data.sources.registry import open_source, source_path_exists
from oq2vl_jax.data.sources.selection import SelectedSource, shard_fingerprint, write_selection
from oq2vl_jax.data.sources.webdataset import WebDatasetSource
from oq2vl_jax.errors import UserError
from oq2vl_jax.storage import local_copy
from s3_fixtures import bucket, s3_server  # noqa: F401 (fixtures)
from test_conversations import llava_dir  # noqa: F401 (fixture)
from test_parquet_source import N, spec as parquet_spec, write_synthdog


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("OQ2VL_CACHE", str(tmp_path / "cache"))


def test_llava_json_and_images_from_a_bucket(llava_dir, bucket):  # noqa: F811
    root, records = llava_dir
    local_copy.upload_dir(str(root), bucket + "/llava")
    local = open_source({"kind": "llava", "path": str(root / "llava.json"), "image_root": str(root)})
    remote = open_source({"kind": "llava", "path": bucket + "/llava/llava.json"})  # images beside the JSON
    assert len(remote) == len(records)
    for i in range(len(records)):
        a, b = local[i], remote[i]
        assert (a["images"], a["conversations"], a["skips"], a["key"]) == (
            b["images"], b["conversations"], b["skips"], b["key"])
    assert remote[1]["image_paths"][1] == bucket + "/llava/coco/b.jpg"
    assert remote[3]["images"] == [None]  # a missing object: decided by the formatter, as a missing file is
    with pytest.raises(UserError, match="does not exist"):
        open_source({"kind": "llava", "path": bucket + "/llava/nope.json"})


def test_parquet_row_groups_from_a_bucket(tmp_path, bucket):
    root = write_synthdog(str(tmp_path / "sd"), bad_rows=True)
    local_copy.upload_dir(root, bucket + "/sd")
    remote_spec = parquet_spec(bucket + "/sd")
    assert source_path_exists(remote_spec) and not source_path_exists(parquet_spec(bucket + "/nothing"))
    local, remote = open_source(parquet_spec(root)), open_source(remote_spec)
    assert len(remote) == len(local) == N + 2
    for i in np.random.default_rng(0).permutation(N + 2):
        assert remote[int(i)]["documents"] == local[int(i)]["documents"]
        assert remote[int(i)]["skips"] == local[int(i)]["skips"]


def test_selection_file_over_bucket_shards(tmp_path, bucket):
    local = write_numbered_shards(str(tmp_path / "numbered"), 20, shard_size=8)
    local_copy.upload_dir(local, bucket + "/numbered")
    root = bucket + "/numbered"
    _, names = shards_lib.list_shards(root)
    rows = []
    for s, name in enumerate(names):
        for sample in shards_lib.iter_samples(os.path.join(local, name), want_image=False):
            if int(sample["caption"].split()[1]) % 3 == 0:
                rows.append((s, sample["image_offset"]))
    selection = bucket + "/sel/every_third.npz"
    write_selection(selection, root=root, shards=[shard_fingerprint(root, n) for n in names],
                    shard=np.array([r[0] for r in rows]), image_offset=np.array([r[1] for r in rows]), rule={},
                    counts={})
    source = SelectedSource(WebDatasetSource(root), selection)
    numbers = sorted(int(source[i]["documents"][0]["parts"][1][1].split()[1]) for i in range(len(source)))
    assert numbers == list(range(0, 20, 3))
    assert len(open_source({"kind": "webdataset", "path": root, "select": selection})) == len(numbers)
