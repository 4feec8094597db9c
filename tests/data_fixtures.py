"""Shared fixtures and builders for the data-pipeline tests (import with `from data_fixtures import ...`).

Everything is synthetic and offline: the tiny tokenizer from oq2vl_jax.demo.shapes, small images made with PIL, tar
shards written with `write_tar_shard`, and hand-crafted bad inputs (truncated files, decompression bombs, ...).
"""

from __future__ import annotations

import io
import os
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from oq2vl_jax.data.sources.webdataset import write_tar_shard
from oq2vl_jax.demo import shapes as demo
from oq2vl_jax.text.documents import DocumentLayout


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory) -> str:
    return demo.build_tiny_tokenizer(str(tmp_path_factory.mktemp("tiny_tokenizer")))


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_tokenizer_dir):
    from oq2vl_jax.text.tokens import load_tokenizer
    return load_tokenizer(tiny_tokenizer_dir)


def image_bytes(size=(16, 12), colour=(200, 30, 30), fmt="JPEG", mode="RGB", **save_kwargs) -> bytes:
    img = Image.new("RGB", size, colour)
    if mode != "RGB":
        img = img.convert(mode)
    buf = io.BytesIO()
    img.save(buf, format=fmt, **save_kwargs)
    return buf.getvalue()


def noise_image_bytes(size=(64, 48), seed=0, fmt="PNG") -> bytes:
    arr = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


def i16_png_bytes(values: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(values.astype(np.uint16)).save(buf, format="PNG")
    return buf.getvalue()


def png_claiming_size(width: int, height: int) -> bytes:
    """A tiny valid PNG whose IHDR claims width x height (a decompression-bomb header; pixels never decoded)."""
    data = bytearray(image_bytes((4, 4), fmt="PNG"))
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF)
    return bytes(data)


def truncated_jpeg_bytes() -> bytes:
    full = noise_image_bytes((64, 64), seed=1, fmt="JPEG")
    return full[: len(full) // 2]


def numbered_samples(n: int, start: int = 0, image_size=(8, 8)) -> list[dict]:
    """Caption samples whose caption carries a unique number: "sample 17 is a red circle"."""
    samples = []
    for i in range(start, start + n):
        colour = ((i * 37) % 256, (i * 91) % 256, (i * 53) % 256)
        samples.append({"__key__": f"s{i:06d}", "jpg": image_bytes(image_size, colour),
                        "txt": f"sample {i} is a red circle" + " at the top left" * (i % 4)})
    return samples


def write_numbered_shards(directory: str, n: int, shard_size: int = 16, start: int = 0) -> str:
    for shard, offset in enumerate(range(0, n, shard_size)):
        write_tar_shard(os.path.join(directory, f"{shard:05d}.tar"),
                             numbered_samples(min(shard_size, n - offset), start + offset))
    return directory


def sample_numbers(batch: dict, tokenizer) -> list[int]:
    """The numbers of the documents in a batch, read back from their caption tokens (row order)."""
    out = []
    for r in range(batch["input_ids"].shape[0]):
        seg, ids, mask = batch["segment_ids"][r], batch["input_ids"][r], batch["image_mask"][r]
        for s in range(1, int(seg.max()) + 1):
            where = (seg == s) & ~mask
            text = tokenizer.decode(ids[where].tolist(), skip_special_tokens=True)
            out.append(int(text.split("sample", 1)[1].split()[0]))
    return out


def base_config(tokenizer_dir: str, sources: list[dict], **overrides):
    from oq2vl_jax.data.pipeline import default_data_config
    cfg = default_data_config()
    cfg.sources = sources
    cfg.tokenizer_dir = tokenizer_dir
    cfg.image_size = 16
    cfg.row_length = 128
    cfg.pack_buffer = 16
    cfg.read_threads = 2
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return cfg


def pil_horizontal_then_vertical(pixels: np.ndarray, width: int, height: int) -> np.ndarray:
    """Pillow's bicubic resize with the pass order of every Pillow before 12.2 (the reference's).

    A resize along one axis runs one pass whatever the Pillow version, so two of them fix the order."""
    img = Image.fromarray(pixels)
    return np.asarray(img.resize((width, img.height), Image.BICUBIC).resize((width, height), Image.BICUBIC))
