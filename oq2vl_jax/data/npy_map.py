"""Memory-mapping the .npy index files of the sources (webdataset member index, JSON byte-offset index).

np.load parses the .npy header with ast.literal_eval, which is not thread-safe on CPython 3.11: when Grain's read
threads map an index at the same moment it fails with "SystemError: AST constructor recursion depth mismatch".
Every lazy mapping therefore goes through `map_npy`, one at a time.
"""

from __future__ import annotations

import threading

import numpy as np

_MAP_LOCK = threading.Lock()


def map_npy(path: str) -> np.ndarray:
    """A read-only memory map of a .npy file (no pickles), safe to call from several threads at once."""
    with _MAP_LOCK:
        return np.load(path, mmap_mode="r", allow_pickle=False)
