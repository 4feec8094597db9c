"""Tensor files, read lazily: safetensors (single or sharded with an index), torch `.pt`/`.bin` (only through
`torch.load(weights_only=True)`: nothing arbitrary is unpickled) and numpy `.npz`. A TensorSource lists names and
reads one tensor per `get`, so a conversion never holds a whole checkpoint twice. Also the safetensors writer.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from typing import Callable, Iterable

import ml_dtypes
import numpy as np

from oq2vl_jax.errors import UserError

Getter = Callable[[str], np.ndarray]


_ST_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
              "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}
_ST_NAMES = {np.dtype(v): k for k, v in _ST_DTYPES.items()}


def is_float(dtype) -> bool:
    return np.issubdtype(dtype, np.floating) or np.dtype(dtype) == np.dtype(ml_dtypes.bfloat16)


class TensorSource:
    """Named tensors of one checkpoint (one or several files). `get` reads a single tensor from disk."""

    def __init__(self, readers: dict[str, Callable[[], np.ndarray]], where: str):
        self._readers, self.where = readers, where

    @property
    def names(self) -> list[str]:
        return list(self._readers)

    def __contains__(self, name: str) -> bool:
        return name in self._readers

    def get(self, name: str) -> np.ndarray:
        if name not in self._readers:
            raise UserError(f"tensor '{name}' is missing from {self.where}")
        return self._readers[name]()

    def getter(self, prefix: str = "", dtype=None) -> Getter:
        """`get` under a key prefix, optionally casting (one tensor at a time) to `dtype`."""
        if dtype is None:
            return lambda name: self.get(prefix + name)
        return lambda name: np.asarray(self.get(prefix + name)).astype(dtype, copy=False)

    def under(self, prefix: str) -> "TensorSource":
        """The tensors whose names start with `prefix`, renamed without it (e.g. a tower inside a bigger model)."""
        return TensorSource({n[len(prefix):]: r for n, r in self._readers.items() if n.startswith(prefix)}, self.where)

    def find_prefix(self, suffix: str, exclude: tuple[str, ...] = ()) -> str | None:
        """The key prefix under which `suffix` occurs (None if nowhere); ambiguous layouts are a UserError."""
        prefixes = sorted({n[: -len(suffix)] for n in self._readers
                           if n.endswith(suffix) and (n == suffix or n[-len(suffix) - 1] in "./")
                           and not any(e in n for e in exclude)})
        if len(prefixes) > 1:
            raise UserError(f"{self.where} holds several towers ({', '.join(p or '<root>' for p in prefixes)} + "
                            f"'{suffix}'); pass a file with one")
        return prefixes[0] if prefixes else None


def read_json(path: str, what: str = "file") -> dict:
    if not os.path.isfile(path):
        raise UserError(f"{what} '{path}' does not exist")
    try:
        with open(path) as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{what} '{path}' is not valid JSON: {e}") from e


def safetensors_header(path: str) -> tuple[dict, int]:
    """(header, byte offset of the data block) of a .safetensors file."""
    try:
        with open(path, "rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(size))
    except (OSError, struct.error, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"'{path}' is not a readable safetensors file: {e}") from e
    header.pop("__metadata__", None)
    return header, 8 + size


def _safetensors_readers(path: str) -> dict[str, Callable[[], np.ndarray]]:
    header, start = safetensors_header(path)
    readers = {}
    for name, info in header.items():
        if info["dtype"] not in _ST_DTYPES:
            raise UserError(f"tensor '{name}' in '{path}' has unsupported dtype {info['dtype']}")
        dtype, shape = np.dtype(_ST_DTYPES[info["dtype"]]), tuple(info["shape"])
        begin, end = info["data_offsets"]

        def read(dtype=dtype, shape=shape, offset=start + begin, count=(end - begin) // dtype.itemsize):
            with open(path, "rb") as f:
                return np.fromfile(f, dtype=dtype, count=count, offset=offset).reshape(shape)

        readers[name] = read
    return readers


def open_safetensors(paths: list[str], where: str | None = None) -> TensorSource:
    readers: dict = {}
    for path in paths:
        readers.update(_safetensors_readers(path))
    return TensorSource(readers, where or ", ".join(f"'{p}'" for p in paths))


def _torch_to_numpy(t) -> np.ndarray:
    import torch

    t = t.detach().cpu()
    if t.dtype == torch.bfloat16:
        return t.contiguous().view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return t.numpy()


def load_torch_file(path: str) -> dict:
    """torch.load restricted to plain tensors and containers (never unpickles arbitrary objects)."""
    import torch

    if not os.path.isfile(path):
        raise UserError(f"file '{path}' does not exist")
    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:  # legacy (non-zip) files cannot be memory-mapped
            if "mmap" not in str(e):
                raise
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle.UnpicklingError for disallowed objects, RuntimeError for corrupt files
        raise UserError(f"cannot read '{path}' as a PyTorch state dict of plain tensors: {e}") from e


def open_torch(path: str) -> TensorSource:
    """A .pt / .bin / .pth file; nested dicts are flattened with '.' (so {'model': {'x': t}} reads as 'model.x')."""
    import torch

    readers: dict = {}

    def walk(obj, prefix):
        for key, value in obj.items():
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}.")
            elif isinstance(value, torch.Tensor):
                readers[f"{prefix}{key}"] = lambda value=value: _torch_to_numpy(value)

    obj = load_torch_file(path)
    if not isinstance(obj, dict):
        raise UserError(f"'{path}' does not hold a dict of tensors")
    walk(obj, "")
    return TensorSource(readers, f"'{path}'")


def open_npz(path: str) -> TensorSource:
    if not os.path.isfile(path):
        raise UserError(f"file '{path}' does not exist")
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read '{path}' as a .npz archive: {e}") from e
    return TensorSource({name: (lambda name=name: data[name]) for name in data.files}, f"'{path}'")


def open_tensor_file(path: str) -> TensorSource:
    if path.endswith(".safetensors"):
        if not os.path.isfile(path):
            raise UserError(f"file '{path}' does not exist")
        return open_safetensors([path])
    if path.endswith(".npz"):
        return open_npz(path)
    if path.endswith((".bin", ".pt", ".pth")):
        return open_torch(path)
    raise UserError(f"'{path}': unknown weight file type (expected .safetensors, .bin, .pt, .pth or .npz)")


def open_hf_weights(directory: str) -> TensorSource:
    """The weights of an HF model directory: model.safetensors, a sharded safetensors index, or pytorch_model.bin."""
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index_path = os.path.join(directory, index_name)
        if os.path.isfile(index_path):
            files = sorted(set(read_json(index_path, "weight index").get("weight_map", {}).values()))
            paths = [os.path.join(directory, f) for f in files]
            for p in paths:
                if not os.path.isfile(p):
                    raise UserError(f"'{index_path}' names shard '{p}', which does not exist")
            if index_name.startswith("model.safetensors"):
                return open_safetensors(paths, f"'{directory}'")
            readers: dict = {}
            for p in paths:
                readers.update(open_torch(p)._readers)
            return TensorSource(readers, f"'{directory}'")
    for name in ("model.safetensors", "pytorch_model.bin"):
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            source = open_tensor_file(path)
            source.where = f"'{directory}'"
            return source
    raise UserError(f"'{directory}' has no model.safetensors, model.safetensors.index.json or pytorch_model.bin")


# ------------------------------------------------------------------------------------------------------------------
# Writing safetensors one tensor at a time (each shard's data goes to a temporary file first, because the header,
# which precedes the data, is only known once every tensor of the shard has been seen).

DEFAULT_SHARD_BYTES = 4 << 30


class _ShardWriter:
    def __init__(self, path: str):
        self.path, self.header, self.offset = path, {}, 0
        self.tmp = open(path + ".data.tmp", "wb")

    def add(self, name: str, array: np.ndarray) -> None:
        if name in self.header:
            raise ValueError(f"tensor '{name}' written twice")
        array = np.ascontiguousarray(array)
        if array.dtype not in _ST_NAMES:
            raise UserError(f"tensor '{name}' has dtype {array.dtype}, which safetensors cannot store")
        self.tmp.write(memoryview(array.reshape(-1).view(np.uint8)))
        self.header[name] = {"dtype": _ST_NAMES[array.dtype], "shape": list(array.shape),
                             "data_offsets": [self.offset, self.offset + array.nbytes]}
        self.offset += array.nbytes

    def close(self) -> None:
        self.tmp.close()
        header = json.dumps({"__metadata__": {"format": "pt"}, **self.header}, separators=(",", ":")).encode()
        header += b" " * (-len(header) % 8)
        with open(self.path, "wb") as out, open(self.tmp.name, "rb") as data:
            out.write(struct.pack("<Q", len(header)))
            out.write(header)
            shutil.copyfileobj(data, out, 64 << 20)
        os.remove(self.tmp.name)


def write_safetensors(directory: str, tensors: Iterable[tuple[str, np.ndarray]], *, dtype=None,
                      max_shard_bytes: int = DEFAULT_SHARD_BYTES, basename: str = "model") -> list[str]:
    """Writes `basename.safetensors`, or numbered shards plus `basename.safetensors.index.json` when the tensors
    exceed `max_shard_bytes`. Tensors are consumed one at a time (cast to `dtype` if given). Returns the files."""
    os.makedirs(directory, exist_ok=True)
    shards: list[_ShardWriter] = []
    weight_map, total = {}, 0
    for name, array in tensors:
        array = np.asarray(array)
        if dtype is not None and is_float(array.dtype):
            array = array.astype(dtype, copy=False)
        if not shards or (shards[-1].offset and shards[-1].offset + array.nbytes > max_shard_bytes):
            if shards:
                shards[-1].close()
            shards.append(_ShardWriter(os.path.join(directory, f"{basename}.shard{len(shards):05d}.tmp")))
        shards[-1].add(name, array)
        total += array.nbytes
        weight_map[name] = len(shards) - 1
    if shards:
        shards[-1].close()
    n = len(shards)
    names = ([f"{basename}.safetensors"] if n == 1 else
             [f"{basename}-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)])
    for shard, name in zip(shards, names):
        os.replace(shard.path, os.path.join(directory, name))
    if n > 1:
        index = {"metadata": {"total_size": total}, "weight_map": {k: names[v] for k, v in weight_map.items()}}
        with open(os.path.join(directory, f"{basename}.safetensors.index.json"), "w") as f:
            json.dump(index, f, indent=2)
    return names
