"""Host-side helpers of a run: the demo data (written once, before training), the data iterator factory, the
one-batch-ahead prefetcher and the data totals summed over processes."""

from __future__ import annotations

import json
import os
import queue
import shutil
import threading
from typing import Any, Callable

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from oq2vl_jax.data import demo
from oq2vl_jax.data.stats import SKIP_REASONS, DataStats

# make_iterator(split, seed, process_index, process_count, rows) -> iterator with next / get_state / set_state
DataFactory = Callable[[str, int, int, int, int], Any]
DEMO_PATHS_FILE = "paths.json"


def prepare_demo_data(config, workdir: str) -> dict:
    """Writes the demo dataset once (atomically) and points config.data at it."""
    d = config.demo
    data_dir = os.path.abspath(d.data_dir or os.path.join(workdir, "demo_data"))
    marker = os.path.join(data_dir, DEMO_PATHS_FILE)
    if jax.process_index() == 0 and not os.path.exists(marker):
        tmp = data_dir + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        logging.info("writing the demo dataset to %s", data_dir)
        paths = demo.write_demo_dataset(tmp, num_train=int(d.num_train), num_eval=int(d.num_eval),
                                        image_size=int(config.data.image_size), seed=int(d.seed))
        paths = {k: os.path.relpath(v, tmp) for k, v in paths.items()}
        with open(os.path.join(tmp, DEMO_PATHS_FILE), "w") as f:
            json.dump(paths, f)
        shutil.rmtree(data_dir, ignore_errors=True)
        os.replace(tmp, data_dir)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("demo data written")
    with open(marker) as f:
        paths = {k: os.path.join(data_dir, v) for k, v in json.load(f).items()}
    config.data.sources = ({"kind": "webdataset", "path": paths["train"]},)
    config.data.eval_sources = ({"kind": "webdataset", "path": paths["eval"]},)
    config.data.tokenizer_dir = paths["tokenizer_dir"]
    return paths


def pipeline_data_factory(config, tokens_per_image: int) -> DataFactory:
    from oq2vl_jax.data.pipeline import build_iterator

    def make(split, seed, process_index, process_count, rows):
        return build_iterator(config.data, tokens_per_image=tokens_per_image, rows_per_batch=rows, seed=seed,
                              process_index=process_index, process_count=process_count, split=split)
    return make


class Prefetcher:
    """next(iterator) and its state right after, one batch ahead, in a daemon thread."""

    _END = object()

    def __init__(self, iterator, depth: int = 2):
        self.iterator, self.queue = iterator, queue.Queue(maxsize=depth)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        try:
            while True:
                batch = next(self.iterator)
                self.queue.put((batch, self.iterator.get_state()))
        except StopIteration:
            self.queue.put(self._END)
        except BaseException as e:  # surfaced in the main thread
            self.queue.put(e)

    def next(self):
        item = self.queue.get()
        if item is self._END:
            return None
        if isinstance(item, BaseException):
            raise item
        return item


def global_data_totals(stats: DataStats) -> dict[str, int]:
    keys = list(stats.totals)
    local = np.asarray([stats.totals[k] for k in keys], np.int64)
    if jax.process_count() > 1:
        local = np.asarray(multihost_utils.process_allgather(local)).reshape(-1, len(keys)).sum(axis=0)
    totals = dict(zip(keys, (int(v) for v in local)))
    totals["skipped"] = sum(totals[r] for r in SKIP_REASONS)
    return totals
