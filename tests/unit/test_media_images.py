"""``load_images`` on data: URIs: every documented format decodes to an upright RGB PNG within the
resize limits, and every kind of bad input is refused with a 400/413 that names its parameter."""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import Callable

import pytest
from PIL import Image

from mlx_router.config.settings import ConfigError, Settings, load_settings
from mlx_router.errors import InvalidRequest, PayloadTooLarge, RouterError
from mlx_router.media import MediaBatch, MediaLimits, load_images
from tests.fixtures.media_files import bomb_png, data_uri

PARAM = "messages[1].content[0].image_url"
RED, BLUE, GREEN = (255, 0, 0), (0, 0, 255), (0, 160, 0)
MEDIA_TYPES = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp", "BMP": "image/bmp", "GIF": "image/gif"}


def encode(image: Image.Image, fmt: str, **save: object) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **save)
    return out.getvalue()


def load_one(data: bytes, media_type: str = "image/png", limits: MediaLimits | None = None) -> Image.Image:
    batch = asyncio.run(load_images([(PARAM, data_uri(media_type, data))], limits or MediaLimits()))
    assert batch.counts == (1,) and batch.warnings == ()
    image = Image.open(io.BytesIO(batch.images[0]))
    assert image.format == "PNG" and image.mode == "RGB"
    return image


def refusal(url: str, limits: MediaLimits | None = None, param: str = PARAM) -> RouterError:
    with pytest.raises(RouterError) as info:
        asyncio.run(load_images([(param, url)], limits or MediaLimits()))
    assert info.value.param == param
    assert param in info.value.message
    return info.value


def close(pixel: tuple[int, ...], expected: tuple[int, int, int], tolerance: int = 12) -> bool:
    return all(abs(a - b) <= tolerance for a, b in zip(pixel, expected))


# --------------------------------------------------------------------------- formats and modes


@pytest.mark.parametrize("fmt", list(MEDIA_TYPES))
def test_every_format_decodes_to_rgb_png(fmt: str) -> None:
    image = load_one(encode(Image.new("RGB", (40, 30), GREEN), fmt), MEDIA_TYPES[fmt])
    assert image.size == (40, 30)
    assert close(image.getpixel((20, 15)), GREEN)


@pytest.mark.parametrize(
    ("mode", "colour", "expected"),
    [
        ("RGBA", (255, 0, 0, 255), RED),
        ("RGBA", (255, 0, 0, 0), (255, 255, 255)),  # fully transparent: white, not black
        ("LA", (0, 255), (0, 0, 0)),
        ("L", 200, (200, 200, 200)),
        ("1", 1, (255, 255, 255)),
        ("CMYK", (0, 255, 255, 0), RED),
        ("I;16", 40000, (156, 156, 156)),  # 16-bit grey is scaled, not clipped to white
    ],
)
def test_modes_become_rgb(mode: str, colour: object, expected: tuple[int, int, int]) -> None:
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    image = load_one(encode(Image.new(mode, (8, 8), colour), fmt))
    assert close(image.getpixel((4, 4)), expected, tolerance=20)


def test_palette_with_transparency_becomes_rgb_on_white() -> None:
    palette = Image.new("P", (8, 8), 1)
    palette.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    palette.putpixel((0, 0), 0)
    image = load_one(encode(palette, "PNG", transparency=0))
    assert image.getpixel((0, 0)) == (255, 255, 255) and image.getpixel((4, 4)) == RED


def test_exif_rotated_jpeg_comes_out_upright() -> None:
    """Orientation 6: the stored pixels must turn 90 degrees clockwise to be seen upright."""
    stored = Image.new("RGB", (80, 40), BLUE)
    stored.paste(RED, (0, 0, 40, 40))  # left half red
    exif = Image.Exif()
    exif[0x0112] = 6
    image = load_one(encode(stored, "JPEG", exif=exif.tobytes(), quality=95), "image/jpeg")
    assert image.size == (40, 80)
    assert close(image.getpixel((20, 10)), RED, 30) and close(image.getpixel((20, 70)), BLUE, 30)


