import io
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from fixtures.paths import REPO
from fixtures.data import (i16_png_bytes, image_bytes, noise_image_bytes, pil_horizontal_then_vertical,
                           png_claiming_size, truncated_jpeg_bytes)
from oq2vl_jax.data import images
from oq2vl_jax.data.images import BadImage, decode_image, probe_image
from oq2vl_jax.errors import UserError



def reference_preprocess(data: bytes, size: int) -> np.ndarray:
    """What the reference does before ToTensor/Normalize (reference_notes.md §2): convert("RGB").resize(BICUBIC) on the
    Pillow of its time, which resized horizontally, then vertically. Pillow >= 12.2 may run the vertical pass first,
    so the oracle spells the two passes out (see test_resample)."""
    return pil_horizontal_then_vertical(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")), size, size)


@pytest.mark.parametrize("fmt,size,target", [("JPEG", (512, 384), 384), ("JPEG", (300, 700), 384),
                                             ("PNG", (50, 70), 64), ("WEBP", (97, 41), 32)])
def test_squash_is_bit_exact_with_pil_bicubic(fmt, size, target):
    data = noise_image_bytes(size, seed=size[0], fmt=fmt)
    out, repaired = decode_image(data, target)
    assert out.dtype == np.uint8 and out.shape == (target, target, 3)
    assert not repaired
    np.testing.assert_array_equal(out, reference_preprocess(data, target))


def test_pad_mode_keeps_aspect_and_centres():
    data = image_bytes((80, 40), colour=(250, 0, 0), fmt="PNG")
    out, _ = decode_image(data, 32, "pad")
    assert out.shape == (32, 32, 3)
    # 80x40 -> 32x16, pasted at rows 8..23; grey above and below
    np.testing.assert_array_equal(out[:8], np.full((8, 32, 3), images.PAD_FILL, np.uint8))
    np.testing.assert_array_equal(out[24:], np.full((8, 32, 3), images.PAD_FILL, np.uint8))
    assert (out[10:22, 2:30] == (250, 0, 0)).all()
    noisy = noise_image_bytes((90, 50), seed=5, fmt="PNG")  # 90x50 -> 32x18 at rows 7..24, PIL's bytes
    expected = pil_horizontal_then_vertical(np.asarray(Image.open(io.BytesIO(noisy)).convert("RGB")), 32, 18)
    np.testing.assert_array_equal(decode_image(noisy, 32, "pad")[0][7:25], expected)
    with pytest.raises(UserError, match="resize_mode"):
        decode_image(data, 32, "crop")


@pytest.mark.parametrize("mode,fmt", [("CMYK", "JPEG"), ("P", "PNG"), ("LA", "PNG"), ("L", "JPEG"),
                                      ("RGBA", "PNG")])
def test_other_modes_are_converted_to_rgb_and_flagged(mode, fmt):
    data = image_bytes((20, 10), colour=(10, 200, 90), fmt=fmt, mode=mode)
    assert Image.open(io.BytesIO(data)).mode == mode
    out, repaired = decode_image(data, 16)
    assert repaired and out.shape == (16, 16, 3)
    np.testing.assert_array_equal(out, reference_preprocess(data, 16))  # these modes convert exactly as PIL does


def test_16_bit_images_are_scaled_not_clipped():
    values = np.zeros((8, 8), np.uint16)
    values[:, :4] = 65535
    values[:, 4:] = 32768
    data = i16_png_bytes(values)
    assert Image.open(io.BytesIO(data)).mode.startswith("I;16")
    out, repaired = decode_image(data, 8)
    assert repaired
    assert (out[:, :3] == 255).all() and (out[:, 5:] == 128).all()
    # PIL's own convert("RGB") would clip 32768 to 255: the repair is deliberate
    assert (reference_preprocess(data, 8)[:, 5:] == 255).all()


@pytest.mark.parametrize("data,reason", [
    (b"", "image_corrupt"),
    (b"this is not an image at all" * 10, "image_corrupt"),
    (truncated_jpeg_bytes(), "image_corrupt"),
    (image_bytes((1, 1), fmt="PNG"), "image_too_small"),
    (image_bytes((1, 50), fmt="PNG"), "image_too_small"),
    (image_bytes((50, 1), fmt="JPEG"), "image_too_small"),
    (png_claiming_size(20000, 20000), "image_too_large"),  # PIL raises DecompressionBombError itself
    (png_claiming_size(10000, 9500), "image_too_large"),  # PIL only warns; our own limit catches it
])
def test_bad_images_raise_with_reason(data, reason):
    with pytest.raises(BadImage) as e:
        decode_image(data, 16)
    assert e.value.reason == reason


def test_a_counted_bomb_prints_no_pil_warning():
    """PIL's DecompressionBombWarning used to print beside the counted image_too_large (fresh process: default
    warning filters, as a user's run has)."""
    code = ("import sys; sys.path.insert(0, 'tests')\n"
            "from fixtures.data import png_claiming_size\n"
            "from oq2vl_jax.data.images import BadImage, decode_image, probe_image\n"
            "for probe in (probe_image, lambda d: decode_image(d, 16)):\n"
            "    try:\n"
            "        probe(png_claiming_size(10000, 9500))\n"
            "    except BadImage as e:\n"
            "        print(e.reason)\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["image_too_large", "image_too_large"]
    assert "Warning" not in proc.stderr, proc.stderr


def test_truncated_jpeg_header_probe_passes_but_decode_fails():
    data = truncated_jpeg_bytes()
    assert probe_image(data) == (64, 64)  # header intact: caught only at decode, after packing
    with pytest.raises(BadImage, match="image_corrupt"):
        decode_image(data, 16)


def test_max_pixels_is_configurable():
    data = image_bytes((100, 100), fmt="PNG")
    assert probe_image(data, max_pixels=10_000) == (100, 100)
    with pytest.raises(BadImage, match="image_too_large"):
        probe_image(data, max_pixels=9_999)
    decode_image(data, 8, max_pixels=0)  # 0 disables our limit


def test_jpeg_draft_is_opt_in_and_only_changes_large_jpegs():
    small = noise_image_bytes((500, 400), seed=3, fmt="JPEG")
    np.testing.assert_array_equal(decode_image(small, 384, jpeg_draft=True)[0], reference_preprocess(small, 384))
    arr = np.asarray(Image.open(io.BytesIO(noise_image_bytes((64, 64), seed=4))).resize((1600, 1600)))
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=90)
    large = buf.getvalue()
    exact, _ = decode_image(large, 384)
    np.testing.assert_array_equal(exact, reference_preprocess(large, 384))
    fast, _ = decode_image(large, 384, jpeg_draft=True)
    assert fast.shape == exact.shape and not np.array_equal(fast, exact)
    assert np.abs(fast.astype(int) - exact).mean() < 8  # same picture, different pixels
