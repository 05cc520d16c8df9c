"""PDF pages as images, through poppler (``pdfinfo`` and ``pdftoppm``, driven by pdf2image).

A PDF is a program for drawing pages, and a small file can ask for a page of 200 x 200 inches,
thousands of pages or a slow drawing. So ``pdfinfo`` runs first: it reports the page count, the
encryption and each page's size, and from those sizes each page gets a resolution at which it
fits the resize limits *before* ``pdftoppm`` draws it. Only the first ``max_pdf_pages`` pages
are drawn, and one deadline covers both programs: pdf2image kills a program that outlives it.
Pages are written to a temporary folder and read back one at a time, so at most one page's
pixels are in this process at once.
"""

from __future__ import annotations

import logging
import math
import re
import shutil
import tempfile
import time
from pathlib import Path

from pdf2image import convert_from_path, pdfinfo_from_path
from pdf2image.exceptions import PDFInfoNotInstalledError, PDFPageCountError, PDFPopplerTimeoutError

from mlx_router.errors import InvalidRequest, PayloadTooLarge
from mlx_router.media.images import normalise_image
from mlx_router.media.limits import MediaLimits

__all__ = ["POPPLER_MISSING", "looks_like_pdf", "page_dpi", "render_pdf"]

logger = logging.getLogger(__name__)

POPPLER_MISSING = (
    "PDF input needs poppler, which is not installed on this server. Install it with "
    "`brew install poppler` (macOS) or `apt install poppler-utils` (Debian/Ubuntu), or point "
    "media.poppler_path at the folder holding pdfinfo and pdftoppm."
)
_PAGE_SIZE_KEY = re.compile(r"Page\s+(\d+) size")
_PAGE_SIZE = re.compile(r"([\d.]+) x ([\d.]+) pts")


def looks_like_pdf(data: bytes) -> bool:
    """Whether ``data`` starts like a PDF (the header may follow up to 1 KiB of junk)."""
    return b"%PDF-" in data[:1024]


def page_dpi(width_pts: float, height_pts: float, limits: MediaLimits) -> float:
    """The resolution at which a page of this size (in points) fits the resize limits."""
    width_in, height_in = width_pts / 72.0, height_pts / 72.0
    dpi = float(limits.pdf_dpi)
    if max(width_in, height_in) > 0:
        dpi = min(dpi, limits.resize_max_side / max(width_in, height_in))
    if width_in * height_in > 0:
        dpi = min(dpi, math.sqrt(limits.resize_max_pixels / (width_in * height_in)))
    return max(math.floor(dpi * 100) / 100, 0.01)


def _remaining(deadline: float, param: str, limits: MediaLimits) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise _timed_out(param, limits)
    return left


def _timed_out(param: str, limits: MediaLimits) -> InvalidRequest:
    return InvalidRequest(
        f"The PDF at {param} took longer than {limits.pdf_render_timeout:g} s to render "
        "(media.pdf_render_timeout).",
        param=param,
    )


def _encrypted(param: str) -> InvalidRequest:
    return InvalidRequest(
        f"The PDF at {param} is encrypted; send it without a password or encryption.", param=param
    )


def _inspect(path: Path, param: str, limits: MediaLimits, deadline: float) -> dict[str, object]:
    """``pdfinfo`` of the document, with the sizes of the pages that may be rendered."""
    try:
        return pdfinfo_from_path(
            str(path),
            poppler_path=limits.poppler_path,  # type: ignore[arg-type]  # None (PATH) is pdf2image's default
            timeout=_remaining(deadline, param, limits),  # type: ignore[arg-type]  # pdf2image says int; takes float
            first_page=1,
            last_page=limits.max_pdf_pages,
        )
    except PDFPopplerTimeoutError:
        raise _timed_out(param, limits) from None
    except PDFInfoNotInstalledError:
        raise InvalidRequest(POPPLER_MISSING, param=param) from None
    except PDFPageCountError as exc:
        if "password" in str(exc).lower():
            raise _encrypted(param) from None
        logger.info("pdfinfo refused the PDF at %s: %s", param, str(exc).strip())
        raise InvalidRequest(f"The data at {param} is not a readable PDF.", param=param) from None


