"""TFDS datasets prepared in array_record format as a caption source (optional: needs tensorflow-datasets)."""

from __future__ import annotations

import os

from oq2vl_jax.data.sources.records import count_skip, new_record, record_text
from oq2vl_jax.errors import UserError


class TfdsSource:
    """A TFDS dataset prepared in array_record format, read with `tfds.data_source` (no TensorFlow needed).

    Images are read undecoded (`tfds.decode.SkipDecoding`) and decoded with PIL like every other source. `path` may
    be a prepared dataset directory (the one with dataset_info.json) or empty to use `name` + `data_dir`.
    """

    def __init__(self, *, name: str = "", split: str = "train", data_dir: str | None = None, path: str = "",
                 image_key: str = "image", text_key: str = "text", source_name: str | None = None, _data_source=None):
        self.tfds_name, self.split, self.data_dir, self.path = name, split, data_dir, path
        self.image_key, self.text_key = image_key, text_key
        self.name = source_name or name or os.path.basename(path.rstrip("/"))
        self._ds = _data_source if _data_source is not None else self._open()
        self._injected = _data_source is not None
        self._len = len(self._ds)

    def _open(self):
        try:
            import tensorflow_datasets as tfds
        except ImportError as e:
            raise UserError("source kind 'tfds' needs the optional package tensorflow-datasets (and array_record): "
                            "pip install tensorflow-datasets array_record; TensorFlow itself is not needed") from e
        decoders = {self.image_key: tfds.decode.SkipDecoding()}
        try:
            if self.path:
                builder = tfds.builder_from_directory(self.path)
                return builder.as_data_source(split=self.split, decoders=decoders)
            return tfds.data_source(self.tfds_name, split=self.split, data_dir=self.data_dir, download=False,
                                    decoders=decoders)
        except Exception as e:
            raise UserError(f"cannot open TFDS dataset {self.tfds_name or self.path!r} split {self.split!r}: "
                            f"{type(e).__name__}: {e}") from e

    def __getstate__(self):
        state = dict(self.__dict__)
        if not self._injected:
            state["_ds"] = None  # reopened in each worker process
        return state

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, index: int) -> dict:
        index = int(index)
        if self._ds is None:
            self._ds = self._open()
        record = new_record(self.name, index, f"{self.name}:{index}")
        try:
            example = self._ds[index]
        except Exception:
            count_skip(record, "record_unreadable")
            return record
        image, text = example.get(self.image_key), example.get(self.text_key)
        if image is None or len(image) == 0:
            count_skip(record, "image_missing")
        elif text is None:
            count_skip(record, "caption_missing")
        else:
            record["documents"].append({"key": record["key"], "parts": [("image", bytes(image)),
                                                                       ("text", record_text(text, record))]})
        return record
