"""The media limits as one frozen value, read once from the ``media`` config section.

The decoders take a :class:`MediaLimits` instead of the settings object so that they stay plain
functions of their inputs: a test builds limits with ``MediaLimits(max_pdf_pages=2)`` without a
configuration file, and nothing in this package reaches back into the application's state.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING

from mlx_router.config.settings import MediaSettings

if TYPE_CHECKING:
    from mlx_router.config.settings import Settings

__all__ = ["IPNetwork", "MediaLimits"]

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_DEFAULTS = MediaSettings()


@dataclass(frozen=True)
class MediaLimits:
    """Every bound the media decoders enforce; the defaults are those of :class:`MediaSettings`."""

    allow_remote_urls: bool = _DEFAULTS.allow_remote_urls
    """Whether http(s) URLs are fetched at all."""
    remote_allowed_networks: tuple[IPNetwork, ...] = field(default=())
    """Non-public networks a fetch may reach anyway (parsed from ``remote_allowed_networks``)."""
    remote_connect_timeout: float = _DEFAULTS.remote_connect_timeout
    """Seconds to connect, per hop."""
    remote_timeout: float = _DEFAULTS.remote_timeout
    """Seconds for a whole fetch, redirects included."""
    remote_max_redirects: int = _DEFAULTS.remote_max_redirects
    """Redirect hops followed; each hop's address is checked again."""
    max_images_per_request: int = _DEFAULTS.max_images_per_request
    """Images one request may produce, PDF pages included."""
    max_image_bytes: int = _DEFAULTS.max_image_bytes
    """Largest encoded image (decoded from base64, or as downloaded)."""
    max_image_pixels: int = _DEFAULTS.max_image_pixels
    """Largest image in pixels, checked from the header before any pixel is decoded."""
    resize_max_side: int = _DEFAULTS.resize_max_side
    """Returned images have no side longer than this."""
    resize_max_pixels: int = _DEFAULTS.resize_max_pixels
    """Returned images have at most this many pixels."""
    max_concurrent_decodes: int = _DEFAULTS.max_concurrent_decodes
    """Decodes and renders running at once, server-wide."""
    low_detail_max_side: int = _DEFAULTS.low_detail_max_side
    """``detail: "low"`` images have no side longer than this."""

    def low_detail(self) -> MediaLimits:
        """These limits for an image sent with ``detail: "low"``."""
        side = min(self.resize_max_side, self.low_detail_max_side)
        return replace(self, resize_max_side=side, resize_max_pixels=min(self.resize_max_pixels, side * side))
    max_pdf_bytes: int = _DEFAULTS.max_pdf_bytes
    """Largest PDF (decoded from base64, or as downloaded)."""
    max_pdf_pages: int = _DEFAULTS.max_pdf_pages
    """Pages rendered per PDF, from the first."""
    pdf_dpi: int = _DEFAULTS.pdf_dpi
    """Render resolution, lowered per page so pages respect the resize limits."""
    pdf_render_timeout: float = _DEFAULTS.pdf_render_timeout
    """Seconds for inspecting and rendering one PDF; poppler is killed at the deadline."""
    poppler_path: str | None = _DEFAULTS.poppler_path
    """Folder of ``pdfinfo``/``pdftoppm``; ``None`` searches PATH."""

    @classmethod
    def from_settings(cls, settings: Settings) -> MediaLimits:
        """The limits of ``settings.media``."""
        media = settings.media
        values = {f.name: getattr(media, f.name) for f in fields(cls)}
        values["remote_allowed_networks"] = tuple(
            ipaddress.ip_network(network, strict=False) for network in media.remote_allowed_networks
        )
        return cls(**values)
