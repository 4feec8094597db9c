"""WebDataset tar shards (img2dataset layout) as a random-access Grain source, through a member index.

A shard holds members `{key}.jpg|png|jpeg|webp` (image), `{key}.txt` (caption) and `{key}.json` (metadata, not
needed for training). Global shuffling needs random access, so a member index is built once: for every sample the
byte offset and size of its image and caption inside its tar, read from the tar headers with `tarfile`. Reading a
record is then two `pread`s; members are read into memory, never extracted.

The index is two files per shard selection, `oq2vl_index.<selection>.<fingerprint>.npy` (a structured array,
memory-mapped, shared by all worker processes through the page cache) and `.json` (root, shard names, sizes,
mtimes). <selection> is a hash of the source's path as given (directory, .tar, pattern or list), so sources reading
different shards of one directory (two single tars, two globs) never share an index; <fingerprint> is a hash of every shard's name, size and
mtime, so an index is only ever read for exactly the bytes it describes: when a shard changes, is added or removed,
the name no longer matches and the index is rebuilt (the stale files of that selection are then removed). Each
process re-checks the fingerprint before it maps the index. The files go next to the shards when that directory is
writable, else under $OQ2VL_CACHE/wds_index/ (default ~/.cache/oq2vl_jax/wds_index/), or wherever `index_dir` says.
Build ahead of time with `python -m oq2vl_jax.data.sources index PATH [--workers N]`; otherwise it is built lazily on
first use. Which shards a
source reads (directory, .tar, glob, brace range, list) is data/sources/shard_paths.py.

`write_tar_shard` writes a shard in the same layout (atomically); the resharder and the demo use it.

Shards in a bucket (gs://, s3://; oq2vl_jax/storage/paths.py) work the same way: the fingerprint holds every object's
size and version (S3 ETag, GCS generation) instead of its mtime, a record is two ranged GETs (one when the image and
caption lie close together) pinned to the indexed version, so a replaced object is counted as shard_changed and never
read at the old offsets. The index of a bucket source lives in the local cache (or `index_dir`); `python -m
oq2vl_jax.data.sources index s3://...` also stores it beside the shards, where every other host finds and copies it
instead of reading every shard again.

Problems found while indexing become index entries with a skip status (a missing caption or image member, a
truncated or unreadable shard), so they are counted every time the pipeline reaches them instead of vanishing.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import time
from typing import Mapping, Sequence

import numpy as np
from absl import logging

from oq2vl_jax.data.sources.npy_map import map_npy
from oq2vl_jax.data.sources.shard_paths import expand_shards
from oq2vl_jax.data.stats import SKIP_REASONS
from oq2vl_jax.errors import UserError
from oq2vl_jax.storage import local_copy, paths as storage

IMAGE_EXTS = ("jpg", "png", "jpeg", "webp")  # the reference's webdataset field "jpg;png;jpeg;webp", in that order
CAPTION_EXT = "txt"
INDEX_VERSION = 2
INDEX_NAME = "oq2vl_index"
INDEX_DTYPE = np.dtype([
    ("shard", "<i4"), ("status", "i1"), ("image_ext", "i1"),
    ("image_offset", "<i8"), ("image_size", "<i8"), ("text_offset", "<i8"), ("text_size", "<i8"),
])
_TAR_BLOCK = 512
_REMOTE_SCAN_BLOCK = 8 << 20  # a bucket shard is scanned in 8 MiB ranged reads (tar headers are spread through it)
_MERGE_GAP = 64 << 10  # a record's image and caption closer than this are read with one ranged GET


def status_code(reason: str | None) -> int:
    return 0 if reason is None else 1 + SKIP_REASONS.index(reason)


def status_reason(code: int) -> str | None:
    return None if code == 0 else SKIP_REASONS[code - 1]


def split_member_name(name: str) -> tuple[str, str] | None:
    """WebDataset grouping: key = path up to the first '.' of the basename, ext = the rest, lower-cased."""
    dirname, base = os.path.split(name)
    if "." not in base or base.startswith("."):
        return None
    stem, ext = base.split(".", 1)
    return os.path.join(dirname, stem) if dirname else stem, ext.lower()


def _entry(reason: str | None, image=None, image_ext: int = -1, text=None) -> tuple:
    image = image or (0, 0)
    text = text or (0, 0)
    return (0, status_code(reason), image_ext, image[0], image[1], text[0], text[1])


def _open_shard(path: str):
    """(size, binary file object) of a local or bucket shard."""
    if storage.is_remote(path):
        size, _ = storage.stat(path)
        return size, storage.filesystem(path).open(path, "rb", block_size=_REMOTE_SCAN_BLOCK, cache_type="readahead")
    return os.path.getsize(path), open(path, "rb")


def scan_shard(path: str) -> np.ndarray:
    """Index entries (INDEX_DTYPE, shard field 0) for one tar: one per sample key, plus skip entries for damage."""
    try:
        size, f = _open_shard(path)
    except OSError as e:
        logging.warning("webdataset: cannot open shard %s: %s", path, e)
        return np.array([_entry("shard_unreadable")], INDEX_DTYPE)
    samples: dict[str, dict[str, tuple[int, int]]] = {}
    current, skipping, duplicates = None, False, 0  # a key met again later (or a member twice) is a second sample
    truncated = False
    with f:
        try:
            tar = tarfile.open(fileobj=f, mode="r:")
        except (tarfile.TarError, OSError, EOFError) as e:
            logging.warning("webdataset: %s is not a readable tar (%s); counted as shard_unreadable", path, e)
            return np.array([_entry("shard_unreadable")], INDEX_DTYPE)
        while True:
            try:
                member = tar.next()
            except (tarfile.TarError, OSError, EOFError):
                truncated = True
                break
            if member is None:
                break
            if not member.isfile():
                continue
            if member.offset_data + member.size > size:
                truncated = True
                break
            parsed = split_member_name(member.name)
            if parsed is None:
                continue
            key, ext = parsed
            if key != current:
                current, skipping = key, key in samples
                duplicates += skipping
            elif not skipping and ext in samples[key]:
                skipping, duplicates = True, duplicates + 1
            if not skipping:
                samples.setdefault(key, {})[ext] = (member.offset_data, member.size)
        if not truncated:
            # tarfile ends silently at a cut inside a header: a complete archive ends with a zero block.
            f.seek(tar.offset)
            end = f.read(_TAR_BLOCK)
            truncated = len(end) < _TAR_BLOCK or any(end)
    entries = []
    for members in samples.values():
        ext = next((e for e in IMAGE_EXTS if e in members), None)
        if ext is None:
            entries.append(_entry("image_missing"))
        elif CAPTION_EXT not in members:
            entries.append(_entry("caption_missing"))
        else:
            entries.append(_entry(None, members[ext], IMAGE_EXTS.index(ext), members[CAPTION_EXT]))
    if duplicates:
        logging.warning("webdataset: shard %s repeats %d sample keys; the repeats are skipped (duplicate_key)", path,
                        duplicates)
        entries += [_entry("duplicate_key")] * duplicates
    if truncated:
        logging.warning("webdataset: shard %s is truncated; %d complete samples kept", path, len(entries))
        entries.append(_entry("shard_truncated"))
    if not entries:
        entries.append(_entry("shard_unreadable"))
    return np.array(entries, INDEX_DTYPE)


def list_shards(path) -> tuple[str, list[str]]:
    """(root dir, sorted shard paths relative to it) for a path, pattern or list of them (shard_paths.py)."""
    return expand_shards(path)


def _fingerprint(root: str, shards: Sequence[str]) -> list[list]:
    """[name, size, mtime_ns] per local shard; [name, size, version] per bucket object (ETag / generation)."""
    out = []
    for name in shards:
        path = storage.join(root, name)
        try:
            if storage.is_remote(root):
                out.append([name, *storage.stat(path)])
            else:
                st = os.stat(path)
                out.append([name, st.st_size, st.st_mtime_ns])
        except OSError as e:
            raise UserError(f"webdataset shard {path!r} cannot be read: {e}") from None
    return out


def _digest(value) -> str:
    return hashlib.sha1(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]


def index_stem(path, root: str, fingerprint: list[list]) -> str:
    """File stem of the index of what `path` selects, for exactly these shards, sizes and mtimes (module docstring).

    The selection part hashes the path as given (directory, pattern or list, made absolute), so a directory source
    keeps its name when shards are added and its stale index is replaced, not left beside the new one."""
    items = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    selection = sorted(storage.resolve(p) for p in items)
    return f"{INDEX_NAME}.{_digest([root, selection])}.{_digest(fingerprint)}"


def _index_dirs(root: str, index_dir: str | None) -> list[str]:
    if index_dir:
        return [os.path.abspath(os.path.expanduser(index_dir))]
    digest = hashlib.sha1(root.encode()).hexdigest()[:16]
    cache = os.path.join(local_copy.cache_dir("wds_index"), digest)
    return [cache] if storage.is_remote(root) else [root, cache]  # a bucket's copy: _fetch_beside / publish_index


def _fetch_beside(root: str, stem: str, fingerprint: list[list], directory: str) -> str | None:
    """The index stored beside bucket shards (by `publish_index`), copied into the local `directory`, if it is a
    complete index of exactly these shards; else None."""
    beside = storage.join(root, stem)
    if not storage.exists(beside + ".json"):
        return None
    try:
        os.makedirs(directory, exist_ok=True)
        for ext in (".npy", ".json"):  # npy first, as build_index writes them
            data = storage.read_bytes(beside + ext)
            tmp = os.path.join(directory, f".{stem}.{os.getpid()}.fetch{ext}")
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, os.path.join(directory, stem + ext))
    except OSError as e:
        logging.warning("webdataset: cannot copy the index stored beside %s (%s); indexing the shards", root, e)
        return None
    npy = os.path.join(directory, stem + ".npy")
    return npy if _valid_index(npy, root, fingerprint) else None


def publish_index(npy_path: str, root: str) -> str | None:
    """Stores a bucket source's index beside its shards (two objects of ours, `oq2vl_index.*`), so every host reuses
    it; returns where, or None for a local source (its index is beside the shards already when they are writable)."""
    if not storage.is_remote(root):
        return None
    stem = os.path.basename(npy_path)[:-len(".npy")]
    for ext in (".npy", ".json"):
        with open(npy_path[:-len(".npy")] + ext, "rb") as f:
            storage.write_bytes(storage.join(root, stem + ext), f.read())
    return storage.join(root, stem + ".npy")


def _read_meta(npy_path: str) -> dict | None:
    try:
        with open(npy_path[:-len(".npy")] + ".json") as f:
            meta = json.load(f)
        return meta if meta.get("version") == INDEX_VERSION else None
    except (OSError, ValueError):
        return None


def _valid_index(npy_path: str, root: str, fingerprint: list[list]) -> dict | None:
    """The index's metadata if npy_path is a complete index of exactly these shards, else None."""
    meta = _read_meta(npy_path)
    if not meta or meta.get("root") != root or meta.get("shards") != fingerprint:
        return None
    try:
        entries = map_npy(npy_path, INDEX_DTYPE)
    except (OSError, ValueError):
        return None
    return meta if len(entries) == meta.get("num_records") else None


