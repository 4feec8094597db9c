"""Byte-offset index of a big JSON array or JSON-lines file, so a record is one `pread` + `json.loads`.

MAmmoTH-VL's `mammoth_si_10M.json` is a 21 GB JSON list; loading it whole takes tens of GB of Python objects in every
worker. Instead the file is scanned once, in fixed-size chunks with numpy (memory bounded by the chunk size, not the
file size): string state (quotes not escaped by an odd run of backslashes) and bracket depth are carried across
chunks; every top-level element of the array (depth-1 separators: the opening `[`, commas, the closing `]`) or every
non-blank line of a JSON-lines file becomes an (offset, length) entry.

The index is two files, `<file name>.oq2vl_index.npy` (int64 [n, 2], memory-mapped by each worker) and
`<file name>.oq2vl_index.json` (file name, size, mtime, kind, count), written atomically next to the file when that
directory is writable, else under ~/.cache/oq2vl_jax/json_index/, or in `index_dir`. An index whose recorded size or
mtime differs from the file is stale and rebuilt. Build ahead of time with
`python -m oq2vl_jax.data.sources.json_index FILE [--index-dir D]`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import time

import numpy as np
from absl import logging

from oq2vl_jax.data.sources.npy_map import map_npy
from oq2vl_jax.errors import UserError, report_user_error

INDEX_VERSION = 1
INDEX_SUFFIX = ".oq2vl_index"
KINDS = ("array", "lines")
CHUNK_BYTES = 1 << 20  # peak scan memory is ~8x this (numpy temporaries), whatever the file size
_QUOTE, _BACKSLASH, _COMMA, _NEWLINE = 34, 92, 44, 10
_OPEN = (91, 123)   # [ {
_CLOSE = (93, 125)  # ] }


def detect_kind(path: str) -> str:
    """"array" when the first non-blank byte is `[`, else "lines" (JSON lines)."""
    with open(path, "rb") as f:
        while True:
            block = f.read(4096)
            if not block:
                return "lines"
            stripped = block.lstrip()
            if stripped:
                return "array" if stripped[:1] == b"[" else "lines"


_LUT = np.zeros(256, np.uint8)  # byte -> 1 quote, 2 backslash, 3 open, 4 close, 5 comma (0: nothing to track)
_LUT[_QUOTE], _LUT[_BACKSLASH], _LUT[_COMMA] = 1, 2, 5
_LUT[list(_OPEN)], _LUT[list(_CLOSE)] = 3, 4


class _ArrayScanner:
    """Carries string/escape/depth state across chunks; yields absolute positions of depth-1 separators.

    Works on the sparse positions of the bytes that matter (quotes, backslashes, brackets, commas): a quote is
    escaped when an odd run of backslashes ends right before it."""

    def __init__(self):
        self.in_string = False
        self.backslashes = 0  # length of the backslash run that ended the previous chunk
        self.depth = 0

    def separators(self, chunk: np.ndarray, base: int) -> np.ndarray:
        n = chunk.shape[0]
        pos = np.flatnonzero(_LUT[chunk])
        if not pos.size:
            self.backslashes = 0
            return np.zeros(0, np.int64)
        kind = _LUT[chunk[pos]]
        m = pos.shape[0]
        j = np.arange(m, dtype=np.int64)
        is_bs = kind == 2
        # cont[j]: element j continues a backslash run from element j - 1 (or, for j = 0, from the previous chunk)
        cont = np.zeros(m, bool)
        cont[1:] = is_bs[1:] & is_bs[:-1] & (np.diff(pos) == 1)
        carried = self.backslashes if pos[0] == 0 and is_bs[0] else 0
        run_start = np.maximum.accumulate(np.where(cont, -1, j))
        run_len = np.where(is_bs, j - run_start + 1, 0) + np.where(run_start == 0, carried, 0) * is_bs
        # backslashes right before element j: the run ending at element j - 1 if it touches position pos[j] - 1
        before = np.zeros(m, np.int64)
        before[1:] = np.where(is_bs[:-1] & (np.diff(pos) == 1), run_len[:-1], 0)
        if pos[0] == 0:
            before[0] = self.backslashes
        quote = (kind == 1) & (before % 2 == 0)
        quotes = np.cumsum(quote)
        outside = ((quotes + self.in_string) % 2) == 0  # a quote itself counts with the string it opens
        opens = (kind == 3) & outside
        closes = (kind == 4) & outside
        depth = self.depth + np.cumsum(opens.astype(np.int64) - closes)
        sep = (opens & (depth == 1)) | (closes & (depth == 0)) | ((kind == 5) & outside & (depth == 1))
        self.in_string = bool((int(quotes[-1]) + self.in_string) % 2)
        self.depth = int(depth[-1])
        self.backslashes = int(run_len[-1]) if is_bs[-1] and pos[-1] == n - 1 else 0
        if self.depth < 0:
            raise ValueError("unbalanced brackets")
        return base + pos[sep].astype(np.int64)


def _blank(f, start: int, end: int) -> bool:
    if end - start > 64:
        return False
    f.seek(start)
    return not f.read(end - start).strip()


def scan(path: str, kind: str | None = None, chunk_bytes: int = CHUNK_BYTES) -> np.ndarray:
    """(offset, length) int64 [n, 2] of every record of `path` ("array": top-level elements; "lines": non-blank
    lines). Raises ValueError for a malformed array (unbalanced, no closing bracket)."""
    kind = kind or detect_kind(path)
    size = os.path.getsize(path)
    start_time, last_log = time.time(), time.time()
    found: list[np.ndarray] = []
    scanner = _ArrayScanner()
    with open(path, "rb") as f:
        base = 0
        while True:
            raw = f.read(chunk_bytes)
            if not raw:
                break
            chunk = np.frombuffer(raw, np.uint8)
            if kind == "array":
                found.append(scanner.separators(chunk, base))
            else:
                found.append(base + np.flatnonzero(chunk == _NEWLINE).astype(np.int64))
            base += len(raw)
            if time.time() - last_log > 10:
                rate = base / (time.time() - start_time)
                logging.info("json index: %s %.1f / %.1f GB (%.0f MB/s, ETA %.0f s)", path, base / 1e9, size / 1e9,
                             rate / 1e6, (size - base) / rate)
                last_log = time.time()
        seps = np.concatenate(found) if found else np.zeros(0, np.int64)
        if kind == "array":
            if scanner.depth != 0 or scanner.in_string or len(seps) < 2:
                raise ValueError("not a complete JSON array (unbalanced brackets or unterminated string)")
            starts, ends = seps[:-1] + 1, seps[1:]
        else:
            starts = np.concatenate([[0], seps + 1])
            ends = np.concatenate([seps, [size]])
        lengths = ends - starts
        keep = lengths > 0
        # drop whitespace-only spans (blank lines, an empty array "[ ]", a trailing newline)
        short = np.flatnonzero(keep & (lengths <= 64))
        for i in short:
            if _blank(f, int(starts[i]), int(ends[i])):
                keep[i] = False
    return np.stack([starts[keep], lengths[keep]], axis=1).astype(np.int64)


def _fingerprint(path: str) -> dict:
    st = os.stat(path)
    return {"name": os.path.basename(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _candidates(path: str, index_dir: str | None) -> list[str]:
    if index_dir:
        return [os.path.abspath(os.path.expanduser(index_dir))]
    digest = hashlib.sha1(path.encode()).hexdigest()[:16]
    return [os.path.dirname(path), os.path.join(os.path.expanduser("~/.cache/oq2vl_jax/json_index"), digest)]


def _index_paths(directory: str, path: str) -> tuple[str, str]:
    stem = os.path.join(directory, os.path.basename(path) + INDEX_SUFFIX)
    return stem + ".npy", stem + ".json"


def _current(directory: str, path: str, fingerprint: dict) -> dict | None:
    npy, meta_path = _index_paths(directory, path)
    try:
        with open(meta_path) as f:
            meta = json.load(f)
    except (OSError, ValueError):
        return None
    if meta.get("version") != INDEX_VERSION or meta.get("file") != fingerprint or not os.path.exists(npy):
        return None
    return meta


def build_index(path: str, index_dir: str | None = None, *, force: bool = False,
                chunk_bytes: int = CHUNK_BYTES) -> tuple[str, dict]:
    """(index .npy path, meta) for `path`, built once and rebuilt when stale. Raises UserError."""
    path = os.path.abspath(os.path.expanduser(path))
    if not os.path.isfile(path):
        raise UserError(f"{path!r} is not a file")
    fingerprint = _fingerprint(path)
    candidates = _candidates(path, index_dir)
    if not force:
        for directory in candidates:
            meta = _current(directory, path, fingerprint)
            if meta is not None:
                return _index_paths(directory, path)[0], meta
    start = time.time()
    kind = detect_kind(path)
    try:
        entries = scan(path, kind, chunk_bytes)
    except (OSError, ValueError) as e:
        raise UserError(f"{path!r}: cannot index it as JSON {kind} ({e})") from e
    meta = {"version": INDEX_VERSION, "file": fingerprint, "kind": kind, "num_records": int(len(entries))}
    errors = []
    for directory in candidates:
        npy, meta_path = _index_paths(directory, path)
        try:
            os.makedirs(directory, exist_ok=True)
            tmp = f"{npy}.{os.getpid()}.tmp"
            with open(tmp, "wb") as f:
                np.save(f, entries, allow_pickle=False)
            with open(tmp + ".json", "w") as f:
                json.dump(meta, f)
            os.replace(tmp, npy)  # npy first: the json fingerprint is trusted only once its npy is in place
            os.replace(tmp + ".json", meta_path)
            logging.info("json index: %d %s records of %s indexed in %.1f s -> %s", len(entries), kind, path,
                         time.time() - start, npy)
            return npy, meta
        except OSError as e:
            errors.append(f"{directory}: {e}")
    raise UserError(f"cannot write the JSON index of {path}: {'; '.join(errors)}; pass index_dir")


class JsonRecords:
    """Random access to the records of a JSON array / JSON-lines file through its index (picklable, lazy)."""

    def __init__(self, path: str, index_dir: str | None = None):
        self.path = os.path.abspath(os.path.expanduser(path))
        self.index_path, meta = build_index(self.path, index_dir)
        self.kind, self.num_records = meta["kind"], meta["num_records"]
        self._entries = None

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_entries"] = None  # memory-mapped again in each worker
        return state

    def __len__(self) -> int:
        return self.num_records

    @property
    def entries(self) -> np.ndarray:
        if self._entries is None:
            self._entries = map_npy(self.index_path, np.int64)  # [offset, length] rows; thread-safe (npy_map.py)
        return self._entries

    def raw(self, index: int) -> bytes:
        offset, length = (int(v) for v in self.entries[int(index)])
        fd = os.open(self.path, os.O_RDONLY)
        try:
            return os.pread(fd, length, offset)
        finally:
            os.close(fd)

    def __getitem__(self, index: int):
        """The parsed record; raises OSError / ValueError (e.g. the file changed after indexing)."""
        return json.loads(self.raw(index))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m oq2vl_jax.data.sources.json_index",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("files", nargs="+")
    parser.add_argument("--index-dir", default=None)
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args(argv)
    logging.set_verbosity(logging.INFO)
    try:
        for path in args.files:
            npy, meta = build_index(path, args.index_dir, force=args.force)
            print(f"{path}: {meta['num_records']} {meta['kind']} records, index {npy}")
    except UserError as e:
        return report_user_error(e)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
