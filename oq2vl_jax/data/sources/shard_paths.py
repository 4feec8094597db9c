"""Which tar shards a webdataset source reads: a directory, one .tar, a glob, a brace range, or a list of these.

    /data/shards                          every .tar below the directory (recursive)
    /data/shards/00017.tar                one shard
    /data/shards/train-*.tar              a glob (`*`, `?`, `[...]`; `**` recursive)
    /data/shards/{00000..01023}.tar       a brace range (zero padding kept), as img2dataset / webdataset write them
    /data/{cc3m,cc12m}/*.tar              brace alternatives, combinable with globs
    ("/data/a/*.tar", "/data/b/{0..9}.tar")  a list (tuple on the command line) of any of the above
    s3://bucket/cc3m/{00000..00331}.tar   any of the above in a bucket (gs:// or s3://, oq2vl_jax/storage/paths.py)

`expand_shards(spec)` returns (root, sorted shard paths relative to root), root being the deepest directory holding
them all. A brace range or a plain path that names a missing file is an error (UserError naming how many and the
first few), never a silent gap; a glob takes whatever matches and is an error only when nothing does.
"""

from __future__ import annotations

import itertools
import os
import posixpath
import re
from typing import Sequence

from oq2vl_jax.errors import UserError
from oq2vl_jax.storage import paths

_BRACE = re.compile(r"\{([^{}]*)\}")
_RANGE = re.compile(r"^(-?\d+)\.\.(-?\d+)$")
_GLOB_CHARS = ("*", "?", "[")


def expand_braces(pattern: str) -> list[str]:
    """`a{00..02}b{x,y}` -> [a00bx, a00by, a01bx, ...] (cartesian product, left to right)."""
    pieces, choices, pos = [], [], 0
    for m in _BRACE.finditer(pattern):
        body = m.group(1)
        rng = _RANGE.match(body)
        if rng:
            lo, hi = int(rng.group(1)), int(rng.group(2))
            if hi < lo:
                raise UserError(f"shard pattern {pattern!r}: empty range {{{body}}}")
            width = len(rng.group(1)) if rng.group(1).startswith("0") else 0
            options = [f"{i:0{width}d}" for i in range(lo, hi + 1)]
        elif "," in body:
            options = body.split(",")
        else:
            continue  # a literal {word}: not a brace expression
        pieces.append(pattern[pos:m.start()])
        choices.append(options)
        pos = m.end()
    if not choices:
        return [pattern]
    tail = pattern[pos:]
    out = []
    for combo in itertools.product(*choices):
        out.append("".join(p + c for p, c in zip(pieces, combo)) + tail)
    return out


def _one(path: str) -> list[str]:
    path = paths.resolve(path)
    expanded = expand_braces(path)
    found, missing = [], []
    for item in expanded:
        if any(c in item for c in _GLOB_CHARS):
            matches = paths.glob(item)
            if not matches:
                missing.append(item)
            found += matches
        elif paths.isdir(item):
            tars = paths.find(item, ".tar")
            if not tars:
                raise UserError(f"webdataset path {item!r} contains no .tar shards")
            found += tars
        elif paths.isfile(item):
            found.append(item)
        else:
            missing.append(item)
    if missing:
        what = ("matches no file" if len(expanded) == 1 else
                f"names {len(missing)} of {len(expanded)} shards or patterns that match no file")
        raise UserError(f"webdataset path {path!r} {what} (first: {', '.join(missing[:3])}); a glob such as "
                        "'dir/*.tar' takes whichever shards exist")
    if not found:
        raise UserError(f"webdataset path {path!r} matches no file")
    return found


def expand_shards(spec: str | Sequence[str]) -> tuple[str, list[str]]:
    """(root dir, sorted unique shard paths relative to it) for a path / pattern / list of them (module docstring)."""
    items = [spec] if isinstance(spec, (str, os.PathLike)) else list(spec or ())
    if not items or any(not isinstance(p, (str, os.PathLike)) or not str(p) for p in items):
        raise UserError(f"webdataset path {spec!r}: expected a path, a pattern or a list of them")
    shards = sorted({paths.resolve(p) for item in items for p in _one(str(item))})
    remote = {p.split("://", 1)[0] for p in shards if paths.is_remote(p)}
    if not remote:
        root = os.path.commonpath([os.path.dirname(p) for p in shards])
        return root, [os.path.relpath(p, root) for p in shards]
    if len(remote) > 1 or len(remote) != len({paths.is_remote(p) for p in shards}):
        raise UserError(f"webdataset path {spec!r} mixes local shards and buckets of different kinds; use one source "
                        "per storage")
    scheme = remote.pop() + "://"
    keys = [p[len(scheme):] for p in shards]
    root = posixpath.commonpath([posixpath.dirname(k) for k in keys])
    if not root:
        raise UserError(f"webdataset path {spec!r} spans several buckets; use one source per bucket")
    return scheme + root, [posixpath.relpath(k, root) for k in keys]


def source_path_exists(spec) -> bool:
    """Cheap check for config validation: does the path (or pattern, or every list entry) name at least one file?"""
    try:
        expand_shards(spec)
        return True
    except UserError:
        return False
