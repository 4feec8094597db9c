"""Reading WebDataset shards in order for curation, and the per-shard tables curation writes.

`iter_samples(tar)` streams one tar once (sequential reads, no index needed) and yields its samples in tar order:
members are grouped by key as WebDataset does (key = path up to the first '.' of the basename); a sample ends when
the key changes. Each sample carries its image member's data offset, the number the member index stores, which is
how selections find samples again (data/sources/selection.py).

Per-shard tables are parquet files `{shard path without .tar}_{task}.parquet` (the original's `{8 digits}_{task}`
naming for DataComp's `{8 digits}.tar`), written atomically, with the shard's [name, size, mtime_ns] in the schema
metadata so a table whose shard changed is detected. Common columns: key, uid, image_offset, width, height, status.
"""

from __future__ import annotations

import json
import os
import tarfile
from typing import Iterator

import numpy as np

from oq2vl_jax.data.sources import webdataset
from oq2vl_jax.data.sources.selection import shard_fingerprint
from oq2vl_jax.errors import UserError

TABLE_META_KEY = b"oq2vl_shard"
ROW_COLUMNS = ("key", "uid", "image_offset", "width", "height", "status")


def list_shards(pattern) -> tuple[str, list[str]]:
    """(root, sorted relative shard names): a directory, one .tar, a glob, a brace range or a list of them, exactly
    as a webdataset source reads them (data/sources/shard_paths.py)."""
    return webdataset.list_shards(pattern)


def table_path(out_dir: str, shard: str, task: str) -> str:
    return os.path.join(out_dir, shard[: -len(".tar")] + f"_{task}.parquet")


def _image_size(data: bytes) -> tuple[int, int]:
    from PIL import Image
    import io
    try:
        with Image.open(io.BytesIO(data)) as im:
            return im.size
    except Exception:  # noqa: BLE001 - any unreadable image is a row with status "image_corrupt"
        return -1, -1


def _sample(key: str, members: dict[str, tuple[int, bytes]], want_image: bool) -> dict:
    meta = {}
    if "json" in members:
        try:
            meta = json.loads(members["json"][1])
        except ValueError:
            meta = {}
    ext = next((e for e in webdataset.IMAGE_EXTS if e in members), None)
    caption = members.get(webdataset.CAPTION_EXT, (0, None))[1]
    status = "success"
    if ext is None:
        status = "image_missing"
    elif caption is None:
        status = "caption_missing"
    image = members[ext][1] if ext else None
    width, height = meta.get("original_width"), meta.get("original_height")
    if (width is None or height is None) and image is not None:
        width, height = _image_size(image)
        if width < 0:
            status = "image_corrupt"
    return {"key": key, "uid": str(meta.get("uid", key)), "image_offset": members[ext][0] if ext else -1,
            "width": int(width if width is not None else -1), "height": int(height if height is not None else -1),
            "status": status, "image": image if want_image else None,
            "caption": caption.decode("utf-8", errors="replace") if caption is not None else None, "json": meta,
            "members": members}


def iter_samples(path: str, want_image: bool = True) -> Iterator[dict]:
    """Samples of one tar in order: {key, uid, image_offset, width, height, status, image, caption, json, members}.
    `members` maps extension -> (data offset, bytes) for the resharder. A truncated tar ends early."""
    try:
        tar = tarfile.open(path, mode="r:")
    except (tarfile.TarError, OSError) as e:
        raise UserError(f"shard {path} is not a readable tar: {e}") from None
    with tar:
        # The member index's grouping (data/sources/webdataset.py scan_shard): a key met again after another key, or a
        # member extension met twice within a sample, starts a duplicate that is skipped (duplicate_key there).
        key, members, seen, skipping = None, {}, set(), False
        while True:
            try:
                member = tar.next()
            except (tarfile.TarError, OSError, EOFError):
                break
            if member is None:
                break
            if not member.isfile():
                continue
            parsed = webdataset.split_member_name(member.name)
            if parsed is None:
                continue
            if parsed[0] != key:
                if key is not None and members:
                    yield _sample(key, members, want_image)
                key, members, skipping = parsed[0], {}, parsed[0] in seen
                seen.add(key)
            elif parsed[1] in members:
                skipping = True
            if skipping:
                continue
            f = tar.extractfile(member)
            data = f.read() if f is not None else b""
            members[parsed[1]] = (member.offset_data, data)
        if key is not None and members:
            yield _sample(key, members, want_image)


def write_table(path: str, columns: dict[str, list | np.ndarray], fingerprint: list, extra_meta: dict | None = None):
    """Atomic parquet write with the shard fingerprint in the schema metadata."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    table = pa.table(columns)
    meta = {TABLE_META_KEY: json.dumps(fingerprint).encode()}
    for k, v in (extra_meta or {}).items():
        meta[k.encode()] = json.dumps(v).encode()
    table = table.replace_schema_metadata(meta)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def read_table(path: str, columns: list[str] | None = None):
    import pyarrow.parquet as pq
    try:
        return pq.read_table(path, columns=columns)
    except Exception as e:  # noqa: BLE001 - pyarrow raises several types for a damaged file
        raise UserError(f"score table {path} is not readable: {e}") from None


def table_fingerprint(path: str) -> list | None:
    import pyarrow.parquet as pq
    try:
        meta = pq.read_schema(path).metadata or {}
    except Exception:  # noqa: BLE001
        return None
    raw = meta.get(TABLE_META_KEY)
    return json.loads(raw) if raw else None


def table_is_current(path: str, root: str, shard: str) -> bool:
    """True when `path` exists and was computed from the shard as it is now (name, size, mtime)."""
    return os.path.isfile(path) and table_fingerprint(path) == shard_fingerprint(root, shard)


def row_columns(samples: list[dict]) -> dict[str, list]:
    return {c: [s[c] for s in samples] for c in ROW_COLUMNS}


def write_key_tables(pattern: str, out_dir: str, task: str = "keys") -> int:
    """The row tables alone (no score): what `curate select` ranges over when the rules need no score of ours.
    Resumable: shards whose table is current are skipped. Returns the number of shards written."""
    root, shards = list_shards(pattern)
    written = 0
    for shard in shards:
        path = table_path(out_dir, shard, task)
        if table_is_current(path, root, shard):
            continue
        fingerprint = shard_fingerprint(root, shard)
        samples = list(iter_samples(os.path.join(root, shard), want_image=False))
        write_table(path, row_columns(samples), fingerprint)
        written += 1
    return written