def test_exif_rotation_and_downscale_together() -> None:
    stored = Image.new("RGB", (3000, 1000), BLUE)
    stored.paste(RED, (0, 0, 1500, 1000))
    exif = Image.Exif()
    exif[0x0112] = 8  # turn 90 degrees counter-clockwise: the left half goes to the bottom
    image = load_one(encode(stored, "JPEG", exif=exif.tobytes()), "image/jpeg", MediaLimits(resize_max_side=600))
    assert image.size == (200, 600)
    assert close(image.getpixel((100, 550)), RED, 30) and close(image.getpixel((100, 50)), BLUE, 30)


def test_gif_gives_its_first_frame() -> None:
    frames = [Image.new("RGB", (16, 16), colour) for colour in (RED, BLUE, GREEN)]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert Image.open(io.BytesIO(data)).n_frames == 3
    image = load_one(data, "image/gif")
    assert close(image.getpixel((8, 8)), RED)


@pytest.mark.parametrize(
    ("size", "limits", "expected"),
    [
        ((4000, 1000), MediaLimits(), (2048, 512)),
        ((1000, 4000), MediaLimits(resize_max_side=1000), (250, 1000)),
        ((1000, 1000), MediaLimits(resize_max_pixels=250_000), (500, 500)),
        ((300, 200), MediaLimits(), (300, 200)),
    ],
)
def test_large_images_are_scaled_down(size: tuple[int, int], limits: MediaLimits, expected: tuple[int, int]) -> None:
    for fmt in ("PNG", "JPEG"):
        assert load_one(encode(Image.new("RGB", size, GREEN), fmt), MEDIA_TYPES[fmt], limits).size == expected


def test_several_images_keep_their_order() -> None:
    urls = [(f"messages[0].content[{i}].image_url", data_uri("image/png", encode(Image.new("RGB", (4, 4), c), "PNG")))
            for i, c in enumerate((RED, GREEN, BLUE))]
    batch = asyncio.run(load_images(urls, MediaLimits()))
    assert isinstance(batch, MediaBatch) and batch.counts == (1, 1, 1)
    assert [Image.open(io.BytesIO(png)).getpixel((1, 1)) for png in batch.images] == [RED, GREEN, BLUE]


def test_empty_list_is_an_empty_batch() -> None:
    assert asyncio.run(load_images([], MediaLimits())) == MediaBatch(images=(), counts=(), warnings=())


def test_base64_with_line_breaks_is_accepted() -> None:
    uri = data_uri("image/png", encode(Image.new("RGB", (30, 30), RED), "PNG"))
    head, body = uri.split(",", 1)
    wrapped = "\n".join(body[i : i + 76] for i in range(0, len(body), 76))
    batch = asyncio.run(load_images([(PARAM, f"{head},{wrapped}")], MediaLimits()))
    assert batch.counts == (1,)


@pytest.mark.parametrize(
    "spell",
    [
        lambda body: f"DATA:IMAGE/PNG;BASE64,{body}",  # schemes and media types are case-insensitive
        lambda body: f"data:image/png;charset=utf-8;name=a.png;base64,{body}",  # parameters before base64
        lambda body: f"  data:image/png;base64,{body}\n",  # copied from a file or a shell: whitespace around
        lambda body: f"\tdata:image/png;base64, {body[:20]}\r\n{body[20:]} ",
    ],
)
def test_data_uri_spellings_are_accepted(spell: Callable[[str], str]) -> None:
    body = data_uri("image/png", encode(Image.new("RGB", (6, 6), GREEN), "PNG")).split(",", 1)[1]
    batch = asyncio.run(load_images([(PARAM, spell(body))], MediaLimits()))
    assert Image.open(io.BytesIO(batch.images[0])).getpixel((3, 3)) == GREEN


# --------------------------------------------------------------------------- bad data URIs


