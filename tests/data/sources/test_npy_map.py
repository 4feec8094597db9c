"""map_npy maps the sources' .npy indexes without ast.literal_eval / compile() (not thread-safe on CPython 3.11:
"AST constructor recursion depth mismatch" in Grain read threads), and refuses a file of another dtype."""

import ast
import threading

import numpy as np
import pytest

from oq2vl_jax.data.sources import npy_map
from oq2vl_jax.data.sources.webdataset import INDEX_DTYPE


def _no_ast(*args, **kwargs):
    raise AssertionError("map_npy must not parse the header with the AST")


@pytest.mark.parametrize("array", [
    np.arange(24, dtype=np.int64).reshape(12, 2),                  # the JSON index: [offset, length] rows
    np.zeros(5, INDEX_DTYPE),                                      # the webdataset member index (structured)
    np.zeros((0, 2), np.int64),                                    # an empty index
], ids=["int64_rows", "structured", "empty"])
def test_equals_np_load_without_the_ast(tmp_path, monkeypatch, array):
    path = str(tmp_path / "index.npy")
    np.save(path, array)
    expected = np.load(path)
    monkeypatch.setattr(ast, "literal_eval", _no_ast)
    mapped = npy_map.map_npy(path, array.dtype)
    assert mapped.dtype == expected.dtype and mapped.shape == expected.shape
    assert np.array_equal(mapped, expected)


def test_refuses_another_dtype_or_fortran_order(tmp_path):
    path = str(tmp_path / "index.npy")
    np.save(path, np.arange(6, dtype=np.int32))
    with pytest.raises(ValueError, match="int64"):
        npy_map.map_npy(path, np.int64)
    np.save(path, np.asfortranarray(np.arange(6, dtype=np.int64).reshape(2, 3)))
    with pytest.raises(ValueError, match="C-order"):
        npy_map.map_npy(path, np.int64)


def test_many_threads_map_at_once(tmp_path):
    path = str(tmp_path / "index.npy")
    np.save(path, np.arange(40, dtype=np.int64).reshape(20, 2))
    barrier, results = threading.Barrier(8), []

    def work():
        barrier.wait()
        for _ in range(50):
            results.append(int(npy_map.map_npy(path, np.int64)[19, 1]))

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [39] * 400
