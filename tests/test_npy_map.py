"""map_npy never runs two np.load calls at once (CPython 3.11's ast.literal_eval, used for the .npy header, crashed
Grain read threads that mapped an index together)."""

import threading
import time

import numpy as np

from oq2vl_jax.data import npy_map


def test_concurrent_maps_are_serialised(tmp_path, monkeypatch):
    path = str(tmp_path / "index.npy")
    np.save(path, np.arange(12, dtype=np.int64))
    real_load, active, peak, lock = np.load, [0], [0], threading.Lock()

    def watched_load(*args, **kwargs):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.01)  # widen the window in which a second thread could enter
        try:
            return real_load(*args, **kwargs)
        finally:
            with lock:
                active[0] -= 1

    monkeypatch.setattr(npy_map.np, "load", watched_load)
    barrier, results = threading.Barrier(8), []

    def work():
        barrier.wait()
        results.append(npy_map.map_npy(path))

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert peak[0] == 1
    assert len(results) == 8 and all(np.array_equal(r, np.arange(12)) for r in results)
    assert all(isinstance(r, np.memmap) for r in results)
