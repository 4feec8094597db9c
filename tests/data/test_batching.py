import numpy as np
import pytest

from fixtures.data import image_bytes, truncated_jpeg_bytes
from oq2vl_jax.batch import validate_batch
from oq2vl_jax.data.batching import BatchAssembler
from oq2vl_jax.data.packing import PackedDocument
from oq2vl_jax.data.stats import STATS_KEYS
from oq2vl_jax.text.documents import DocumentLayout

BOS, EOS, T = 100, 101, 2
RED, BLUE = image_bytes((10, 10), (255, 0, 0), fmt="PNG"), image_bytes((10, 10), (0, 0, 255), fmt="PNG")


def doc(text_ids, image, uid, target_mask=None):
    ids = np.asarray([BOS, 0, 0] + text_ids + [EOS], np.int32)
    mask = np.zeros(len(ids), bool)
    mask[1:3] = True
    return PackedDocument(DocumentLayout(ids, mask, (1,), target_mask), (image,), ("t", uid, 0))


def assemble(rows, label_mode="default", b=2):
    asm = BatchAssembler(rows_per_batch=b, row_length=16, max_images_per_row=3, image_size=4, tokens_per_image=T,
                         label_mode=label_mode)
    batch = asm(rows)
    validate_batch(batch, T, require_loss=True)
    return batch


def test_default_labels_on_a_hand_built_row():
    batch = assemble([{"documents": [doc([10, 11], RED, 0), doc([20], BLUE, 1)], "stats": {}}])
    E, B = EOS, BOS
    assert batch["input_ids"][0].tolist() == [B, 0, 0, 10, 11, E, B, 0, 0, 20, E, 0, 0, 0, 0, 0]
    assert batch["segment_ids"][0].tolist() == [1] * 6 + [2] * 5 + [0] * 5
    assert batch["positions"][0].tolist() == [0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 4, 0, 0, 0, 0, 0]
    assert batch["image_mask"][0].tolist() == [False, True, True, False, False, False,
                                               False, True, True, False, False] + [False] * 5
    #                   <s>  img  img→\n  10→11  11→E  E|  <s>  img  img→20  20→E  E|  pad...
    assert batch["targets"][0].tolist() == [0, 0, 10, 11, E, 0, 0, 0, 20, E, 0, 0, 0, 0, 0, 0]
    assert batch["loss_weights"][0].tolist() == [0, 0, 1, 1, 1, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0]
    assert not batch["segment_ids"][1].any() and not batch["loss_weights"][1].any()  # padding row
    assert batch["image_valid"].tolist() == [[True, True, False], [False, False, False]]
    assert (batch["images"][0, 0] == (255, 0, 0)).all() and (batch["images"][0, 1] == (0, 0, 255)).all()
    assert not batch["images"][0, 2].any() and not batch["images"][1].any()
    stats = batch["stats"]
    assert set(stats) == set(STATS_KEYS)
    assert (stats["documents"], stats["num_images"], stats["real_tokens"], stats["capacity_tokens"]) == (2, 2, 11, 32)


def test_reference_compat_labels_on_a_hand_built_row():
    batch = assemble([{"documents": [doc([10, 11], RED, 0), doc([20], BLUE, 1)], "stats": {}}], "reference_compat")
    E, B = EOS, BOS
    assert batch["segment_ids"][0].tolist() == [1] * 11 + [0] * 5  # one continuous segment, as the reference
    assert batch["positions"][0].tolist() == list(range(11)) + [0] * 5
    # every text token is a target, the next document's <s> included; image positions are not
    assert batch["targets"][0].tolist() == [0, 0, 10, 11, E, B, 0, 0, 20, E, 0, 0, 0, 0, 0, 0]
    assert batch["loss_weights"][0].tolist() == [0, 0, 1, 1, 1, 1, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0]


def test_undecodable_image_drops_its_document_and_is_counted():
    rows = [{"documents": [doc([10], truncated_jpeg_bytes(), 0), doc([20], BLUE, 1)],
             "stats": {"caption_empty": 2}},
            {"documents": [doc([30], image_bytes((4, 4), fmt="PNG", mode="L"), 2)], "stats": {}}]
    batch = assemble(rows)
    assert batch["segment_ids"][0].tolist()[:5] == [1] * 5 and not batch["segment_ids"][0, 5:].any()
    assert batch["input_ids"][0, 3] == 20 and batch["image_valid"][0].tolist() == [True, False, False]
    assert (batch["images"][0, 0] == (0, 0, 255)).all()
    s = batch["stats"]
    assert (s["image_corrupt"], s["caption_empty"], s["repaired_image_mode"], s["documents"]) == (1, 2, 1, 2)


def test_target_mask_limits_trained_positions():
    mask = np.asarray([0, 0, 0, 0, 1, 1], bool)  # only the last text token and <|im_end|> may be predicted
    batch = assemble([{"documents": [doc([10, 11], RED, 0, mask)], "stats": {}}], b=1)
    assert batch["loss_weights"][0].tolist()[:6] == [0, 0, 0, 1, 1, 0]


def test_too_many_rows_is_an_error():
    with pytest.raises(ValueError):
        assemble([{"documents": [], "stats": {}}] * 3)
