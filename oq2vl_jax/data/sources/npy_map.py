"""Memory-mapping the .npy index files of the sources (webdataset member index, JSON byte-offset index).

np.load parses the .npy header with ast.literal_eval, i.e. compile(). On CPython 3.11 compile() is not thread-safe
against other threads compiling at the same time (Grain read threads mapping an index together, or the main thread
importing modules from source): it fails with "SystemError: AST constructor recursion depth mismatch" (seen in the
CPU demo from a fresh clone). `map_npy` reads the header without the AST: the caller names the dtype it wrote,
the header is checked to carry exactly that dtype and C order, and only the shape is parsed.
"""

from __future__ import annotations

import re
import struct

import numpy as np

_SHAPE = re.compile(r"'shape':\s*\(([^)]*)\)")


def map_npy(path: str, dtype) -> np.ndarray:
    """A read-only memory map of a C-order .npy file of `dtype`; ValueError if the file holds anything else."""
    dtype = np.dtype(dtype)
    with open(path, "rb") as f:
        major, _ = np.lib.format.read_magic(f)
        size_format = "<H" if major == 1 else "<I"
        (header_len,) = struct.unpack(size_format, f.read(struct.calcsize(size_format)))
        header = f.read(header_len).decode("latin1" if major < 3 else "utf8")
        offset = f.tell()
    descr = repr(np.lib.format.dtype_to_descr(dtype))
    shape_match = _SHAPE.search(header)
    if f"'descr': {descr}" not in header or "'fortran_order': False" not in header or shape_match is None:
        raise ValueError(f"{path}: not a C-order .npy array of {dtype} (header {header.strip()!r})")
    shape = tuple(int(x) for x in shape_match.group(1).split(",") if x.strip())
    if not int(np.prod(shape)):
        return np.zeros(shape, dtype)  # an empty file region cannot be mapped
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape)
