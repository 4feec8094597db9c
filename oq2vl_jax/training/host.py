"""Host-side helpers of a run: the data iterator factory, the one-batch-ahead prefetcher and the data totals summed
over processes."""

from __future__ import annotations

import queue
import threading
from typing import Any, Callable

import jax
import numpy as np
from jax.experimental import multihost_utils

from oq2vl_jax.data.stats import SKIP_REASONS, DataStats

# make_iterator(split, seed, process_index, process_count, rows) -> iterator with next / get_state / set_state
DataFactory = Callable[[str, int, int, int, int], Any]


def pipeline_data_factory(config, tokens_per_image: int) -> DataFactory:
    from oq2vl_jax.data.pipeline import build_iterator

    def make(split, seed, process_index, process_count, rows):
        return build_iterator(config.data, tokens_per_image=tokens_per_image, rows_per_batch=rows, seed=seed,
                              process_index=process_index, process_count=process_count, split=split)
    return make


PREFETCH_DEPTH = 2  # batches read ahead of the step that uses them


class Prefetcher:
    """next(iterator) and its state right after, read ahead in a daemon thread: batch k is read only once the loop
    has taken batch k - depth - 1 (k - depth waiting in the queue, one more held by the reading thread)."""

    _END = object()

    def __init__(self, iterator, depth: int = PREFETCH_DEPTH):
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
