"""A local copy of a small bucket directory or file (a tokenizer, a config, weight files a reader needs on disk).

Readers that only take local files (Hugging Face tokenizers, safetensors memory maps, pyarrow's local reader) get
`local_dir(path)` / `local_file(path)`: a local path is returned as it is; a gs:// or s3:// one is downloaded once into
~/.cache/oq2vl_jax/buckets/<key> (or $OQ2VL_CACHE/buckets), where <key> hashes the URI and every object's name, size
and version (ETag / generation), so a changed object is downloaded again and an unchanged one never is. The copy is
assembled in a temporary directory and renamed into place, so a reader never sees half of it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile

from oq2vl_jax.errors import UserError
from oq2vl_jax.storage import paths


def cache_dir(kind: str) -> str:
    """The project's local cache for `kind` (buckets, wds_index): $OQ2VL_CACHE/<kind>, by default
    ~/.cache/oq2vl_jax/<kind>."""
    return os.path.join(os.environ.get("OQ2VL_CACHE") or os.path.expanduser("~/.cache/oq2vl_jax"), kind)


def cache_root() -> str:
    return cache_dir("buckets")


def _key(uri: str, listing: list) -> str:
    return hashlib.sha1(json.dumps([uri, listing]).encode()).hexdigest()[:20]


def local_dir(path: str) -> str:
    """A local directory holding what `path` holds (module docstring); UserError when a bucket path holds nothing."""
    if not paths.is_remote(path):
        return path
    uri = paths.resolve(path)
    files = paths.find(uri)
    if not files:
        raise UserError(f"{uri} holds no files")
    listing = [[f[len(uri) + 1:], *paths.stat(f)] for f in files]
    target = os.path.join(cache_root(), _key(uri, listing), os.path.basename(uri))
    if os.path.isdir(target):
        return target
    parent = os.path.dirname(target)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=".partial-")
    try:
        fs = paths.filesystem(uri)
        for name, _, _ in listing:
            local = os.path.join(tmp, *name.split("/"))
            os.makedirs(os.path.dirname(local), exist_ok=True)
            fs.get_file(f"{uri}/{name}", local)
        try:
            os.rename(tmp, target)
        except OSError:  # another process put the same copy there first
            if not os.path.isdir(target):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def local_file(path: str) -> str:
    """A local file with the bytes of `path` (module docstring)."""
    if not paths.is_remote(path):
        return path
    uri = paths.resolve(path)
    try:
        size, version = paths.stat(uri)
    except FileNotFoundError:
        raise UserError(f"{uri} does not exist") from None
    target = os.path.join(cache_root(), _key(uri, [size, version]), os.path.basename(uri))
    if os.path.isfile(target):
        return target
    os.makedirs(os.path.dirname(target), exist_ok=True)
    tmp = f"{target}.{os.getpid()}.partial"
    try:
        paths.filesystem(uri).get_file(uri, tmp)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return target


def upload_dir(local: str, remote: str) -> None:
    """Copies a local directory's files under a bucket prefix (each object whole); used for small directories such
    as a checkpoint's tokenizer."""
    names = [os.path.relpath(os.path.join(root, n), local) for root, _, ns in os.walk(local) for n in ns]
    paths.upload_files(local, remote, names)
