"""TensorSource views: `under(prefix)` renames a sub-model's tensors and still reads them lazily."""

import numpy as np
import pytest

from oq2vl_jax.errors import UserError
from oq2vl_jax.pretrained.tensor_files import TensorSource


def test_under_strips_the_prefix_and_reads_lazily():
    reads = []
    arrays = {"model.tower.a": np.ones(2), "model.tower.b.c": np.zeros(3), "model.other": np.ones(1)}

    def reader(name):
        def read():
            reads.append(name)
            return arrays[name]
        return read

    source = TensorSource({n: reader(n) for n in arrays}, "'ckpt'")
    tower = source.under("model.tower.")
    assert sorted(tower.names) == ["a", "b.c"] and tower.where == "'ckpt'" and not reads
    assert np.array_equal(tower.get("b.c"), np.zeros(3)) and reads == ["model.tower.b.c"]
    with pytest.raises(UserError, match="'other' is missing from 'ckpt'"):
        tower.get("other")
    assert source.under("nothing.").names == []