def _page_sizes(info: dict[str, object], count: int, param: str) -> list[tuple[float, float]]:
    sizes: dict[int, tuple[float, float]] = {}
    for key, value in info.items():
        key_match, size_match = _PAGE_SIZE_KEY.fullmatch(key), _PAGE_SIZE.search(str(value))
        if key_match and size_match:
            sizes[int(key_match.group(1))] = (float(size_match.group(1)), float(size_match.group(2)))
    missing = [page for page in range(1, count + 1) if page not in sizes]
    if missing:
        raise InvalidRequest(
            f"The PDF at {param}: the size of page {missing[0]} cannot be read.", param=param
        )
    return [sizes[page] for page in range(1, count + 1)]


def _runs(dpis: list[float]) -> list[tuple[int, int, float]]:
    """Consecutive pages of equal resolution as ``(first, last, dpi)``: one pdftoppm run each."""
    runs: list[tuple[int, int, float]] = []
    for page, dpi in enumerate(dpis, start=1):
        if runs and runs[-1][2] == dpi:
            runs[-1] = (runs[-1][0], page, dpi)
        else:
            runs.append((page, page, dpi))
    return runs


def render_pdf(data: bytes, param: str, limits: MediaLimits, room: int) -> tuple[list[bytes], int]:
    """The first pages of a PDF as normalised PNG images, and the document's page count.

    ``room`` is how many more images the request may hold. Blocking (runs poppler and
    decodes): call it from a worker thread.
    """
    for tool in ("pdfinfo", "pdftoppm"):
        if shutil.which(tool, path=limits.poppler_path) is None:
            logger.warning("a PDF was refused: %s was not found (media.poppler_path: %s)", tool, limits.poppler_path)
            raise InvalidRequest(POPPLER_MISSING, param=param)
    deadline = time.monotonic() + limits.pdf_render_timeout
    with tempfile.TemporaryDirectory(prefix="mlx-router-pdf-") as tmp:
        folder = Path(tmp)
        path = folder / "input.pdf"
        path.write_bytes(data)
        info = _inspect(path, param, limits, deadline)
        if str(info.get("Encrypted", "no")).startswith("yes"):
            raise _encrypted(param)
        total = int(str(info["Pages"]))  # an int from pdf2image; pdfinfo refuses a PDF of no pages
        count = min(total, limits.max_pdf_pages)
        if count > room:
            raise PayloadTooLarge(
                f"The PDF at {param} adds {count} page images, which takes the request beyond "
                f"{limits.max_images_per_request} images (media.max_images_per_request; PDF pages count).",
                param=param,
            )
        dpis = [page_dpi(width, height, limits) for width, height in _page_sizes(info, count, param)]
        images: list[bytes] = []
        for index, (first, last, dpi) in enumerate(_runs(dpis)):
            out = folder / f"run{index}"
            out.mkdir()
            try:
                # pdf2image annotates its result as images; with paths_only it is the pages' paths
                pages: list[str] = convert_from_path(  # type: ignore[assignment]
                    str(path),
                    dpi=dpi,  # type: ignore[arg-type]  # pdf2image: int, passed to pdftoppm -r (a float)
                    output_folder=str(out),
                    first_page=first,
                    last_page=last,
                    fmt="ppm",
                    use_cropbox=True,  # the box pdfinfo measured
                    paths_only=True,
                    output_file="page",
                    poppler_path=limits.poppler_path,  # type: ignore[arg-type]  # None (PATH) is pdf2image's default
                    timeout=_remaining(deadline, param, limits),  # type: ignore[arg-type]  # pdf2image says int; takes float
                )
            except PDFPopplerTimeoutError:
                raise _timed_out(param, limits) from None
            except (PDFPageCountError, OSError) as exc:
                logger.info("poppler failed on the PDF at %s: %s", param, exc)
                pages = []
            if len(pages) != last - first + 1:
                raise InvalidRequest(
                    f"The PDF at {param}: pages {first}-{last} could not be rendered.", param=param
                )
            for page in pages:
                images.append(normalise_image(Path(page), param, limits, formats=("PPM",)))
                Path(page).unlink()
        return images, total
