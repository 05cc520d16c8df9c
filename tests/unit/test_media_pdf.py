"""PDFs through poppler: pages in order, page count and page size capped before rendering,
encrypted and unreadable files refused, the render deadline kills poppler, and a server without
poppler still takes images but answers PDFs with how to install it."""

from __future__ import annotations

import asyncio
import io
import signal
import subprocess
import time
from pathlib import Path

import pdf2image.pdf2image
import pytest
from PIL import Image

from mlx_router.errors import InvalidRequest, PayloadTooLarge, RouterError
from mlx_router.media import MediaBatch, MediaLimits, load_images
from mlx_router.media.pdf import page_dpi
from tests.fixtures.media_files import data_uri, encrypted_pdf, pdf, slow_pdf

PARAM = "messages[1].content[0].image_url"
FILL = {"red": b"1 0 0 rg 0 0 20000 20000 re f", "green": b"0 1 0 rg 0 0 20000 20000 re f", "blue": b"0 0 1 rg 0 0 20000 20000 re f"}


def load(data: bytes, limits: MediaLimits | None = None, extra: list[tuple[str, str]] | None = None) -> MediaBatch:
    return asyncio.run(load_images([(PARAM, data_uri("application/pdf", data)), *(extra or [])], limits or MediaLimits()))


def refusal(data: bytes, limits: MediaLimits | None = None) -> RouterError:
    with pytest.raises(RouterError) as info:
        load(data, limits)
    assert info.value.param == PARAM
    return info.value


def sizes(batch: MediaBatch) -> list[tuple[int, int]]:
    return [Image.open(io.BytesIO(png)).size for png in batch.images]


def colour(png: bytes) -> tuple[int, int, int]:
    image = Image.open(io.BytesIO(png))
    assert image.mode == "RGB"
    return image.getpixel((image.width // 2, image.height // 2))  # type: ignore[return-value]


def test_pages_become_images_in_order() -> None:
    batch = load(pdf(page_contents=[FILL["red"], FILL["green"], FILL["blue"]]))
    assert batch.counts == (3,) and batch.warnings == ()
    assert [colour(png) for png in batch.images] == [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    assert sizes(batch) == [(417, 417)] * 3  # 200 pt at 150 dpi


def test_page_counts_sit_between_the_images_around_them() -> None:
    png = io.BytesIO()
    Image.new("RGB", (5, 5)).save(png, "PNG")
    image = ("messages[2].content[0].image_url", data_uri("image/png", png.getvalue()))
    batch = load(pdf(pages=2), extra=[image])
    assert batch.counts == (2, 1) and len(batch.images) == 3
    assert sizes(batch)[-1] == (5, 5)


def test_only_the_first_pages_are_rendered_and_the_cut_is_reported() -> None:
    batch = load(pdf(pages=2000))  # time and memory: test_media_cost.py
    assert batch.counts == (20,) and len(batch.images) == 20
    assert batch.warnings == (f"PDF at {PARAM}: rendered 20 of 2000 pages (media.max_pdf_pages)",)
    assert load(pdf(pages=5), MediaLimits(max_pdf_pages=2)).counts == (2,)


def test_a_huge_page_is_rendered_at_a_lower_resolution() -> None:
    """200 x 200 inches at 150 dpi would be 30000 x 30000 pixels; it is drawn at 2048 x 2048."""
    batch = load(pdf(size=(14400, 14400), content=FILL["green"]))  # time and memory: test_media_cost.py
    assert sizes(batch) == [(2048, 2048)] and colour(batch.images[0]) == (0, 255, 0)


def test_each_page_gets_its_own_resolution() -> None:
    batch = load(
        pdf(page_sizes=[(72, 144), (14400, 7200), (720, 720)], page_contents=[FILL["red"], FILL["green"], FILL["blue"]]),
        MediaLimits(pdf_dpi=100, resize_max_side=800),
    )
    assert sizes(batch) == [(100, 200), (800, 400), (800, 800)]
    assert [colour(png) for png in batch.images] == [(255, 0, 0), (0, 255, 0), (0, 0, 255)]


@pytest.mark.parametrize(
    ("page", "limits", "dpi"),
    [
        ((612, 792), MediaLimits(), 150.0),
        ((14400, 14400), MediaLimits(), 10.24),
        ((14400, 14400), MediaLimits(resize_max_side=16384, resize_max_pixels=1_000_000), 5.0),
        ((72, 72), MediaLimits(pdf_dpi=300, resize_max_side=100), 100.0),
        ((0, 0), MediaLimits(), 150.0),
    ],
)
def test_page_dpi(page: tuple[float, float], limits: MediaLimits, dpi: float) -> None:
    assert page_dpi(*page, limits) == dpi


def test_pages_beyond_the_request_image_limit_are_413() -> None:
    error = refusal(pdf(pages=10), MediaLimits(max_images_per_request=5))
    assert isinstance(error, PayloadTooLarge) and "media.max_images_per_request" in error.message
    with pytest.raises(PayloadTooLarge):  # one PDF page too many with the image after it
        load(pdf(pages=4), MediaLimits(max_images_per_request=4), extra=[("later", "data:image/png;base64,AAAA")])
    assert load(pdf(pages=4), MediaLimits(max_images_per_request=4)).counts == (4,)


def test_pdf_bytes_limit_is_413() -> None:
    error = refusal(pdf(pages=50), MediaLimits(max_pdf_bytes=2048))
    assert isinstance(error, PayloadTooLarge) and "media.max_pdf_bytes" in error.message


@pytest.mark.parametrize("user_password", [b"", b"secret"])
def test_encrypted_pdfs_are_refused(user_password: bytes) -> None:
    data = encrypted_pdf(user_password=user_password)
    if not user_password:  # readable without a password, and poppler says it is encrypted
        info = subprocess.run(["pdfinfo", "-"], input=data, capture_output=True, check=True).stdout.decode()
        assert "Encrypted:       yes" in info
    error = refusal(data)
    assert isinstance(error, InvalidRequest) and "encrypted" in error.message


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"\x89PNG\r\n\x1a\n not a pdf at all", "not a readable PDF"),
        (b"%PDF-1.4\n garbage with no objects or trailer", "not a readable PDF"),
        (pdf(pages=0), "not a readable PDF"),
    ],
)
def test_unreadable_pdfs_are_400(data: bytes, words: str) -> None:
    error = refusal(data)
    assert isinstance(error, InvalidRequest) and words in error.message


