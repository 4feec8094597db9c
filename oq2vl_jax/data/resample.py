"""PIL's bicubic resize of 8-bit RGB, bit for bit, in about a third of PIL's time.

The reference preprocesses every image with `PIL.Image.resize(size, BICUBIC)` (docs/reference_notes.md §2), and on
~512 px photos that resize is most of the data pipeline's CPU time. This module computes the same bytes:

- the same filter coefficients as Pillow's `precompute_coeffs` (float64, same operation order) rounded to the same
  22-bit fixed point (`normalize_coeffs_8bpc`);
- the same int32 sums, `+ 2**21`, arithmetic shift by 22 and clamp to 0..255 (`clip8`);
- the same two passes in the same order: horizontal, then vertical, each rounding to uint8.

Pass order: every Pillow before 12.2 runs the horizontal pass first, and so did the reference. Pillow 12.2 runs the
vertical pass first for images more than 100x taller than wide, and Pillow 13 whenever the height shrinks more than
twice as much as the width, which moves some pixels by one level. We always run horizontal first, so the pixels are the reference's whatever Pillow is installed (tests check
against Pillow's single-axis resizes, which are order-free, and against its one-shot resize where the orders agree).

Speed: Pillow loops over output pixels and taps with scalar code. Here both passes are row sums (each output row is a
weighted sum of whole input rows), which vectorise; the horizontal pass runs on a transposed copy of the image so that
it becomes a row sum too. The kernels are compiled by numba (cached on disk, released GIL).
"""

from __future__ import annotations

import functools

import numba
import numpy as np

PRECISION_BITS = 22  # Pillow: 32 - 8 bits of result - 2 bits of headroom
BICUBIC_SUPPORT = 2.0
_A = -0.5  # Pillow's bicubic `a`


def _bicubic(x: np.ndarray) -> np.ndarray:
    x = np.abs(x)
    near = ((_A + 2.0) * x - (_A + 3.0)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * _A
    return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


@functools.lru_cache(maxsize=512)
def filter_coefficients(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pillow's bicubic taps for resizing one axis: (first input index, tap count, int32 weights [out, ksize])."""
    scale = float(in_size) / out_size
    filterscale = max(scale, 1.0)
    support = BICUBIC_SUPPORT * filterscale
    ksize = int(np.ceil(support)) * 2 + 1
    center = 0.0 + (np.arange(out_size) + 0.5) * scale
    first = np.maximum((center - support + 0.5).astype(np.int64), 0)  # C's (int) cast truncates toward zero
    count = np.minimum((center + support + 0.5).astype(np.int64), in_size) - first
    taps = np.arange(ksize)
    used = taps[None, :] < count[:, None]
    inv_filterscale = 1.0 / filterscale
    offsets = (taps[None, :] + first[:, None]) - center[:, None] + 0.5
    weights = np.where(used, _bicubic(offsets * inv_filterscale), 0.0)
    total = np.zeros(out_size)
    for t in range(ksize):  # left to right, as the C loop adds them
        total = total + weights[:, t]
    weights = np.where(total[:, None] != 0.0, weights / np.where(total == 0.0, 1.0, total)[:, None], weights)
    fixed = np.where(weights < 0, -0.5 + weights * (1 << PRECISION_BITS), 0.5 + weights * (1 << PRECISION_BITS))
    return first.astype(np.int32), count.astype(np.int32), np.trunc(fixed).astype(np.int32)


@numba.njit(cache=True, nogil=True)
def _transpose_pixels(src, first_row, out):  # pragma: no cover - compiled
    """out[x, 3y + c] = src[first_row + y, 3x + c]: [rows, cols * 3] -> [cols, rows * 3] of 3-byte pixels."""
    rows = out.shape[1] // 3
    for y in range(rows):
        line = src[first_row + y]
        for x in range(out.shape[0]):
            o = out[x]
            o[3 * y] = line[3 * x]
            o[3 * y + 1] = line[3 * x + 1]
            o[3 * y + 2] = line[3 * x + 2]


@numba.njit(cache=True, nogil=True)
def _resample_rows(src, first, count, weights, out):  # pragma: no cover - compiled
    """out[o] = clip8((2**21 + sum_t src[first[o] + t] * weights[o, t]) >> 22), whole rows at a time."""
    width = src.shape[1]
    acc = np.empty(width, np.int32)
    for o in range(out.shape[0]):
        for i in range(width):
            acc[i] = 1 << 21
        for t in range(count[o]):
            w = weights[o, t]
            line = src[first[o] + t]
            for i in range(width):
                acc[i] += np.int32(line[i]) * w
        line_out = out[o]
        for i in range(width):
            v = acc[i] >> 22
            line_out[i] = 0 if v < 0 else (255 if v > 255 else v)


def bicubic_resize(pixels: np.ndarray, width: int, height: int) -> np.ndarray:
    """uint8 [H, W, 3] -> uint8 [height, width, 3], equal to Pillow's bicubic resize with the horizontal pass first."""
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != 3:
        raise ValueError(f"bicubic_resize takes uint8 [H, W, 3] pixels, got {pixels.dtype} {pixels.shape}")
    if width < 1 or height < 1:
        raise ValueError(f"bicubic_resize: output size must be positive, got {width}x{height}")
    in_height, in_width, _ = pixels.shape
    if (in_width, in_height) == (width, height):
        return pixels.copy()
    rows = np.ascontiguousarray(pixels).reshape(in_height, in_width * 3)
    v_first, v_count, v_weights = filter_coefficients(in_height, height)
    if width != in_width:
        # Pillow resamples only the rows the vertical pass reads; the others cannot change the result.
        row0, row1 = int(v_first[0]), int(v_first[-1] + v_count[-1])
        h_first, h_count, h_weights = filter_coefficients(in_width, width)
        columns = np.empty((in_width, (row1 - row0) * 3), np.uint8)
        _transpose_pixels(rows, row0, columns)
        resized_columns = np.empty((width, (row1 - row0) * 3), np.uint8)
        _resample_rows(columns, h_first, h_count, h_weights, resized_columns)
        rows = np.empty((row1 - row0, width * 3), np.uint8)
        _transpose_pixels(resized_columns, 0, rows)
        v_first = v_first - row0
    if height != in_height:
        out = np.empty((height, width * 3), np.uint8)
        _resample_rows(rows, v_first, v_count, v_weights, out)
        rows = out
    return rows.reshape(height, width, 3)
