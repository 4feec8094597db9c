"""A local staging directory whose files are copied, each one whole, to a bucket prefix.

Files that a writer appends to (the trainer's metrics.jsonl, TensorBoard event files) cannot be appended to in an
object store. A `Mirror` lets that writer keep appending to local files exactly as on a disk; `sync()` uploads every
file that changed since the last sync as one whole object (a single PUT: readers of the bucket see the previous
complete version or the new complete version, never a part). The writer decides when to sync (at log steps, every
few seconds, at close); what it appended after the last sync is lost if the process is killed, as is an unflushed
buffer on a disk.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile

from oq2vl_jax.storage import paths


class Mirror:
    def __init__(self, remote_dir: str, names_to_fetch: tuple[str, ...] | None = ()):
        """A fresh staging directory for `remote_dir`; `names_to_fetch` are downloaded first (to append to them;
        None: every file under remote_dir, to resume a run whose outputs are there)."""
        self.remote_dir = remote_dir
        self.local_dir = tempfile.mkdtemp(prefix="oq2vl_bucket_staging_")
        self._synced: dict[str, tuple[int, int]] = {}
        if names_to_fetch is None:
            names_to_fetch = tuple(p[len(remote_dir) + 1:] for p in paths.find(remote_dir))
        for name in names_to_fetch:
            remote = paths.join(remote_dir, name)
            if paths.exists(remote):
                local = os.path.join(self.local_dir, name)
                os.makedirs(os.path.dirname(local), exist_ok=True)
                with open(local, "wb") as f:
                    f.write(paths.read_bytes(remote))
                self._synced[name] = self._stamp(local)

    @staticmethod
    def _stamp(path: str) -> tuple[int, int]:
        st = os.stat(path)
        return st.st_size, st.st_mtime_ns

    def sync(self) -> int:
        """Uploads the files changed since the last sync; returns how many."""
        changed = []
        for root, _, names in os.walk(self.local_dir):
            for name in names:
                local = os.path.join(root, name)
                rel = os.path.relpath(local, self.local_dir)
                if self._synced.get(rel) != self._stamp(local):
                    changed.append((rel, local))
        for rel, local in changed:
            stamp = self._stamp(local)
            with open(local, "rb") as f:
                paths.write_bytes(paths.join(self.remote_dir, rel.replace(os.sep, "/")), f.read())
            self._synced[rel] = stamp
        return len(changed)

    def close(self) -> None:
        """A last sync, then the staging directory is removed."""
        try:
            self.sync()
        finally:
            shutil.rmtree(self.local_dir, ignore_errors=True)


@contextlib.contextmanager
def staged_dir(path: str):
    """`with staged_dir(OUT) as out:` a local output directory for OUT: OUT itself when it is local; for a bucket
    prefix, a staging directory holding what OUT already has (so a rerun resumes), copied back into the bucket when
    the block ends, however it ends."""
    if not paths.is_remote(path):
        yield path
        return
    mirror = Mirror(paths.resolve(path), names_to_fetch=None)
    try:
        yield mirror.local_dir
    finally:
        mirror.close()
