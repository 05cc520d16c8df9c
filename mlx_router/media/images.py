"""Decode one image into the form every vision model gets: RGB, upright, small, PNG-encoded.

The order of the steps is what keeps a hostile file cheap. Pillow reads only the header on
``open``, so the pixel count is checked before anything is decoded (a 50 KB PNG can declare
400 million pixels). JPEGs are then decoded at a reduced scale (``draft``), the image is
scaled down before it is rotated, and only the small result is encoded. Only the formats we
document are opened: Pillow knows many more (EPS would start Ghostscript), and none of them is
needed to read a photo or a screenshot.
"""

from __future__ import annotations

import io
import logging
import math
from pathlib import Path

from PIL import ExifTags, Image, UnidentifiedImageError

from mlx_router.errors import InvalidRequest, PayloadTooLarge
from mlx_router.media.limits import MediaLimits

__all__ = ["IMAGE_FORMATS", "configure_pillow", "normalise_image", "scaled_size"]

logger = logging.getLogger(__name__)

IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF")
"""Formats accepted from clients (GIF: the first frame)."""

_ORIENTATION_FIX = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
"""EXIF orientation → the transpose that makes the image upright (as ``ImageOps.exif_transpose``)."""


def configure_pillow(limits: MediaLimits) -> None:
    """Make Pillow's own decompression-bomb check agree with ``media.max_image_pixels``.

    Pillow warns above ``MAX_IMAGE_PIXELS`` and raises above twice that, inside ``Image.open``;
    with the two limits equal, no image we accept trips Pillow, and both of Pillow's signals
    are answered with the same 413 as our own check.
    """
    Image.MAX_IMAGE_PIXELS = limits.max_image_pixels


def scaled_size(width: int, height: int, limits: MediaLimits) -> tuple[int, int]:
    """``(width, height)`` scaled down, aspect kept, to fit ``resize_max_side`` and ``resize_max_pixels``."""
    scale = min(
        1.0,
        limits.resize_max_side / max(width, height, 1),
        math.sqrt(limits.resize_max_pixels / max(width * height, 1)),
    )
    if scale >= 1.0:
        return width, height
    return max(1, math.floor(width * scale)), max(1, math.floor(height * scale))


def _too_many_pixels(param: str, limits: MediaLimits, size: str = "") -> PayloadTooLarge:
    return PayloadTooLarge(
        f"The image at {param} has more than {limits.max_image_pixels:,} pixels{size} "
        "(media.max_image_pixels).",
        param=param,
    )


def _has_alpha(image: Image.Image) -> bool:
    return image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (image.mode == "P" and "transparency" in image.info)


def _resizable(image: Image.Image) -> Image.Image:
    """The image in a mode that scales smoothly (L, LA, RGB or RGBA), keeping alpha and one
    byte per pixel for bilevel and grey images: the full-size copy stays as small as it can."""
    if image.mode in ("L", "LA", "RGB", "RGBA"):
        return image
    if _has_alpha(image):
        return image.convert("RGBA")
    if image.mode.startswith("I"):  # 16-bit grey: keep the high byte (a plain conversion clips at 255)
        return image.convert("I").point(lambda value: value * (1 / 256)).convert("L")
    return image.convert("L" if image.mode == "1" else "RGB")


def _to_rgb(image: Image.Image) -> Image.Image:
    """RGB, with transparent areas laid on white (dropping alpha would show them as black)."""
    if _has_alpha(image):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


def normalise_image(
    source: bytes | Path, param: str, limits: MediaLimits, *, formats: tuple[str, ...] = IMAGE_FORMATS
) -> bytes:
    """The PNG encoding of ``source``: RGB, EXIF orientation applied, within the resize limits.

    Blocking and CPU-bound: call it from a worker thread. Raises 413 for too many pixels and
    400 for anything that is not a complete image of ``formats``.
    """
    fp = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        with Image.open(fp, formats=formats) as image:
            width, height = image.size
            if width * height > limits.max_image_pixels:
                raise _too_many_pixels(param, limits, f" ({width}x{height})")
            target = scaled_size(width, height, limits)
            if image.format == "JPEG" and target != (width, height):
                image.draft("RGB", target)  # decode at 1/2, 1/4 or 1/8 scale when that still covers target
            orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
            result = _resizable(image)  # scaled before RGB conversion: the big copy stays narrow
            if result.size != target:
                result = result.resize(target, Image.Resampling.LANCZOS, reducing_gap=3.0)
            result = _to_rgb(result)
            if orientation in _ORIENTATION_FIX:
                result = result.transpose(_ORIENTATION_FIX[orientation])
            out = io.BytesIO()
            result.save(out, "PNG", compress_level=1)
            return out.getvalue()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise _too_many_pixels(param, limits) from None
    except UnidentifiedImageError:
        raise InvalidRequest(
            f"The data at {param} is not a PNG, JPEG, WebP, BMP or GIF image.", param=param
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        logger.info("image at %s could not be decoded: %s", param, exc)
        raise InvalidRequest(
            f"The image at {param} could not be decoded (truncated or corrupt).", param=param
        ) from None