def _remove_stale(directory: str, stem: str) -> None:
    """Removes this selection's index files for older shard fingerprints (files this module wrote)."""
    selection = stem.rsplit(".", 1)[0] + "."
    for name in os.listdir(directory):
        if name.startswith(selection) and not name.startswith(stem + ".") and name.endswith((".npy", ".json")):
            try:
                os.remove(os.path.join(directory, name))
            except OSError:
                pass


def build_index(path, index_dir: str | None = None, workers: int = 1, force: bool = False) -> str:
    """Builds (or finds an up-to-date) member index for the shards `path` names; returns the index's .npy path."""
    root, shards = list_shards(path)
    fingerprint = _fingerprint(root, shards)
    stem = index_stem(path, root, fingerprint)
    candidates = _index_dirs(root, index_dir)
    if not force:
        for directory in candidates:
            npy = os.path.join(directory, stem + ".npy")
            if _valid_index(npy, root, fingerprint):
                return npy
        if storage.is_remote(root):
            npy = _fetch_beside(root, stem, fingerprint, candidates[0])
            if npy:
                return npy
    start = time.time()
    logging.info("webdataset: indexing %d shards under %s", len(shards), root)
    shard_paths = [storage.join(root, s) for s in shards]
    if workers > 1 and len(shard_paths) > 1:
        import multiprocessing
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            per_shard = pool.map(scan_shard, shard_paths, chunksize=max(1, len(shard_paths) // (workers * 8)))
    else:
        per_shard = []
        for i, p in enumerate(shard_paths):
            per_shard.append(scan_shard(p))
            if (i + 1) % 100 == 0:
                rate = (i + 1) / (time.time() - start)
                logging.info("webdataset: indexed %d/%d shards (%.1f shards/s, ETA %.0f s)", i + 1, len(shard_paths),
                             rate, (len(shard_paths) - i - 1) / rate)
    if _fingerprint(root, shards) != fingerprint:
        raise UserError(f"webdataset shards under {root} changed while they were being indexed; run again")
    for shard_id, entries in enumerate(per_shard):
        entries["shard"] = shard_id
    entries = np.concatenate(per_shard) if per_shard else np.zeros(0, INDEX_DTYPE)
    problems = {r: int((entries["status"] == status_code(r)).sum()) for r in SKIP_REASONS}
    meta = {"version": INDEX_VERSION, "root": root, "shards": fingerprint, "num_records": int(len(entries)),
            "problems": {k: v for k, v in problems.items() if v}}
    errors = []
    for directory in candidates:
        try:
            os.makedirs(directory, exist_ok=True)
            tmp = os.path.join(directory, f".{stem}.{os.getpid()}.tmp")
            with open(tmp + ".npy", "wb") as f:
                np.save(f, entries, allow_pickle=False)
            with open(tmp + ".json", "w") as f:
                json.dump(meta, f)
            # npy first: a reader trusts the json fingerprint only once the matching npy is in place
            npy = os.path.join(directory, stem + ".npy")
            os.replace(tmp + ".npy", npy)
            os.replace(tmp + ".json", os.path.join(directory, stem + ".json"))
            _remove_stale(directory, stem)
            logging.info("webdataset: index of %d records (%s) written to %s in %.1f s", len(entries),
                         meta["problems"] or "no problems", npy, time.time() - start)
            return npy
        except OSError as e:
            errors.append(f"{directory}: {e}")
    raise UserError(f"cannot write the webdataset index for {root}: {'; '.join(errors)}; pass index_dir")


def _decode_text(raw: bytes) -> tuple[str, bool]:
    try:
        return raw.decode("utf-8"), False
    except UnicodeDecodeError:
        return raw.decode("utf-8", errors="replace"), True


class WebDatasetSource:
    """Random-access source over indexed WebDataset shards; `source[i]` is a caption record (see __init__.py)."""

    def __init__(self, path, *, index_dir: str | None = None, name: str | None = None):
        self.root, self._shards = list_shards(path)
        self.index_path = build_index(path, index_dir)
        self.index_dir = os.path.dirname(self.index_path)
        meta = _read_meta(self.index_path)
        # what every shard looked like when indexed: a record is read only while its shard still matches
        self._shard_stats = [(size, mtime) for _, size, mtime in meta["shards"]]
        self.num_records = meta["num_records"]
        self.problems = meta["problems"]
        self.name = name or os.path.basename(self.root.rstrip("/"))
        self._entries = None

    def __len__(self) -> int:
        return self.num_records

    def __repr__(self) -> str:
        return f"WebDatasetSource({self.root!r}, {len(self._shards)} shards, {self.num_records} records)"

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_entries"] = None  # re-mapped in each process instead of pickling the whole index
        return state

    @property
    def entries(self) -> np.ndarray:
        """The index, mapped once per process (its file name carries the shards' fingerprint; see the docstring)."""
        if self._entries is None:
            entries = map_npy(self.index_path, INDEX_DTYPE)  # thread-safe: Grain's read threads get here at once
            if len(entries) != self.num_records:
                raise UserError(f"webdataset index {self.index_path} was changed after it was opened; restart")
            self._entries = entries
        return self._entries

    def __getitem__(self, index: int) -> dict:
        index = int(index)
        entry = self.entries[index]
        shard = self._shards[int(entry["shard"])]
        record = {"source": self.name, "index": index, "key": f"{shard}:{index}", "documents": [], "skips": {},
                  "repairs": {}}
        reason = status_reason(int(entry["status"]))
        if reason is not None:
            record["skips"][reason] = 1
            return record
        if storage.is_remote(self.root):
            read = self._read_remote(storage.join(self.root, shard), int(entry["shard"]), entry)
        else:
            read = self._read_local(os.path.join(self.root, shard), int(entry["shard"]), entry)
        if isinstance(read, str):
            record["skips"][read] = 1
            return record
        image, text = read
        caption, repaired = _decode_text(text)
        if repaired:
            record["repairs"]["repaired_text_utf8"] = 1
        record["documents"].append({"key": record["key"], "parts": [("image", image), ("text", caption)]})
        return record

    def _read_local(self, path: str, shard_id: int, entry) -> tuple[bytes, bytes] | str:
        """(image, caption bytes), or the skip reason."""
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            return "shard_unreadable"
        try:
            st = os.fstat(fd)
            if (st.st_size, st.st_mtime_ns) != self._shard_stats[shard_id]:
                return "shard_changed"  # the index's offsets no longer describe this file
            image = os.pread(fd, int(entry["image_size"]), int(entry["image_offset"]))
            text = os.pread(fd, int(entry["text_size"]), int(entry["text_offset"]))
        except OSError:
            return "record_unreadable"
        finally:
            os.close(fd)
        if len(image) != entry["image_size"] or len(text) != entry["text_size"]:
            return "record_unreadable"  # the shard changed after indexing
        return image, text

    def _read_remote(self, path: str, shard_id: int, entry) -> tuple[bytes, bytes] | str:
        """(image, caption bytes) by ranged GETs of exactly the indexed object version, or the skip reason."""
        version = self._shard_stats[shard_id][1]
        spans = [(int(entry["image_offset"]), int(entry["image_size"])),
                 (int(entry["text_offset"]), int(entry["text_size"]))]
        lo, hi = min(o for o, _ in spans), max(o + n for o, n in spans)
        try:
            if hi - lo - sum(n for _, n in spans) <= _MERGE_GAP:  # one GET for both members
                block = storage.read_range(path, lo, hi - lo, version)
                parts = [block[o - lo:o - lo + n] for o, n in spans]
            else:
                parts = [storage.read_range(path, o, n, version) for o, n in spans]
        except storage.VersionChanged:
            return "shard_changed"
        except FileNotFoundError:
            return "shard_unreadable"
        except OSError:
            return "record_unreadable"
        if any(len(p) != n for p, (_, n) in zip(parts, spans)):
            return "record_unreadable"
        return parts[0], parts[1]


def write_tar_shard(path: str, samples: Sequence[Mapping[str, object]]) -> str:
    """Writes a WebDataset tar: each sample is {"__key__": key, ext: bytes | str | dict, ...} -> members key.ext."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
        for sample in samples:
            key = str(sample["__key__"])
            for ext, value in sample.items():
                if ext == "__key__":
                    continue
                if isinstance(value, str):
                    value = value.encode("utf-8")
                elif isinstance(value, dict):
                    value = json.dumps(value).encode("utf-8")
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size, info.mtime, info.mode = len(value), 0, 0o644
                tar.addfile(info, io.BytesIO(value))
    os.replace(tmp, path)
    return path
