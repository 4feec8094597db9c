"""Paths that may be local or in an object store (`gs://bucket/...`, `s3://bucket/...`), through fsspec.

Everything the project reads or writes at a user's path goes through these few calls, so a bucket works wherever a
directory does. A local path keeps POSIX semantics (absolute paths, O_EXCL, rename); a bucket path gets the object
store's own: an object appears whole when its single PUT completes (so a write is never half-visible and needs no
rename), an exclusive create is a conditional PUT (S3 `If-None-Match: *`, GCS `ifGenerationMatch=0`), and every
object has a version (S3 ETag, GCS generation) that pins what was read.

The bucket file systems are optional extras (`pip install "oq2vl_jax[s3]"` / `"[gcs]"`: s3fs / gcsfs). Endpoint and
credentials come only from the standard environment, read by the SDKs themselves: `AWS_ENDPOINT_URL`,
`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_DEFAULT_REGION` for s3://, Google's application-default credentials
for gs://.
"""

from __future__ import annotations

import os
import posixpath
from typing import Iterable

from oq2vl_jax.errors import UserError

SCHEMES = ("gs://", "s3://")
_EXTRA = {"s3": ("s3fs", "s3"), "gs": ("gcsfs", "gcs")}


def is_remote(path) -> bool:
    return isinstance(path, (str, os.PathLike)) and str(path).startswith(SCHEMES)


def resolve(path) -> str:
    """A bucket URI as given (no trailing slash); a local path made absolute (and `~` expanded)."""
    path = str(path)
    if is_remote(path):
        scheme, rest = path.split("://", 1)
        return f"{scheme}://{posixpath.normpath(rest).lstrip('/')}" if rest.strip("/") else f"{scheme}://"
    return os.path.abspath(os.path.expanduser(path))


def join(base, *parts: str) -> str:
    base = str(base)
    return posixpath.join(base, *parts) if is_remote(base) else os.path.join(base, *parts)


def dirname(path) -> str:
    return posixpath.dirname(str(path).rstrip("/")) if is_remote(path) else os.path.dirname(str(path))


def filesystem(path):
    """The fsspec file system for a bucket path; UserError naming the extra to install when it is missing."""
    import fsspec

    scheme = str(path).split("://", 1)[0]
    module, extra = _EXTRA[scheme]
    try:
        __import__(module)
    except ImportError:
        raise UserError(f"{path}: reading and writing {scheme}:// paths needs {module}; "
                        f"pip install \"oq2vl_jax[{extra}]\"") from None
    # no listing cache: the lock, metrics and demo marker are coordination between processes, and a listing made
    # before another process wrote must never answer a later question
    return fsspec.filesystem(scheme, use_listings_cache=False)


def _uri(path: str, listed: str) -> str:
    """fsspec lists bucket paths without the scheme; give them back with it."""
    return listed if is_remote(listed) else str(path).split("://", 1)[0] + "://" + listed.lstrip("/")


def exists(path) -> bool:
    if not is_remote(path):
        return os.path.exists(path)
    try:
        return filesystem(path).exists(str(path))
    except (OSError, ValueError):  # a missing bucket, no permission: not there for us
        return False


def isdir(path) -> bool:
    return filesystem(path).isdir(str(path)) if is_remote(path) else os.path.isdir(path)


def isfile(path) -> bool:
    return filesystem(path).isfile(str(path)) if is_remote(path) else os.path.isfile(path)


def listdir(path) -> list[str]:
    """Names (not paths) directly under a directory or bucket prefix; [] when there is nothing."""
    if not is_remote(path):
        return os.listdir(path) if os.path.isdir(path) else []
    fs = filesystem(path)
    try:
        return sorted(posixpath.basename(p.rstrip("/")) for p in fs.ls(str(path), detail=False, refresh=True))
    except FileNotFoundError:
        return []


def glob(pattern: str) -> list[str]:
    """Files matching a glob (`**` recursive); bucket results are full URIs."""
    if not is_remote(pattern):
        import glob as glob_lib
        return [p for p in glob_lib.glob(pattern, recursive=True) if os.path.isfile(p)]
    fs = filesystem(pattern)
    return sorted(_uri(pattern, p) for p, info in fs.glob(pattern, detail=True).items() if info["type"] == "file")


def find(directory: str, suffix: str = "") -> list[str]:
    """Every file below a directory (recursive) whose name ends with `suffix`; bucket results are full URIs."""
    if not is_remote(directory):  # glob's rules: hidden files and directories are not listed
        import glob as glob_lib
        return [p for p in glob_lib.glob(os.path.join(directory, "**", "*" + suffix), recursive=True)
                if os.path.isfile(p)]
    fs = filesystem(directory)
    return sorted(_uri(directory, p) for p in fs.find(str(directory)) if p.endswith(suffix))


