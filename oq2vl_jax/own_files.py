"""Output files and directories a command resumes or replaces: only when they carry our mark, never the user's.

Every command that appends to, rewrites or deletes something that already exists at one of its output paths first
checks that the thing is one of ours: a JSONL file whose every line is a record we write (the trainer's
metrics.jsonl, `generate`'s answers, `evaluate`'s predictions), a directory holding our marker file, a checkpoint
directory holding only entries we create. Anything else is refused with one line naming the path, before anything is
loaded or written.

A JSONL writer of ours writes whole lines and flushes them, so an interruption can leave only a last line without its
newline; that cut line (it must begin like our records) is the one thing a resume may drop.
"""

from __future__ import annotations

import json
import os
from typing import Callable

from oq2vl_jax.errors import UserError


def read_own_jsonl(path: str, *, is_record: Callable[[dict], bool], prefix: str, what: str,
                   hint: str) -> tuple[list[dict], int]:
    """(records, byte length of the complete lines) of our JSONL file `path`; ([], 0) when it does not exist.

    `is_record(record)` says whether a parsed line is one of ours; `prefix` is how every line we write begins (a cut
    last line must match it, as far as it goes). A file with any other line is not ours: UserError naming the path,
    the line and `what` it should be, ending with `hint` (what to do instead)."""
    if not os.path.exists(path):
        return [], 0
    if not os.path.isfile(path):
        raise UserError(f"{path} is not a file; {hint}")
    with open(path, "rb") as f:
        data = f.read()
    records, good_end = [], 0
    lines = data.split(b"\n")
    for number, line in enumerate(lines, 1):
        last = number == len(lines)  # no newline after it (empty when the file ends with one)
        text = line.decode("utf-8", errors="replace").strip()
        if last:
            if text and not (text.startswith(prefix) or prefix.startswith(text)):
                raise UserError(f"{path} is not {what} (line {number} is not one of its records); {hint}")
            break  # a record cut by an interruption, or nothing
        if text:
            try:
                record = json.loads(text)
            except ValueError:
                record = None
            if not isinstance(record, dict) or not is_record(record):
                raise UserError(f"{path} is not {what} (line {number} is not one of its records); {hint}")
            records.append(record)
        good_end += len(line) + 1
    return records, good_end


def cut_partial_tail(path: str, good_end: int) -> bool:
    """Drops what follows the last complete line (a record cut by an interruption); True if something was cut."""
    if os.path.exists(path) and os.path.getsize(path) > good_end:
        with open(path, "r+b") as f:
            f.truncate(good_end)
        return True
    return False


def check_own_entries(directory: str, is_ours: Callable[[str], bool], *, what: str, hint: str) -> None:
    """UserError naming the first entry of `directory` that `is_ours` does not accept (nothing when the directory
    does not exist)."""
    if not os.path.isdir(directory):
        return
    foreign = sorted(name for name in os.listdir(directory) if not is_ours(name))
    if foreign:
        more = f" (and {len(foreign) - 1} more)" if len(foreign) > 1 else ""
        raise UserError(f"{os.path.join(directory, foreign[0])}{more} was not written by {what}; {hint}")


def check_new_directory(path: str, flag: str) -> None:
    """An output directory a command creates and fills: it must not exist, or be an empty directory (checked before
    any work, so a mistake costs nothing and nothing of the user's is mixed with or replaced by our files)."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise UserError(f"{flag} '{path}' is a file; give a new directory")
    if os.path.isdir(path) and os.listdir(path):
        raise UserError(f"{flag} '{path}' exists and is not empty; choose a new directory")
