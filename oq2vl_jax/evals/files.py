"""Reading the benchmark files as their authors or the hub publish them (layouts: docs/evaluation.md).

Every reader names the missing or unreadable file in one `UserError` line. Parquet goes through pyarrow (image
columns are structs `{bytes, path}` or raw bytes), TSV through the csv module (VLMEvalKit's base64 image column),
JSON / JSONL through the json module.
"""

from __future__ import annotations

import base64
import csv
import json
import os
import sys
from typing import Any, Iterator

from oq2vl_jax.errors import UserError

LAYOUT_DOC = "docs/evaluation.md"


def require(path: str, task: str) -> str:
    """Returns `path` if it exists, else raises the one-line error naming it."""
    if not os.path.exists(path):
        raise UserError(f"{task}: missing {path} (expected layout: {LAYOUT_DOC}, section '{task}')")
    return path


def read_json(path: str, task: str) -> Any:
    require(path, task)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise UserError(f"{task}: cannot read {path} as JSON ({type(e).__name__}: {e})") from e


def read_jsonl(path: str, task: str) -> list[dict]:
    """JSON Lines (POPE's question files, LLaVA's TextVQA question file)."""
    require(path, task)
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except ValueError as e:
                    raise UserError(f"{task}: {path} line {n} is not JSON ({e})") from e
    return rows


def read_parquet(path: str, task: str) -> list[dict]:
    """All rows of a parquet file as dicts (nested structs and lists become dicts and lists)."""
    require(path, task)
    import pyarrow.parquet as pq  # lazy: only the parquet tasks need it

    try:
        return pq.read_table(path).to_pylist()
    except Exception as e:  # pyarrow raises several types for a damaged file
        raise UserError(f"{task}: cannot read {path} as parquet ({type(e).__name__}: {e})") from e


def read_tsv(path: str, task: str) -> list[dict]:
    """A VLMEvalKit TSV (tab separated, header row, base64 `image` column)."""
    require(path, task)
    csv.field_size_limit(sys.maxsize)  # base64 images are long fields
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def image_bytes(value: Any, task: str, where: str) -> bytes:
    """Encoded image bytes from a parquet image cell ({bytes, path} struct or raw bytes) or a base64 string."""
    if isinstance(value, dict):
        value = value.get("bytes")
    if isinstance(value, (bytes, bytearray)) and value:
        return bytes(value)
    if isinstance(value, str) and value:
        try:
            return base64.b64decode(value, validate=False)
        except ValueError as e:
            raise UserError(f"{task}: {where}: image is not valid base64 ({e})") from e
    raise UserError(f"{task}: {where}: no image bytes")


def list_files(folder: str, task: str, suffix: str) -> Iterator[str]:
    """Sorted names in `folder` ending in `suffix` (sorted: item order must not depend on the file system)."""
    require(folder, task)
    return iter(sorted(n for n in os.listdir(folder) if n.endswith(suffix)))
