import numpy as np
import pytest

from oq2vl_jax.batch import validate_batch
from oq2vl_jax.errors import UserError


def _batch(b=2, l=16, m=2, t=4):
    mask = np.zeros((b, l), bool)
    mask[:, 1:1 + t] = True
    valid = np.zeros((b, m), bool)
    valid[:, 0] = True
    return {"input_ids": np.zeros((b, l), np.int32), "segment_ids": np.ones((b, l), np.int32),
            "positions": np.tile(np.arange(l, dtype=np.int32), (b, 1)), "image_mask": mask,
            "images": np.zeros((b, m, 8, 8, 3), np.uint8), "image_valid": valid,
            "targets": np.zeros((b, l), np.int32), "loss_weights": np.ones((b, l), np.float32)}


def test_valid_batch_passes():
    validate_batch(_batch(), tokens_per_image=4, require_loss=True)


def test_errors_name_the_field():
    bad = _batch()
    bad["positions"] = bad["positions"].astype(np.int64)
    with pytest.raises(UserError, match="positions"):
        validate_batch(bad, 4)
    bad = _batch()
    del bad["targets"]
    with pytest.raises(UserError, match="targets"):
        validate_batch(bad, 4, require_loss=True)
    with pytest.raises(UserError, match="image_mask marks"):
        validate_batch(_batch(), tokens_per_image=5)
