"""The caption record every caption-like source returns, and its counters (layout: data/sources/__init__.py)."""

from __future__ import annotations

from typing import Any

import numpy as np


def new_record(name: str, index: int, key: str) -> dict:
    """An empty caption record (the layout in data/sources/__init__.py)."""
    return {"source": name, "index": index, "key": key, "documents": [], "skips": {}, "repairs": {}}


def record_text(value: Any, record: dict) -> str:
    """A caption as str; bytes that are not UTF-8 are decoded with replacement and counted as a repair."""
    if isinstance(value, (bytes, np.bytes_)):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            record["repairs"]["repaired_text_utf8"] = record["repairs"].get("repaired_text_utf8", 0) + 1
            return bytes(value).decode("utf-8", errors="replace")
    return str(value)


def count_skip(record: dict, reason: str) -> None:
    """Counts one skipped document of `record` under `reason` (a data/stats.py skip reason)."""
    record["skips"][reason] = record["skips"].get(reason, 0) + 1
