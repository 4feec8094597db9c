import numpy as np
import pytest
from PIL import Image

from fixtures.data import pil_horizontal_then_vertical
from oq2vl_jax.data.resample import bicubic_resize, filter_coefficients


def noise(height: int, width: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


SHAPES = [  # (in_h, in_w, out_h, out_w)
    (512, 683, 384, 384), (683, 512, 384, 384), (384, 512, 384, 384), (512, 384, 384, 384),  # the usual photos
    (700, 300, 384, 384), (300, 700, 384, 384),  # tall / wide
    (2, 2, 384, 384), (37, 51, 384, 384), (1, 1, 3, 3), (7, 1, 3, 1), (1, 9, 1, 4),  # upscales, single rows
    (3000, 20, 384, 384), (20, 3000, 384, 384),  # extreme aspect ratios
    (384, 384, 384, 384), (384, 500, 384, 384), (500, 384, 384, 384), (100, 100, 100, 37),  # one axis unchanged
    (1501, 977, 729, 64),  # large factors: 11 and 63 taps
]


@pytest.mark.parametrize("in_h,in_w,out_h,out_w", SHAPES)
def test_equals_pillow_horizontal_then_vertical(in_h, in_w, out_h, out_w):
    pixels = noise(in_h, in_w, seed=in_h * 7 + in_w)
    out = bicubic_resize(pixels, out_w, out_h)
    assert out.dtype == np.uint8 and out.shape == (out_h, out_w, 3)
    np.testing.assert_array_equal(out, pil_horizontal_then_vertical(pixels, out_w, out_h))


def test_random_shapes_equal_pillow():
    rng = np.random.default_rng(0)
    for case in range(40):
        in_h, in_w, out_h, out_w = (int(v) for v in rng.integers(1, 700, 4))
        pixels = noise(in_h, in_w, seed=case)
        np.testing.assert_array_equal(bicubic_resize(pixels, out_w, out_h),
                                      pil_horizontal_then_vertical(pixels, out_w, out_h), err_msg=str((in_h, in_w)))


@pytest.mark.parametrize("in_h,in_w", [(512, 683), (384, 512), (480, 640), (600, 600)])
def test_equals_pillow_one_shot_where_pillow_resizes_horizontally_first(in_h, in_w):
    # Pillow 13 goes vertical-first only when the height shrinks more than twice as much as the width; not here
    assert not (in_h - 384 > 0 and in_h - 384 > (in_w - 384) * 2)
    pixels = noise(in_h, in_w, seed=1)
    np.testing.assert_array_equal(bicubic_resize(pixels, 384, 384),
                                  np.asarray(Image.fromarray(pixels).resize((384, 384), Image.BICUBIC)))


def test_hard_edges_clip_like_pillow():
    # saturated edges drive the negative lobes past 0 and 255: the clamp must match too
    y, x = np.mgrid[0:300, 0:450]
    pixels = np.stack([(x // 7 % 2) * 255, (y // 5 % 2) * 255, (x + y) % 256], -1).astype(np.uint8)
    out = bicubic_resize(pixels, 384, 384)
    np.testing.assert_array_equal(out, pil_horizontal_then_vertical(pixels, 384, 384))
    assert out.min() == 0 and out.max() == 255


def test_coefficients_are_normalised_fixed_point():
    first, count, weights = filter_coefficients(683, 384)
    assert weights.shape == (384, 2 * int(np.ceil(2 * 683 / 384)) + 1)
    assert (first >= 0).all() and (first + count <= 683).all()
    sums = weights.sum(1)
    assert np.abs(sums - (1 << 22)).max() <= weights.shape[1]  # each weight rounds by at most 1/2
    assert (weights[np.arange(weights.shape[1])[None, :] >= count[:, None]] == 0).all()


def test_input_is_not_modified_and_same_size_copies():
    pixels = noise(20, 30, seed=2)
    before = pixels.copy()
    same = bicubic_resize(pixels, 30, 20)
    np.testing.assert_array_equal(same, before)
    same[0, 0] = ~same[0, 0]
    np.testing.assert_array_equal(pixels, before)
    view = pixels[:, ::2]  # non-contiguous
    np.testing.assert_array_equal(bicubic_resize(view, 8, 8), pil_horizontal_then_vertical(view.copy(), 8, 8))
    np.testing.assert_array_equal(pixels, before)


@pytest.mark.parametrize("bad", [np.zeros((4, 4), np.uint8), np.zeros((4, 4, 4), np.uint8),
                                 np.zeros((4, 4, 3), np.float32)])
def test_rejects_other_layouts(bad):
    with pytest.raises(ValueError, match="uint8 \\[H, W, 3\\]"):
        bicubic_resize(bad, 2, 2)


def test_rejects_empty_output():
    with pytest.raises(ValueError, match="positive"):
        bicubic_resize(noise(4, 4, 0), 0, 2)
