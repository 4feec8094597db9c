"""Image bytes -> uint8 [S, S, 3], exactly as the reference preprocesses them (docs/reference_notes.md §2).

Default ("squash"): `Image.open(bytes).convert("RGB").resize((S, S), Image.BICUBIC)`, the reference's resize-naive
transform before ToTensor/Normalize (normalisation happens on device). "pad" keeps the aspect ratio: bicubic resize of
the longer side to S, centred on a mid-grey square (the LLaVA `expand2square` fill). PIL decodes; the resize is
`resample.bicubic_resize`, PIL's bicubic bit for bit with the reference Pillow's pass order, about 3x faster.

Bad images raise `BadImage(reason)` with a reason from `stats.SKIP_REASONS`; the caller counts and skips them.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image

from oq2vl_jax.data.config import MAX_IMAGE_PIXELS
from oq2vl_jax.data.resample import bicubic_resize
from oq2vl_jax.errors import UserError

MIN_IMAGE_SIDE = 2  # the reference drops images whose width or height is 1
PAD_FILL = (127, 127, 127)  # int(0.5 * 255): mean colour of the SigLIP normalisation, ~0 after it
RESIZE_MODES = ("squash", "pad")


# PIL warns (DecompressionBombWarning) when it opens an image above its own limit (~89M pixels) and raises above
# twice that. Our `max_image_pixels` guard (64M by default) counts every such image as `image_too_large`, so the
# warning would only print beside a counted skip (or, when the user raised or disabled our guard, about an image they
# chose to accept). Silenced for the process: a filter inside the readers would race between read threads.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


class BadImage(Exception):
    """An image that cannot be used; `reason` is one of stats.SKIP_REASONS."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def _open(data: bytes, max_pixels: int) -> Image.Image:
    try:
        img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:
        raise BadImage("image_too_large", str(e)) from e
    except Exception as e:  # PIL raises UnidentifiedImageError, OSError, SyntaxError, ValueError, ...
        raise BadImage("image_corrupt", f"{type(e).__name__}: {e}") from e
    width, height = img.size
    if width < MIN_IMAGE_SIDE or height < MIN_IMAGE_SIDE:
        raise BadImage("image_too_small", f"{width}x{height}")
    if max_pixels and width * height > max_pixels:
        raise BadImage("image_too_large", f"{width}x{height} > {max_pixels} pixels")
    return img


def probe_image(data: bytes, max_pixels: int = MAX_IMAGE_PIXELS) -> tuple[int, int]:
    """Cheap header check (no pixel decode): returns (width, height) or raises BadImage."""
    if not data:
        raise BadImage("image_corrupt", "empty image bytes")
    return _open(data, max_pixels).size


def to_rgb(img: Image.Image) -> tuple[Image.Image, bool]:
    """Converts to RGB; returns (image, repaired) where repaired means the mode was not RGB.

    16-bit and 32-bit greyscale are scaled to 8 bits first: PIL's own convert("RGB") clips them at 255, which turns
    most 16-bit images white.
    """
    if img.mode == "RGB":
        return img, False
    if img.mode.startswith("I;16") or img.mode in ("I", "F"):
        arr = np.asarray(img)
        if img.mode.startswith("I;16") or (img.mode == "I" and arr.max(initial=0) > 255):
            arr = np.clip(arr.astype(np.int64), 0, 65535) >> 8
        img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), mode="L")
    return img.convert("RGB"), True


def resize(pixels: np.ndarray, image_size: int, resize_mode: str = "squash") -> np.ndarray:
    """uint8 [H, W, 3] -> uint8 [image_size, image_size, 3]."""
    if resize_mode == "squash":
        return bicubic_resize(pixels, image_size, image_size)
    if resize_mode == "pad":
        height, width, _ = pixels.shape
        scale = image_size / max(width, height)
        new_width, new_height = max(1, round(width * scale)), max(1, round(height * scale))
        canvas = np.empty((image_size, image_size, 3), np.uint8)
        canvas[:] = PAD_FILL
        left, top = (image_size - new_width) // 2, (image_size - new_height) // 2
        canvas[top:top + new_height, left:left + new_width] = bicubic_resize(pixels, new_width, new_height)
        return canvas
    raise UserError(f"data.resize_mode must be one of {RESIZE_MODES}, got {resize_mode!r}")


def decode_image(data: bytes, image_size: int, resize_mode: str = "squash",
               max_pixels: int = MAX_IMAGE_PIXELS, jpeg_draft: bool = False) -> tuple[np.ndarray, bool]:
    """Decodes, converts to RGB and resizes; returns (uint8 [S, S, 3], mode_repaired). Raises BadImage.

    jpeg_draft (opt-in, NOT bit-exact with the reference): let libjpeg decode JPEGs at 1/2, 1/4 or 1/8 scale when
    they are at least that many times larger than image_size; much faster on large photos, different pixels.
    """
    if not data:
        raise BadImage("image_corrupt", "empty image bytes")
    img = _open(data, max_pixels)
    try:
        if jpeg_draft and img.format == "JPEG":
            img.draft("RGB", (image_size, image_size))
        img.load()
        img, repaired = to_rgb(img)
        out = resize(np.asarray(img), image_size, resize_mode)
    except (Image.DecompressionBombError, MemoryError) as e:
        raise BadImage("image_too_large", str(e)) from e
    except UserError:
        raise
    except Exception as e:  # truncated files raise OSError at load(); broken palettes ValueError; ...
        raise BadImage("image_corrupt", f"{type(e).__name__}: {e}") from e
    if out.shape != (image_size, image_size, 3):
        raise BadImage("image_corrupt", f"unexpected decoded shape {out.shape}")
    return out, repaired