PNG = encode(Image.new("RGB", (64, 64), RED), "PNG")


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("data:image/png;base64,@@@not base64@@@", "not valid base64"),
        ("data:image/png;base64,iVBORw0KGgo", "not valid base64"),  # bad padding
        ("data:image/png;base64,", "empty"),
        ("data:text/plain;base64,aGVsbG8=", "'text/plain'"),
        ("data:image/svg+xml;base64,PHN2Zy8+", "'image/svg+xml'"),
        ("data:image/tiff;base64,aGVsbG8=", "'image/tiff'"),
        ("data:;base64,aGVsbG8=", "no media type"),
        ("data:image/png,%89PNG", "not base64-encoded"),
        ("data:image/png;base64", "no ','"),
        (data_uri("image/png", b"hello, not an image"), "not a PNG, JPEG, WebP, BMP or GIF image"),
        (data_uri("image/png", PNG[: len(PNG) // 2]), "truncated or corrupt"),
        (data_uri("image/jpeg", encode(Image.new("RGB", (64, 64), RED), "JPEG")[:300]), "truncated or corrupt"),
        (data_uri("image/png", encode(Image.new("RGB", (8, 8)), "TIFF")), "not a PNG, JPEG"),  # a format we do not open
        (data_uri("image/png", b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n"), "not a PNG, JPEG"),
        ("", "empty"),
    ],
)
def test_bad_data_uris_are_400_naming_the_param(url: str, words: str) -> None:
    error = refusal(url)
    assert isinstance(error, InvalidRequest) and error.status_code == 400
    assert words in error.message


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://example.com/a.png", "javascript:alert(1)", "/etc/passwd", "gopher://x"])
def test_other_schemes_are_400(url: str) -> None:
    for limits in (MediaLimits(), MediaLimits(allow_remote_urls=True)):
        error = refusal(url, limits)
        assert error.status_code == 400 and "data: URI" in error.message


# --------------------------------------------------------------------------- size limits


def test_bytes_beyond_the_limit_are_413_before_decoding() -> None:
    error = refusal(data_uri("image/png", b"\0" * 200_000), MediaLimits(max_image_bytes=100_000))
    assert isinstance(error, PayloadTooLarge) and error.status_code == 413
    assert "200,000 bytes" in error.message and "media.max_image_bytes" in error.message
    # not decoded: 400 000 characters that are not base64 at all are refused for their size
    assert isinstance(refusal("data:image/png;base64," + "@" * 400_000, MediaLimits(max_image_bytes=100_000)), PayloadTooLarge)
    assert load_one(PNG, limits=MediaLimits(max_image_bytes=len(PNG))).size == (64, 64)  # exactly at the limit


def test_pixels_beyond_the_limit_are_413_from_the_header() -> None:
    data = encode(Image.new("RGB", (1200, 1000)), "PNG")
    error = refusal(data_uri("image/png", data), MediaLimits(max_image_pixels=1_000_000))
    assert isinstance(error, PayloadTooLarge)
    assert "more than 1,000,000 pixels" in error.message and "media.max_image_pixels" in error.message
    assert load_one(data, limits=MediaLimits(max_image_pixels=1_200_000)).size == (1200, 1000)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_pixel_check_without_pillows_warning_as_error() -> None:
    """As in production, where Pillow's warning is only printed: our own header check refuses."""
    data = encode(Image.new("RGB", (1200, 1000)), "PNG")
    error = refusal(data_uri("image/png", data), MediaLimits(max_image_pixels=1_000_000))
    assert isinstance(error, PayloadTooLarge) and "(1200x1000)" in error.message


def test_decompression_bomb_png_is_413_in_a_blink() -> None:
    bomb = bomb_png(20000)
    assert len(bomb) < 100_000
    started = time.perf_counter()
    error = refusal(data_uri("image/png", bomb))
    elapsed = time.perf_counter() - started
    assert isinstance(error, PayloadTooLarge) and "media.max_image_pixels" in error.message
    assert elapsed < 1.0, elapsed


@pytest.mark.parametrize("factor", [1.5, 3])
def test_pillows_own_bomb_signals_are_413(factor: float) -> None:
    """Between the limit and twice it Pillow warns (an error under this suite's filters), above it
    Pillow raises: both are answered like our own check, and Pillow's limit follows ours."""
    limits = MediaLimits(max_image_pixels=10_000)
    side = int((10_000 * factor) ** 0.5) + 1
    error = refusal(data_uri("image/png", encode(Image.new("L", (side, side)), "PNG")), limits)
    assert isinstance(error, PayloadTooLarge)
    assert Image.MAX_IMAGE_PIXELS == 10_000
    load_one(PNG)
    assert Image.MAX_IMAGE_PIXELS == MediaLimits().max_image_pixels


def test_too_many_images_is_413_before_anything_is_decoded() -> None:
    urls = [(f"messages[0].content[{i}].image_url", "data:image/png;base64,@@@") for i in range(4)]
    with pytest.raises(PayloadTooLarge) as info:
        asyncio.run(load_images(urls, MediaLimits(max_images_per_request=3)))
    assert info.value.param == "messages[0].content[3].image_url"
    assert "media.max_images_per_request" in info.value.message


def test_decoding_runs_off_the_event_loop() -> None:
    """A ticker on the loop keeps ticking while a large image is decoded and scaled."""
    uri = data_uri("image/png", bomb_png(5000, rgb=True))  # 25 MP to decode and scale

    async def run() -> tuple[float, float]:
        gaps: list[float] = []
        done = asyncio.Event()

        async def ticker() -> None:
            last = time.perf_counter()
            while not done.is_set():
                await asyncio.sleep(0.005)
                now = time.perf_counter()
                gaps.append(now - last)
                last = now

        task = asyncio.create_task(ticker())
        started = time.perf_counter()
        await load_images([(PARAM, uri)], MediaLimits())
        elapsed = time.perf_counter() - started
        done.set()
        await task
        return elapsed, max(gaps)

    elapsed, worst_gap = asyncio.run(run())
    assert elapsed > 0.2, elapsed  # long enough that a blocked loop would show
    assert worst_gap < max(0.1, elapsed / 4), (elapsed, worst_gap)


# --------------------------------------------------------------------------- configuration


def test_limits_come_from_the_media_section(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "config.json"
    path.write_text(
        '{"media": {"max_pdf_pages": 3, "allow_remote_urls": true, "remote_allowed_networks": ["10.1.0.0/16", "fd00::/8"]}}'
    )
    limits = MediaLimits.from_settings(load_settings(path, environ={"MLX_ROUTER_MEDIA_PDF_DPI": "72"}))
    assert (limits.max_pdf_pages, limits.allow_remote_urls, limits.pdf_dpi) == (3, True, 72)
    assert [str(n) for n in limits.remote_allowed_networks] == ["10.1.0.0/16", "fd00::/8"]
    assert MediaLimits.from_settings(Settings()) == MediaLimits()


@pytest.mark.parametrize(
    ("media", "words"),
    [
        ({"remote_allowed_networks": ["not-a-net"]}, "media.remote_allowed_networks"),
        ({"max_pdf_pages": 0}, "media.max_pdf_pages"),
        ({"max_pdf_page": 3}, "Did you mean 'max_pdf_pages'"),
    ],
)
def test_bad_media_config_names_the_key(tmp_path, media: dict[str, object], words: str) -> None:  # type: ignore[no-untyped-def]
    import json

    path = tmp_path / "config.json"
    path.write_text(json.dumps({"media": media}))
    with pytest.raises(ConfigError) as info:
        load_settings(path, environ={})
    assert words in str(info.value)


def test_low_detail_images_are_scaled_to_the_low_detail_side() -> None:
    """``detail: "low"`` is honoured (media.low_detail_max_side), other images keep the usual limits."""
    big = data_uri("image/png", encode(Image.new("RGB", (1600, 800), GREEN), "PNG"))
    batch = asyncio.run(load_images([("a", big), ("b", big)], MediaLimits(), frozenset({"b"})))
    sizes = [Image.open(io.BytesIO(image)).size for image in batch.images]
    assert sizes == [(1600, 800), (512, 256)]
    smaller = MediaLimits(low_detail_max_side=100)
    assert Image.open(io.BytesIO(asyncio.run(load_images([("b", big)], smaller, frozenset({"b"}))).images[0])).size == (100, 50)


def test_decodes_share_a_server_wide_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    """With media.max_concurrent_decodes = 1, concurrent requests decode one image at a time."""
    import threading
    import time

    from mlx_router import media

    running, peak, lock = 0, 0, threading.Lock()
    real = media.normalise_image

    def watched(*args: object) -> bytes:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        time.sleep(0.05)
        try:
            return real(*args)
        finally:
            with lock:
                running -= 1

    monkeypatch.setattr(media, "normalise_image", watched)
    url = data_uri("image/png", encode(Image.new("RGB", (8, 8), GREEN), "PNG"))

    async def many(limits: MediaLimits) -> None:
        await asyncio.gather(*(load_images([(f"r{i}", url)], limits) for i in range(4)))

    asyncio.run(many(MediaLimits(max_concurrent_decodes=1)))
    assert peak == 1
    peak = 0
    asyncio.run(many(MediaLimits(max_concurrent_decodes=3)))
    assert peak > 1
