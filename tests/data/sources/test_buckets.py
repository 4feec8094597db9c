"""Every source kind reads the same records from an S3 bucket (a real S3 server, moto) as from local disk: LLaVA JSON
with its images, parquet row groups by ranged reads, a selection file over bucket shards, packed JSON."""

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fixtures.data import image_bytes, write_numbered_shards
from oq2vl_jax.curate import shards as shards_lib
from oq2vl_jax.data.sources.registry import open_source, source_path_exists
from oq2vl_jax.data.sources.selection import SelectedSource, shard_fingerprint, write_selection
from oq2vl_jax.data.sources.webdataset import WebDatasetSource
from oq2vl_jax.errors import UserError
from oq2vl_jax.storage import local_copy
from fixtures.s3 import bucket, s3_server  # noqa: F401 (fixtures)


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("OQ2VL_CACHE", str(tmp_path / "cache"))


def turns(q="<image>\nWhat colour is the shape?", a="Red."):
    return [{"from": "human", "value": q}, {"from": "gpt", "value": a}]


def test_llava_json_and_images_from_a_bucket(tmp_path, bucket):
    root = tmp_path / "llava"
    (root / "coco").mkdir(parents=True)
    for name, colour in (("a.jpg", (200, 30, 30)), ("b.jpg", (30, 30, 200))):
        (root / "coco" / name).write_bytes(image_bytes((20, 16), colour))
    records = [{"id": "one", "image": "coco/a.jpg", "conversations": turns()},
               {"id": "two", "image": ["coco/a.jpg", "coco/b.jpg"], "conversations": turns("<image>\n<image>\nWhich?")},
               {"id": "text", "conversations": turns("What is a circle?", "A round shape.")},
               {"id": "gone", "image": "coco/missing.jpg", "conversations": turns()},
               {"id": "broken"}]
    (root / "llava.json").write_text(json.dumps(records))
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


def parquet_spec(root: str) -> dict:
    return {"kind": "parquet", "path": os.path.join(root, "train-*.parquet"), "image_column": "image",
            "text_column": "text"}


def test_parquet_row_groups_from_a_bucket(tmp_path, bucket):
    root = tmp_path / "pq"
    root.mkdir()
    rows = [{"image": {"bytes": image_bytes((12, 10), (i * 37 % 256, 90, 50)), "path": f"{i}.jpg"},
             "text": f"sample {i} is a red circle"} for i in range(10)] + [{"image": {"bytes": None, "path": "x"},
                                                                           "text": "no image"}]
    for k, part in enumerate((rows[:6], rows[6:])):
        pq.write_table(pa.Table.from_pylist(part), str(root / f"train-{k}.parquet"), row_group_size=3)
    local_copy.upload_dir(str(root), bucket + "/pq")
    remote_spec = parquet_spec(bucket + "/pq")
    assert source_path_exists(remote_spec) and not source_path_exists(parquet_spec(bucket + "/nothing"))
    local, remote = open_source(parquet_spec(str(root))), open_source(remote_spec)
    assert len(remote) == len(local) == len(rows)
    for i in np.random.default_rng(0).permutation(len(rows)):
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


def test_packed_json_from_a_bucket(tmp_path, bucket):
    import base64
    img = base64.b64encode(image_bytes((20, 20))).decode()
    for name, key in (("0/aaa_packed.json", "k0"), ("1/bbb_packed.json", "k1")):
        path = tmp_path / "packed" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"data": [{"image_info": [{"image_base64": img}, None], "texts": [None, key],
                                              "key": key, "uid": key, "length": 150}], "lengths": [150]}))
    (tmp_path / "packed" / "1" / "ccc_packed.json").write_text('{"data": [truncated')
    local_copy.upload_dir(str(tmp_path / "packed"), bucket + "/packed")
    local = open_source({"kind": "packed_json", "path": str(tmp_path / "packed")})
    remote = open_source({"kind": "packed_json", "path": bucket + "/packed"})
    assert remote.files == [f"{bucket}/packed/0/aaa_packed.json", f"{bucket}/packed/1/bbb_packed.json",
                            f"{bucket}/packed/1/ccc_packed.json"]
    for i in range(3):
        assert {**remote[i], "key": None} == {**local[i], "key": None}
    assert remote[2]["skips"] == {"record_unreadable": 1}
