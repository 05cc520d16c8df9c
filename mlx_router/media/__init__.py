"""Images and PDFs from chat requests, turned into small RGB PNG images under hard limits.

The API layer hands over every ``image_url`` of a request with the JSON path it came from and
gets back one :class:`MediaBatch`: the images in order, how many images each URL produced (a
PDF gives one per rendered page, so the prompt can hold that many image placeholders in its
place), and warnings for anything that was cut short. Every refusal is a
:class:`~mlx_router.errors.RouterError` naming that path. Decoding and rendering run in worker
threads (poppler in a child process), one URL at a time, so the event loop never waits on
pixels and memory holds at most one full-size image.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from mlx_router.errors import InvalidRequest, PayloadTooLarge
from mlx_router.media.datauri import MediaKind, check_size, decode_data_uri
from mlx_router.media.images import configure_pillow, normalise_image
from mlx_router.media.limits import MediaLimits
from mlx_router.media.pdf import looks_like_pdf, render_pdf
from mlx_router.media.remote import fetch

__all__ = ["MediaBatch", "MediaLimits", "load_images"]

logger = logging.getLogger(__name__)
T = TypeVar("T")
_SLOTS: dict[int, threading.BoundedSemaphore] = {}
_SLOTS_LOCK = threading.Lock()


def _bounded(limits: MediaLimits, work: Callable[..., T], *args: object) -> T:
    """Run a decode or render in one of ``media.max_concurrent_decodes`` server-wide slots, so
    concurrent requests cannot multiply the memory of full-size images (runs in a thread)."""
    with _SLOTS_LOCK:
        slots = _SLOTS.setdefault(limits.max_concurrent_decodes, threading.BoundedSemaphore(limits.max_concurrent_decodes))
    with slots:
        return work(*args)


@dataclass(frozen=True)
class MediaBatch:
    """The images of one request, ready for a vision model."""

    images: tuple[bytes, ...]
    """PNG-encoded RGB images, upright and scaled down, in request order (PDF pages in page order)."""
    counts: tuple[int, ...]
    """How many images each URL produced, one entry per URL given to :func:`load_images`."""
    warnings: tuple[str, ...]
    """What was cut short, e.g. the pages of a PDF beyond ``media.max_pdf_pages``."""


async def _read(param: str, url: str, limits: MediaLimits) -> tuple[MediaKind, bytes]:
    """The kind and bytes behind one URL: a ``data:`` URI decoded, or an http(s) URL fetched."""
    url = url.strip() if isinstance(url, str) else ""  # pasted URIs often end in a newline
    if not url:
        raise InvalidRequest(f"The image URL at {param} is empty.", param=param)
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme == "data":
        return await asyncio.to_thread(decode_data_uri, url, param, limits)
    if scheme in ("http", "https"):
        data = await fetch(url, param, limits)
        kind: MediaKind = "pdf" if looks_like_pdf(data) else "image"
        check_size(kind, len(data), param, limits)
        return kind, data
    shown = f"'{scheme[:16]}:'" if scheme else "no scheme"
    raise InvalidRequest(
        f"The image URL at {param} has {shown}; send a base64 data: URI (or an http(s) URL where "
        "the server allows them).",
        param=param,
    )


async def load_images(
    urls: list[tuple[str, str]], limits: MediaLimits, low_detail: frozenset[str] = frozenset()
) -> MediaBatch:
    """Decode every ``(param, url)`` of a request into images; raises 400/413 RouterErrors.
    Images whose param is in ``low_detail`` (``detail: "low"``) are scaled down further."""
    if len(urls) > limits.max_images_per_request:
        raise PayloadTooLarge(
            f"The request carries {len(urls)} images, more than the {limits.max_images_per_request} "
            "allowed (media.max_images_per_request).",
            param=urls[limits.max_images_per_request][0],
        )
    configure_pillow(limits)
    images: list[bytes] = []
    counts: list[int] = []
    warnings: list[str] = []
    for index, (param, url) in enumerate(urls):
        kind, data = await _read(param, url, limits)
        if kind == "image":
            own = limits.low_detail() if param in low_detail else limits
            images.append(await asyncio.to_thread(_bounded, limits, normalise_image, data, param, own))
            counts.append(1)
            continue
        room = limits.max_images_per_request - len(images) - (len(urls) - index - 1)  # later URLs: 1+ each
        pages, total = await asyncio.to_thread(_bounded, limits, render_pdf, data, param, limits, room)
        images.extend(pages)
        counts.append(len(pages))
        if total > len(pages):
            warnings.append(f"PDF at {param}: rendered {len(pages)} of {total} pages (media.max_pdf_pages)")
            logger.info("%s", warnings[-1])
    return MediaBatch(images=tuple(images), counts=tuple(counts), warnings=tuple(warnings))
