import base64
import importlib.util
import json
import os
import pickle

import numpy as np
import pytest

from fixtures.data import image_bytes
from oq2vl_jax.data.sources import __main__ as sources_cli
from oq2vl_jax.data.sources.packed_json import PackedJsonSource
from oq2vl_jax.data.sources.registry import open_source
from oq2vl_jax.data.sources.tfds import TfdsSource
from oq2vl_jax.data.sources.webdataset import WebDatasetSource
from oq2vl_jax.errors import UserError

HAVE_TFDS = importlib.util.find_spec("tensorflow_datasets") is not None


def caption_info(key, caption, image=b"", b64=None):
    b64 = b64 if b64 is not None else base64.b64encode(image).decode()
    return {"image_info": [{"image_base64": b64}, None], "texts": [None, caption], "key": key, "uid": key,
            "length": 150}


def write_packed(path, infos):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump({"data": infos, "lengths": [i.get("length", 0) for i in infos]}, f)


@pytest.fixture
def packed_dir(tmp_path):
    img = image_bytes((20, 20))
    write_packed(str(tmp_path / "0" / "aaa_packed.json"), [
        caption_info("k0", "a red circle", img),
        caption_info("k1", "a blue square", img),
        caption_info("bad", "broken image", b64="!!!not base64!!!"),
        {"image_info": [None, {"image_base64": base64.b64encode(img).decode()}, None,
                        {"image_base64": base64.b64encode(img).decode()}],
         "texts": ["intro", None, "middle", None], "key": "inter"},
        {"texts": ["no image_info"]},
    ])
    write_packed(str(tmp_path / "1" / "bbb_packed.json"), [caption_info("k2", "a green star", img)])
    (tmp_path / "1" / "ccc_packed.json").write_text('{"data": [truncated')
    (tmp_path / "1" / "ignored.json").write_text("{}")
    return tmp_path, img


def test_packed_json_records(packed_dir):
    root, img = packed_dir
    src = PackedJsonSource(str(root))
    assert [os.path.basename(f) for f in src.files] == ["aaa_packed.json", "bbb_packed.json", "ccc_packed.json"]
    first = src[0]
    assert [d["key"] for d in first["documents"]] == ["k0", "k1", "inter"]
    assert first["documents"][0]["parts"] == [("image", img), ("text", "a red circle")]
    assert [k for k, _ in first["documents"][2]["parts"]] == ["text", "image", "text", "image"]
    assert first["skips"] == {"image_corrupt": 1, "record_unreadable": 1}
    assert src[1]["documents"][0]["key"] == "k2"
    assert src[2] == {"source": src.name, "index": 2, "key": src.files[2], "documents": [],
                      "skips": {"record_unreadable": 1}, "repairs": {}}


def test_convert_packed_json_to_webdataset(packed_dir, tmp_path):
    root, img = packed_dir
    out = tmp_path / "converted"
    assert sources_cli.main(["convert-packed-json", str(root), str(out)]) == 0
    wds = WebDatasetSource(str(out))
    captions = [wds[i]["documents"][0]["parts"][1][1] for i in range(len(wds))]
    assert captions == ["a red circle", "a blue square", "a green star"]
    assert wds[0]["documents"][0]["parts"][0] == ("image", img)


class FakeTfds:
    """What tfds.data_source returns with SkipDecoding on the image: a sequence of feature dicts."""

    def __init__(self, examples):
        self.examples = examples

    def __len__(self):
        return len(self.examples)

    def __getitem__(self, i):
        if self.examples[i] is None:
            raise IOError("bad record")
        return self.examples[i]


def test_tfds_record_conversion_without_tfds():
    img = image_bytes()
    fake = FakeTfds([{"image": np.bytes_(img), "caption": b"a red circle"},
                     {"image": img, "caption": b"\xff\xfe bad"},
                     {"image": b"", "caption": b"x"},
                     {"image": img},
                     None])
    src = TfdsSource(name="fake", image_key="image", text_key="caption", _data_source=fake)
    assert len(src) == 5
    assert src[0]["documents"][0]["parts"] == [("image", img), ("text", "a red circle")]
    assert src[1]["repairs"] == {"repaired_text_utf8": 1}
    assert src[2]["skips"] == {"image_missing": 1}
    assert src[3]["skips"] == {"caption_missing": 1}
    assert src[4]["skips"] == {"record_unreadable": 1}


@pytest.mark.skipif(HAVE_TFDS, reason="tensorflow-datasets is installed; the missing-package error cannot occur")
def test_tfds_missing_is_a_clear_user_error():
    with pytest.raises(UserError, match="pip install tensorflow-datasets"):
        open_source({"kind": "tfds", "tfds_name": "anything", "path": ""}, "data.sources[0]")


@pytest.mark.skipif(not HAVE_TFDS, reason="tensorflow-datasets (optional extra) is not installed")
def test_tfds_array_record_roundtrip(tmp_path):
    import tensorflow_datasets as tfds

    img = image_bytes((10, 10), fmt="PNG")

    class Oq2vlTfdsTest(tfds.core.GeneratorBasedBuilder):
        """Written without TensorFlow: a bytes Tensor + Text (tfds' Image feature needs TF to encode)."""
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(
                {"image": tfds.features.Tensor(shape=(), dtype=np.object_), "text": tfds.features.Text()}))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples()}

        def _generate_examples(self):
            for i in range(5):
                yield i, {"image": img, "text": f"caption {i}"}

    builder = Oq2vlTfdsTest(data_dir=str(tmp_path), file_format="array_record")
    builder.download_and_prepare()
    by_name = open_source({"kind": "tfds", "tfds_name": "oq2vl_tfds_test", "data_dir": str(tmp_path), "path": ""})
    by_path = open_source({"kind": "tfds", "path": str(builder.data_dir)})
    for src in (by_name, pickle.loads(pickle.dumps(by_path))):
        assert len(src) == 5
        docs = [src[i]["documents"][0]["parts"] for i in range(5)]
        assert sorted(p[1][1] for p in docs) == [f"caption {i}" for i in range(5)]
        assert all(p[0] == ("image", img) for p in docs)


def test_open_source_errors_name_the_field(tmp_path):
    with pytest.raises(UserError, match=r"data.sources\[2\].kind"):
        open_source({"kind": "hdf5", "path": str(tmp_path)}, "data.sources[2]")
    with pytest.raises(UserError, match=r"data.sources\[0\].path"):
        open_source({"kind": "webdataset", "path": str(tmp_path / "nope")}, "data.sources[0]")
    with pytest.raises(UserError, match=r"data.sources\[1\]: .*no \*packed.json"):
        open_source({"kind": "packed_json", "path": str(tmp_path)}, "data.sources[1]")
    with pytest.raises(UserError, match="tfds_name"):
        open_source({"kind": "tfds", "path": ""}, "data.sources[0]")