def test_render_deadline_kills_poppler(monkeypatch: pytest.MonkeyPatch) -> None:
    """A drawing that takes pdftoppm many seconds is stopped at the deadline: the child gets
    SIGKILL, is reaped, and the request is answered right after the deadline."""
    started_children: list[tuple[list[str], subprocess.Popen[bytes]]] = []

    class RecordingPopen(subprocess.Popen):  # type: ignore[type-arg]
        def __init__(self, args: list[str], *rest: object, **kwargs: object) -> None:
            super().__init__(args, *rest, **kwargs)  # type: ignore[arg-type]
            started_children.append((args, self))

    monkeypatch.setattr(pdf2image.pdf2image, "Popen", RecordingPopen)
    started = time.perf_counter()
    error = refusal(slow_pdf(), MediaLimits(pdf_render_timeout=0.5))
    elapsed = time.perf_counter() - started
    assert isinstance(error, InvalidRequest) and "media.pdf_render_timeout" in error.message
    renders = [child for args, child in started_children if Path(args[0]).name == "pdftoppm" and "-r" in args]
    assert len(renders) == 1
    assert renders[0].returncode == -signal.SIGKILL
    assert 0.5 <= elapsed < 2.0, elapsed  # not the many seconds the drawing takes


def test_without_poppler_images_work_and_pdfs_say_how_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    png = io.BytesIO()
    Image.new("RGB", (5, 5)).save(png, "PNG")
    image = [(PARAM, data_uri("image/png", png.getvalue()))]
    empty = tmp_path / "bin"
    empty.mkdir()
    for limits, path in ((MediaLimits(poppler_path=str(empty)), None), (MediaLimits(), str(empty))):
        if path is not None:
            monkeypatch.setenv("PATH", path)
        assert asyncio.run(load_images(image, limits)).counts == (1,)
        error = refusal(pdf(), limits)
        assert isinstance(error, InvalidRequest) and error.status_code == 400
        assert "brew install poppler" in error.message and "apt install poppler-utils" in error.message


def test_a_pdf_declared_as_an_image_is_not_an_image() -> None:
    with pytest.raises(InvalidRequest) as info:
        asyncio.run(load_images([(PARAM, data_uri("image/png", pdf()))], MediaLimits()))
    assert "not a PNG, JPEG" in info.value.message
