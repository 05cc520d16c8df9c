"""Images in chat requests, over the scripted fake engine: what reaches the worker.

The media loaders run for real (data: URIs, a PDF rendered by poppler); the engine is the fake,
so these tests look at the :class:`GenerationRequest` the worker would get: one placeholder per
image at each image part's position, the PNGs in the same order, and the vision flag on the
worker's options. Real generation is in tests/integration/test_vision.py.
"""

from __future__ import annotations

import base64
import io
from typing import Any

from PIL import Image

from tests.fakes import MODEL, chat_body

CHAT = "/v1/chat/completions"
VLM = "seeing-llama"
"""The tiny text model declared a vision model in config.json (the fake engine never loads it)."""


def image_uri(size: tuple[int, int]) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", size, "red").save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def pdf_uri(pages: int) -> str:
    images = [Image.new("RGB", (40 + 10 * i, 40), "blue") for i in range(pages)]
    buffer = io.BytesIO()
    images[0].save(buffer, "PDF", save_all=True, append_images=images[1:])
    return "data:application/pdf;base64," + base64.b64encode(buffer.getvalue()).decode()


def part(url: str) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": url}}


async def test_each_image_part_becomes_placeholders_in_place(make_app: Any) -> None:
    harness = await make_app(models={VLM: {"path": MODEL, "supports_vision": True}})
    messages = [
        {"role": "system", "content": "Be brief."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "First"},
                part(image_uri((30, 20))),
                {"type": "text", "text": "then the document"},
                part(pdf_uri(3)),
            ],
        },
        {"role": "assistant", "content": "Seen."},
        {"role": "user", "content": [part(image_uri((20, 30))), {"type": "text", "text": "And this?"}]},
    ]
    response = await harness.client.post(CHAT, json=chat_body(model=VLM, messages=messages, n=2))
    assert response.status_code == 200, response.text
    assert "x-mlx-router-warnings" not in response.headers
    (client,) = harness.factory.clients
    assert client.options.vision is True
    assert len(client.requests) == 2  # n=2: both choices see the same images
    for request in client.requests:
        sent = request.messages
        assert sent[0] == {"role": "system", "content": "Be brief."}
        assert sent[1]["content"] == [
            {"type": "text", "text": "First"},
            {"type": "image"},
            {"type": "text", "text": "then the document"},
            {"type": "image"},
            {"type": "image"},
            {"type": "image"},
        ]
        assert sent[2] == {"role": "assistant", "content": "Seen."}
        assert sent[3]["content"] == [{"type": "image"}, {"type": "text", "text": "And this?"}]
        sizes = [Image.open(io.BytesIO(png)).size for png in request.images]
        assert sizes[0] == (30, 20) and sizes[-1] == (20, 30) and len(sizes) == 5  # request order
        assert all(Image.open(io.BytesIO(png)).mode == "RGB" for png in request.images)


async def test_text_models_get_text_only_requests(make_app: Any) -> None:
    harness = await make_app(models={VLM: {"path": MODEL, "supports_vision": True}})
    assert (await harness.client.post(CHAT, json=chat_body())).status_code == 200
    response = await harness.client.post(CHAT, json=chat_body(messages=[{"role": "user", "content": [part(image_uri((8, 8)))]}]))
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "model_not_vision_capable" and error["param"] == "messages[0].content[0]"
    assert f"Models that accept images: {VLM}." in error["message"]
    (client,) = harness.factory.clients
    assert client.options.model_id == MODEL and client.options.vision is False
    assert [r.images for r in client.requests] == [()]


async def test_no_vision_model_at_all_says_so(make_app: Any) -> None:
    harness = await make_app()
    body = chat_body(messages=[{"role": "user", "content": [part(image_uri((8, 8)))]}])
    response = await harness.client.post(CHAT, json=body)
    assert response.status_code == 400
    assert "No model on this server accepts images." in response.json()["error"]["message"]
    assert harness.factory.clients == []  # refused before any load
