"""Training metrics: one JSONL record per step in WORKDIR/metrics.jsonl, the same scalars as TensorBoard events in
WORKDIR/tensorboard, and a console progress line with rates and ETA every `log_every` steps. Only process 0 writes.

Every record has step (updates done, 1-based), loss, lr, grad_norm, skipped_nonfinite; the first step of a run adds
first_step_time (start-up and compilation included). Records at log steps add rates
over the window since the previous log step: tokens_per_s (real tokens, image positions included), images_per_s,
flops_per_s, mfu (training/flops.py), fill (real / capacity tokens), step_time, and the data pipeline's running totals
under "data/<reason>".

In a bucket workdir (gs://, s3://) both are written to a local staging directory and copied to the bucket, each file
as one whole object (storage/mirror.py), at every log step, at most every SYNC_SECONDS otherwise, and at the end.
"""

from __future__ import annotations

import datetime
import json
import os
import time
from typing import Mapping

from absl import logging

from oq2vl_jax.storage import paths as storage
from oq2vl_jax.storage.mirror import Mirror

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
SYNC_SECONDS = 30.0  # a bucket workdir's metrics are copied there at least this often (and at every log step)


def read_metrics(workdir: str) -> list[dict]:
    """The records of WORKDIR/metrics.jsonl. A line that does not parse (a crash mid-write leaves a partial last
    line) is skipped with a warning; `truncate_metrics` drops it from the file."""
    path = storage.join(workdir, METRICS_FILE)
    if not storage.exists(path):
        return []
    records, bad = [], 0
    for line in storage.read_bytes(path).decode("utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            bad += 1
            continue
        if isinstance(record, dict):
            records.append(record)
        else:
            bad += 1
    if bad:
        logging.warning("%s: skipped %d line(s) that are not JSON records (a run stopped mid-write)", path, bad)
    return records


def truncate_metrics(workdir: str, last_step: int) -> None:
    """Keeps the records up to `last_step` (the step the run starts from: 0 when no checkpoint exists) and drops the
    rest, and any partial line: those steps are run again, so each step appears once."""
    path = storage.join(workdir, METRICS_FILE)
    if not storage.exists(path):
        return
    records = [r for r in read_metrics(workdir) if r.get("step", 0) <= last_step]
    storage.write_text(path, "".join(json.dumps(r) + "\n" for r in records))  # whole, never half-written


class Window:
    """Sums over the steps since the last log line; gives rates."""

    def __init__(self):
        self.reset(time.perf_counter())

    def reset(self, now: float) -> None:
        self.start, self.steps = now, 0
        self.tokens = self.capacity = self.images = self.flops = 0.0

    def add(self, metrics: Mapping[str, float], flops: float) -> None:
        self.steps += 1
        self.tokens += metrics["real_tokens"]
        self.capacity += metrics["capacity_tokens"]
        self.images += metrics["num_images"]
        self.flops += flops

    def rates(self, now: float, num_devices: int, peak_per_device: float | None) -> dict[str, float]:
        seconds = max(now - self.start, 1e-9)
        out = {"step_time": seconds / max(self.steps, 1), "tokens_per_s": self.tokens / seconds,
               "images_per_s": self.images / seconds, "flops_per_s": self.flops / seconds,
               "fill": self.tokens / self.capacity if self.capacity else 0.0}
        if peak_per_device:
            out["mfu"] = self.flops / seconds / (num_devices * peak_per_device)
        return out


def progress_line(step: int, total: int, record: Mapping[str, float]) -> str:
    eta = datetime.timedelta(seconds=int(record.get("step_time", 0.0) * (total - step)))
    parts = [f"step {step}/{total}", f"loss {record['loss']:.4f}", f"lr {record['lr']:.3g}",
             f"gnorm {record['grad_norm']:.3g}"]
    if "tokens_per_s" in record:
        parts += [f"{record['tokens_per_s']:,.0f} tok/s", f"{record['images_per_s']:,.1f} img/s"]
        if "mfu" in record:
            parts.append(f"MFU {100 * record['mfu']:.1f}%")
        parts += [f"fill {100 * record['fill']:.1f}%", f"{record['step_time']:.3f} s/step"]
    skipped = record.get("data/skipped", 0)
    if skipped:
        parts.append(f"data skipped {skipped}")
    if record.get("nonfinite_total", 0):
        parts.append(f"non-finite steps {record['nonfinite_total']}")
    if "first_step_time" in record:
        parts.append(f"first step {record['first_step_time']:.1f} s (start-up and compilation)")
    else:
        parts.append(f"ETA {eta}")
    return " | ".join(parts)


class MetricsWriter:
    def __init__(self, workdir: str, *, enabled: bool, tensorboard: bool = True):
        self.enabled = enabled
        self._jsonl = self._tb = self._mirror = None
        if enabled:
            if storage.is_remote(workdir):  # appended to locally, copied whole into the bucket (module docstring)
                self._mirror = Mirror(workdir, names_to_fetch=(METRICS_FILE,))
                self._synced_at = time.monotonic()
                workdir = self._mirror.local_dir
            os.makedirs(workdir, exist_ok=True)
            self._jsonl = open(os.path.join(workdir, METRICS_FILE), "a")
            if tensorboard:
                from tensorboardX import SummaryWriter
                self._tb = SummaryWriter(os.path.join(workdir, TENSORBOARD_DIR))

    def write(self, record: Mapping[str, float | int]) -> None:
        if not self.enabled:
            return
        self._jsonl.write(json.dumps(dict(record)) + "\n")
        self._jsonl.flush()
        if self._tb is not None:
            step = int(record["step"])
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)):
                    self._tb.add_scalar(key, value, step)
        if self._mirror is not None and ("step_time" in record or
                                         time.monotonic() - self._synced_at >= SYNC_SECONDS):
            if self._tb is not None:
                self._tb.flush()
            self._mirror.sync()
            self._synced_at = time.monotonic()

    def log(self, line: str) -> None:
        if self.enabled:
            logging.info(line)

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
        if self._tb is not None:
            self._tb.close()
        if self._mirror is not None:
            self._mirror.close()