def stat(path) -> tuple[int, str]:
    """(size, version) of a file: the version names these exact bytes (S3 ETag, GCS generation, local mtime_ns)."""
    if not is_remote(path):
        st = os.stat(path)
        return st.st_size, str(st.st_mtime_ns)
    info = filesystem(path).info(str(path), refresh=True)
    if info.get("type") != "file":
        raise FileNotFoundError(f"{path} is not a file")
    version = info.get("generation") or info.get("ETag") or info.get("etag") or info.get("LastModified")
    return int(info["size"]), str(version).strip('"')


def read_bytes(path) -> bytes:
    if not is_remote(path):
        with open(path, "rb") as f:
            return f.read()
    return filesystem(path).cat_file(str(path))


def read_text(path) -> str:
    return read_bytes(path).decode("utf-8")


def read_range(path: str, start: int, length: int, version: str | None = None) -> bytes:
    """`length` bytes at `start`; with `version` (from `stat`), only from exactly that object: a replaced object
    raises VersionChanged instead of returning other bytes (S3 If-Match, GCS generation)."""
    if not is_remote(path):
        with open(path, "rb") as f:
            return os.pread(f.fileno(), length, start)
    fs = filesystem(path)
    if length <= 0:
        return b""
    if path.startswith("s3://") and version:
        return _s3_range(fs, path, start, length, version)
    if path.startswith("gs://") and version:
        try:  # gcsfs: that generation of the object (gone once replaced, unless the bucket keeps old versions)
            return fs.cat_file(str(path), start=start, end=start + length, generation=version)
        except FileNotFoundError:
            if exists(path):
                raise VersionChanged(f"{path} changed (generation {version} is gone)") from None
            raise
    return fs.cat_file(str(path), start=start, end=start + length)


class VersionChanged(OSError):
    """The object was replaced after its version was taken."""


def _s3_range(fs, path: str, start: int, length: int, etag: str) -> bytes:
    from fsspec.asyn import sync

    bucket, key = path[len("s3://"):].split("/", 1)

    async def get():
        try:
            resp = await fs._call_s3("get_object", Bucket=bucket, Key=key, Range=f"bytes={start}-{start + length - 1}",
                                     IfMatch=f'"{etag}"')
        except OSError as e:
            if "pre-condition" in str(e).lower() or "precondition" in str(e).lower():
                raise VersionChanged(f"{path} changed (ETag is no longer {etag})") from None
            raise
        try:
            return await resp["Body"].read()
        finally:
            resp["Body"].close()

    return sync(fs.loop, get)


def makedirs(path) -> None:
    """A local directory is created; a bucket prefix needs nothing (objects make their prefixes)."""
    if not is_remote(path):
        os.makedirs(path, exist_ok=True)


def write_bytes(path: str, data: bytes) -> None:
    """Replaces `path` with `data`, never leaving it half-written: locally a temporary file renamed over it; in a
    bucket one PUT (the object is published only once complete)."""
    if is_remote(path):
        filesystem(path).pipe_file(str(path), data)
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_text(path: str, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def create_exclusive(path: str, data: bytes) -> bool:
    """Creates `path` holding `data` only if nothing is there: True if this call created it, False if it existed.
    Locally O_EXCL; in a bucket a conditional PUT, so of two racing creators exactly one wins."""
    if not is_remote(path):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return True
    try:  # S3 If-None-Match: *, GCS ifGenerationMatch=0 (s3fs / gcsfs "create" mode)
        filesystem(path).pipe_file(str(path), data, mode="create")
    except FileExistsError:
        return False
    return True


def remove(path: str) -> None:
    """Removes a file if it is there."""
    if is_remote(path):
        try:
            filesystem(path).rm_file(str(path))
        except FileNotFoundError:
            pass
        return
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def upload_files(local_dir: str, remote_dir: str, names: Iterable[str]) -> None:
    """Copies files `names` (relative to local_dir) to the bucket prefix remote_dir, one whole object each."""
    fs = filesystem(remote_dir)
    for name in names:
        fs.put_file(os.path.join(local_dir, name), join(remote_dir, name.replace(os.sep, "/")))


def move_tree(src: str, dst: str) -> None:
    """Moves a directory: a rename locally; in a bucket a copy of every object, then their removal."""
    if not is_remote(src):
        os.replace(src, dst)
        return
    fs = filesystem(src)
    fs.copy(str(src), str(dst), recursive=True)
    fs.rm(str(src), recursive=True)


def remove_tree(path: str) -> None:
    """Removes a file or a directory (a bucket prefix: every object under it), if there."""
    if not is_remote(path):
        import shutil
        if os.path.isdir(path):
            shutil.rmtree(path)
        else:
            remove(path)
        return
    fs = filesystem(path)
    try:
        fs.rm(str(path), recursive=True)
    except FileNotFoundError:
        pass
