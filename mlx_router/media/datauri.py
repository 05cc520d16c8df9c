"""``data:`` URIs (RFC 2397) as OpenAI clients send them: ``data:image/png;base64,....``.

The decoded size is known from the base64 length, so an oversized upload is refused before a
single byte of it is decoded; the media type decides which limit applies and which decoder runs.
Only base64 payloads are accepted: nobody sends binary images percent-encoded, and accepting it
would only widen what has to be validated.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Literal

from mlx_router.errors import InvalidRequest, PayloadTooLarge
from mlx_router.media.limits import MediaLimits

__all__ = ["IMAGE_MEDIA_TYPES", "PDF_MEDIA_TYPE", "MediaKind", "check_size", "decode_data_uri"]

MediaKind = Literal["image", "pdf"]

IMAGE_MEDIA_TYPES = frozenset(
    {
        "image/png",
        "image/jpeg",
        "image/jpg",
        "image/pjpeg",
        "image/webp",
        "image/bmp",
        "image/x-bmp",
        "image/x-ms-bmp",
        "image/gif",
    }
)
PDF_MEDIA_TYPE = "application/pdf"
_SUPPORTED = "image/png, image/jpeg, image/webp, image/bmp, image/gif or application/pdf"
_WHITESPACE = re.compile(r"\s+")


def check_size(kind: MediaKind, size: int, param: str, limits: MediaLimits) -> None:
    """Refuse (413) an image or PDF of ``size`` bytes beyond its configured limit."""
    limit, key = (
        (limits.max_pdf_bytes, "media.max_pdf_bytes") if kind == "pdf" else (limits.max_image_bytes, "media.max_image_bytes")
    )
    if size > limit:
        noun = "PDF" if kind == "pdf" else "image"
        raise PayloadTooLarge(
            f"The {noun} at {param} is {size:,} bytes; the limit is {limit:,} bytes ({key}).", param=param
        )


def decode_data_uri(url: str, param: str, limits: MediaLimits) -> tuple[MediaKind, bytes]:
    """The kind and decoded bytes of a base64 ``data:`` URI, within the size limits."""
    header, comma, encoded = url.partition(",")
    if not comma:
        raise InvalidRequest(
            f"The data URI at {param} has no ',' before its data; send data:<media type>;base64,<data>.",
            param=param,
        )
    parts = [part.strip().lower() for part in header[len("data:") :].split(";")]
    media_type, options = parts[0], parts[1:]
    if media_type == PDF_MEDIA_TYPE:
        kind: MediaKind = "pdf"
    elif media_type in IMAGE_MEDIA_TYPES:
        kind = "image"
    else:
        shown = repr(media_type[:64]) if media_type else "no media type"
        raise InvalidRequest(
            f"The data URI at {param} has {shown}; send {_SUPPORTED}.", param=param
        )
    if "base64" not in options:
        raise InvalidRequest(
            f"The data URI at {param} is not base64-encoded; send data:{media_type};base64,<data>.",
            param=param,
        )
    if _WHITESPACE.search(encoded):
        encoded = _WHITESPACE.sub("", encoded)
    check_size(kind, len(encoded) // 4 * 3 - encoded[-2:].count("="), param, limits)
    try:
        data = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequest(f"The data URI at {param} is not valid base64.", param=param) from None
    if not data:
        raise InvalidRequest(f"The data URI at {param} is empty.", param=param)
    return kind, data
