"""Selection files: which samples of a WebDataset a source reads, without copying the shards.

A selection is one `.npz` file (written atomically by `python -m oq2vl_jax.curate select`):
  shard         int32 [n]   position in `meta.shards` of each selected sample's tar
  image_offset  int64 [n]   byte offset of that sample's image member data inside its tar: the member index
                            stores the same offset, so a sample is found without keys, uids or ordering rules
  meta          0-d str     JSON {"format": "oq2vl_selection", "version": 1, "root": shard directory,
                            "shards": [[relative name, size, mtime_ns], ...] (the shards the selection touches),
                            "rule": the rule as given, "counts": {...}}
Rows may repeat: a sample listed k times is read k times (the original resharder writes a uid listed k times in
its subset k times).

`SelectedSource(base, path)` wraps a `WebDatasetSource`: it checks that every shard the selection names still has
the recorded size and mtime (else: stale, one line naming the shard), maps each row to the base source's index
through the member index, and serves `len`/`[i]` over the selected rows only, so Grain's sampler, per-host
sharding and iterator state work unchanged.
"""

from __future__ import annotations

import json
import os

import numpy as np

from oq2vl_jax.errors import UserError
from oq2vl_jax.storage import local_copy, paths as storage

FORMAT = "oq2vl_selection"
VERSION = 1


def shard_fingerprint(root: str, name: str) -> list:
    """[name, size, mtime_ns] of a local shard; [name, size, version] of a bucket object (ETag / generation)."""
    if storage.is_remote(root):
        return [name, *storage.stat(storage.join(root, name))]
    st = os.stat(os.path.join(root, name))
    return [name, int(st.st_size), int(st.st_mtime_ns)]


def write_selection(path: str, *, root: str, shards: list[list], shard: np.ndarray, image_offset: np.ndarray,
                    rule, counts: dict) -> str:
    """Writes the selection atomically (tmp + os.replace; in a bucket one whole object); refuses a path that exists
    and is not a selection."""
    if not path.endswith(".npz"):
        raise UserError(f"selection output '{path}' must end in .npz")
    if storage.exists(path):
        try:
            read_meta(local_copy.local_file(path))
        except UserError:
            raise UserError(f"'{path}' exists and is not a selection file; choose another output") from None
    meta = {"format": FORMAT, "version": VERSION, "root": storage.resolve(root), "shards": shards, "rule": rule,
            "counts": counts}
    order = np.lexsort((np.asarray(image_offset, np.int64), np.asarray(shard, np.int32)))
    if storage.is_remote(path):
        import io
        buffer = io.BytesIO()
        np.savez(buffer, shard=np.asarray(shard, np.int32)[order],
                 image_offset=np.asarray(image_offset, np.int64)[order], meta=np.array(json.dumps(meta)))
        storage.write_bytes(path, buffer.getvalue())
        return path
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp.npz"
    np.savez(tmp, shard=np.asarray(shard, np.int32)[order], image_offset=np.asarray(image_offset, np.int64)[order],
             meta=np.array(json.dumps(meta)))
    os.replace(tmp, path)
    return path


def read_meta(path: str) -> dict:
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
    except (OSError, ValueError, KeyError) as e:
        raise UserError(f"selection '{path}' is not readable: {e}") from None
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise UserError(f"'{path}' is not a version-{VERSION} {FORMAT} file")
    return meta


def read_selection(path: str) -> tuple[dict, np.ndarray, np.ndarray]:
    meta = read_meta(path)
    with np.load(path, allow_pickle=False) as z:
        return meta, np.asarray(z["shard"]), np.asarray(z["image_offset"])


def check_fresh(meta: dict, root: str, where: str) -> None:
    """UserError when a shard the selection names is gone or changed since the scores were computed."""
    for name, size, mtime in meta["shards"]:
        try:
            now = shard_fingerprint(root, name)
        except OSError:
            raise UserError(f"selection {where} is stale: shard '{name}' is missing under {root}") from None
        if now[1:] != [size, mtime]:
            raise UserError(f"selection {where} is stale: shard '{name}' changed (size/version {now[1:]} vs recorded "
                            f"{[size, mtime]}); recompute the scores and the selection")


class SelectedSource:
    """The selected rows of a `WebDatasetSource` (or any source with `root`, `_shards`, `entries`)."""

    def __init__(self, base, path: str):
        self.base, self.path = base, storage.resolve(path)
        if not storage.isfile(self.path):
            raise UserError(f"select: selection file '{path}' does not exist")
        meta, shard, offset = read_selection(local_copy.local_file(self.path))  # a bucket's: a local copy
        check_fresh(meta, base.root, path)
        self.meta, self.name = meta, base.name
        self.indices = self._resolve(meta, shard, offset)

    def _resolve(self, meta: dict, shard: np.ndarray, offset: np.ndarray) -> np.ndarray:
        position = {name: i for i, name in enumerate(self.base._shards)}
        missing = [name for name, _, _ in meta["shards"] if name not in position]
        if missing:
            raise UserError(f"selection {self.path}: shard '{missing[0]}' is not part of the source at "
                            f"{self.base.root} ({len(missing)} such shards)")
        entries = self.base.entries
        base_shard = np.asarray(entries["shard"])
        ok = np.asarray(entries["status"]) == 0
        out = np.empty(len(shard), np.int64)
        for sel_id in np.unique(shard):
            rows = np.nonzero(shard == sel_id)[0]
            base_id = position[meta["shards"][int(sel_id)][0]]
            lo, hi = np.searchsorted(base_shard, [base_id, base_id + 1])  # entries are grouped by shard, in order
            candidates = np.arange(lo, hi)[ok[lo:hi]]
            offsets = np.asarray(entries["image_offset"][candidates])
            order = np.argsort(offsets, kind="stable")
            sorted_offsets = offsets[order]
            at = np.searchsorted(sorted_offsets, offset[rows])
            at_clipped = np.minimum(at, len(sorted_offsets) - 1)
            found = (at < len(sorted_offsets)) & (sorted_offsets[at_clipped] == offset[rows]) if len(order) else \
                np.zeros(len(rows), bool)
            if not found.all():
                raise UserError(f"selection {self.path} is stale: {int((~found).sum())} selected samples of shard "
                                f"'{meta['shards'][int(sel_id)][0]}' are not in its member index")
            out[rows] = candidates[order[at_clipped]]
        return out

    def __len__(self) -> int:
        return len(self.indices)

    def __repr__(self) -> str:
        return f"SelectedSource({self.base!r}, {len(self)} selected from {self.path!r})"

    def __getitem__(self, index: int) -> dict:
        record = self.base[int(self.indices[int(index)])]
        record["index"] = int(index)
        return record
