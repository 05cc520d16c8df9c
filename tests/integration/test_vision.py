"""Vision models end to end: a real server, the tiny random-weight Qwen2-VL model, real mlx-vlm.

Images and PDFs travel as ``data:`` URIs through the media loaders into the worker, where the
model's processor expands each placeholder into the image's tokens. The fixture's processor
turns a 56-pixel square into 4 image tokens, framed by <|vision_start|> and <|vision_end|>: an
image adds exactly 6 prompt tokens, which the usage checks below rely on.
"""

from __future__ import annotations

import base64
import io
import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from mlx_router.fabricate import make_tiny_llm, make_tiny_vlm
from tests.integration.conftest import RunningServer, start_server
from tests.openai_schemas import validate

pytestmark = pytest.mark.integration

VLM = "tiny-vlm"
TEXT = "tiny-llama"
SHORT = "tiny-vlm-short"
"""The vision model with a 48-token context: room for a short text prompt, not for two images."""
IMAGE_TOKENS = 4 + 2
"""Prompt tokens one 56-pixel image adds: 4 image tokens and the two markers around them."""
MAX_PDF_PAGES = 2


def png_uri(color: str, size: tuple[int, int] = (56, 56)) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def pdf_uri(pages: int) -> str:
    """A PDF of ``pages`` plain pages, one colour each, written by Pillow."""
    colors = ["red", "green", "blue", "yellow", "purple"]
    images = [Image.new("RGB", (56, 56), colors[i % len(colors)]) for i in range(pages)]
    buffer = io.BytesIO()
    images[0].save(buffer, "PDF", save_all=True, append_images=images[1:], resolution=72.0)
    return "data:application/pdf;base64," + base64.b64encode(buffer.getvalue()).decode()


def user(text: str, *urls: str) -> dict[str, Any]:
    parts: list[dict[str, Any]] = [{"type": "text", "text": text}]
    parts += [{"type": "image_url", "image_url": {"url": url}} for url in urls]
    return {"role": "user", "content": parts}


@pytest.fixture(scope="module")
def vision_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """A router serving the tiny vision model (preloaded) and a tiny text model."""
    models = tmp_path_factory.mktemp("vision-models")
    make_tiny_vlm(models / VLM)
    make_tiny_llm(models / TEXT)
    server = start_server(
        tmp_path_factory.mktemp("vision-server"),
        {
            "defaults": {
                "model": VLM,
                "model_directory": str(models),
                "embedded_model": False,
                "max_tokens": 16,
                "cache_size": 2,
            },
            "server": {},
            "media": {"max_pdf_pages": MAX_PDF_PAGES},
            # Qwen2-VL's template has no tools variable: the server describes them itself.
            "models": {VLM: {"supports_tools": True}, SHORT: {"path": VLM, "context_length": 48}},
        },
    )
    yield server
    server.stop()


def complete(http: httpx.Client, messages: list[dict[str, Any]], **extra: Any) -> httpx.Response:
    body = {"model": VLM, "messages": messages, "temperature": 0, "max_tokens": 8, **extra}
    return http.post("/v1/chat/completions", json=body)


def ok(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()
    validate(data, "CreateChatCompletionResponse")
    return data


def prompt_tokens(http: httpx.Client, messages: list[dict[str, Any]]) -> int:
    return int(ok(complete(http, messages, max_tokens=1))["usage"]["prompt_tokens"])


def test_image_request_counts_image_tokens_and_reaches_the_model(vision_server: RunningServer) -> None:
    with vision_server.client() as http:
        red = ok(complete(http, [user("What is in the picture?", png_uri("red"))]))
        assert red["model"] == VLM
        assert red["choices"][0]["finish_reason"] == "length"
        assert red["usage"]["completion_tokens"] == 8
        text_only = prompt_tokens(http, [user("What is in the picture?")])
        assert red["usage"]["prompt_tokens"] == text_only + IMAGE_TOKENS
        assert vision_server.openai().chat.completions.create(  # the official client parses it too
            model=VLM, messages=[user("Hi", png_uri("red"))], max_tokens=2
        ).usage.prompt_tokens == prompt_tokens(http, [user("Hi")]) + IMAGE_TOKENS
        # Greedy: the same image gives the same answer, another image another one.
        again = ok(complete(http, [user("What is in the picture?", png_uri("red"))]))
        blue = ok(complete(http, [user("What is in the picture?", png_uri("blue"))]))
        assert again["choices"][0]["message"]["content"] == red["choices"][0]["message"]["content"]
        assert blue["choices"][0]["message"]["content"] != red["choices"][0]["message"]["content"]


def test_two_images_in_one_request(vision_server: RunningServer) -> None:
    with vision_server.client() as http:
        both = ok(complete(http, [user("Compare them.", png_uri("red"), png_uri("blue"))]))
        assert both["usage"]["prompt_tokens"] == prompt_tokens(http, [user("Compare them.")]) + 2 * IMAGE_TOKENS
        swapped = ok(complete(http, [user("Compare them.", png_uri("blue"), png_uri("red"))]))
        assert swapped["choices"][0]["message"]["content"] != both["choices"][0]["message"]["content"]


def test_pdf_pages_become_images(vision_server: RunningServer) -> None:
    with vision_server.client() as http:
        response = complete(http, [user("Summarise the document.", pdf_uri(2))])
        data = ok(response)
        assert "x-mlx-router-warnings" not in response.headers
        page_tokens = data["usage"]["prompt_tokens"] - prompt_tokens(http, [user("Summarise the document.")])
        assert page_tokens >= 2 * IMAGE_TOKENS and page_tokens % 2 == 0  # one placeholder per page


def test_skipped_pdf_pages_are_reported_in_a_header(vision_server: RunningServer) -> None:
    with vision_server.client() as http:
        two = ok(complete(http, [user("Read it.", pdf_uri(2))]))["usage"]["prompt_tokens"]
        response = complete(http, [user("Read it.", pdf_uri(MAX_PDF_PAGES + 3))])
        assert ok(response)["usage"]["prompt_tokens"] == two  # only the first pages were rendered
        warnings = json.loads(response.headers["x-mlx-router-warnings"])
        assert len(warnings) == 1 and f"{MAX_PDF_PAGES} of {MAX_PDF_PAGES + 3}" in warnings[0]
        assert "messages[0].content[1]" in warnings[0]
        body = {"model": VLM, "messages": [user("Read it.", pdf_uri(MAX_PDF_PAGES + 1))], "max_tokens": 2, "stream": True}
        with http.stream("POST", "/v1/chat/completions", json=body) as stream:
            assert stream.status_code == 200
            assert json.loads(stream.headers["x-mlx-router-warnings"]) and list(stream.iter_lines())


def test_streaming_with_an_image(vision_server: RunningServer) -> None:
    messages = [user("Describe it.", png_uri("green"))]
    body = {
        "model": VLM,
        "messages": messages,
        "temperature": 0,
        "max_tokens": 8,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    chunks = []
    with vision_server.client() as http:
        with http.stream("POST", "/v1/chat/completions", json=body) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            lines = [line for line in response.iter_lines() if line.startswith("data: ")]
        whole = ok(complete(http, messages))
    assert lines[-1] == "data: [DONE]"
    for line in lines[:-1]:
        chunk = json.loads(line[len("data: ") :])
        validate(chunk, "CreateChatCompletionStreamResponse")
        chunks.append(chunk)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == whole["choices"][0]["message"]["content"]
    finals = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert finals == ["length"]
    assert chunks[-1]["usage"] == whole["usage"]


def test_multi_turn_with_an_image_in_an_earlier_turn(vision_server: RunningServer) -> None:
    conversation = [
        {"role": "system", "content": "You describe pictures."},
        user("What colour is this?", png_uri("red")),
        {"role": "assistant", "content": "It is red."},
        {"role": "user", "content": "Are you sure?"},
    ]
    without_image = [dict(conversation[1], content="What colour is this?") if i == 1 else m for i, m in enumerate(conversation)]
    with vision_server.client() as http:
        data = ok(complete(http, conversation))
        assert data["usage"]["prompt_tokens"] == prompt_tokens(http, without_image) + IMAGE_TOKENS
        other = ok(complete(http, [*conversation[:1], user("What colour is this?", png_uri("blue")), *conversation[2:]]))
        assert other["choices"][0]["message"]["content"] != data["choices"][0]["message"]["content"]


def test_concurrent_image_requests_batch_and_match_sequential_answers(vision_server: RunningServer) -> None:
    requests = [
        [user("Picture?", png_uri("red"))],
        [user("Two pictures of two sizes?", png_uri("blue", (80, 120)), png_uri("green", (300, 200)))],
        [user("No picture at all, only words.")],
        [user("A wide one?", png_uri("white", (112, 56)))],
    ]
    with vision_server.client() as http:
        alone = [ok(complete(http, m, max_tokens=12))["choices"][0]["message"]["content"] for m in requests]

    def one(messages: list[dict[str, Any]]) -> str:
        with vision_server.client() as http:
            return str(ok(complete(http, messages, max_tokens=12))["choices"][0]["message"]["content"])

    with ThreadPoolExecutor(len(requests)) as pool:
        together = list(pool.map(one, requests))
    assert together == alone


def test_sampling_parameters_are_honoured(vision_server: RunningServer) -> None:
    from tokenizers import Tokenizer

    messages = [user("Tell me more.", png_uri("red"))]
    word = Tokenizer.from_str(_tokenizer_json(vision_server)).encode(" the").ids
    assert len(word) == 1
    with vision_server.client() as http:

        def text(**params: Any) -> str:
            return str(ok(complete(http, messages, max_tokens=10, **params))["choices"][0]["message"]["content"])

        assert text(temperature=1.0, seed=7) == text(temperature=1.0, seed=7)
        assert text(temperature=1.0, seed=7) != text(temperature=1.0, seed=8)
        greedy = text()
        # Filters that leave only the most likely token make sampling greedy.
        assert text(temperature=1.0, seed=7, top_k=1) == greedy
        assert text(temperature=1.0, seed=7, top_p=1e-9) == greedy
        assert text(temperature=1.0, seed=7, min_p=1.0) == greedy
        assert text(logit_bias={str(word[0]): 100}) == " the" * 10
        stop = greedy[3:6]
        stopped = ok(complete(http, messages, max_tokens=10, stop=[stop]))["choices"][0]
        assert stopped["finish_reason"] == "stop" and stopped["message"]["content"] == greedy[: greedy.index(stop)]

        def repeats(**params: Any) -> int:
            choice = ok(complete(http, messages, max_tokens=32, logprobs=True, **params))["choices"][0]
            tokens = [t["token"] for t in choice["logprobs"]["content"]]
            return len(tokens) - len(set(tokens))

        assert repeats() > 0  # greedy decoding of the random model comes back to tokens it chose
        assert repeats(presence_penalty=2.0) < repeats()
        assert repeats(frequency_penalty=2.0) < repeats()
        assert repeats(repetition_penalty=2.0) < repeats()
        logprobs = ok(complete(http, messages, max_tokens=3, logprobs=True, top_logprobs=2))["choices"][0]["logprobs"]
        assert len(logprobs["content"]) == 3
        assert all(len(t["top_logprobs"]) == 2 and t["logprob"] <= 0 for t in logprobs["content"])
        assert all(t["logprob"] == pytest.approx(t["top_logprobs"][0]["logprob"]) for t in logprobs["content"])


def test_structured_output_and_tool_calls_with_an_image(vision_server: RunningServer) -> None:
    colour = {"type": "string", "enum": ["red", "green", "blue"]}
    schema = {"type": "object", "properties": {"colour": colour}, "required": ["colour"], "additionalProperties": False}
    messages = [user("Which colour is it?", png_uri("red"))]
    with vision_server.client() as http:
        response_format = {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}}
        data = ok(complete(http, messages, max_tokens=48, response_format=response_format))
        assert json.loads(data["choices"][0]["message"]["content"])["colour"] in colour["enum"]
        tool = {"type": "function", "function": {"name": "report_colour", "parameters": schema}}
        data = ok(
            complete(
                http,
                messages,
                max_tokens=64,
                tools=[tool],
                tool_choice={"type": "function", "function": {"name": "report_colour"}},
            )
        )
        choice = data["choices"][0]
        assert choice["finish_reason"] == "tool_calls"
        (call,) = choice["message"]["tool_calls"]
        assert call["function"]["name"] == "report_colour"
        assert json.loads(call["function"]["arguments"])["colour"] in colour["enum"]


def _tokenizer_json(server: RunningServer) -> str:
    config = json.loads(server.config_path.read_text())
    return (Path(config["defaults"]["model_directory"]) / VLM / "tokenizer.json").read_text()


def test_text_model_given_an_image_names_the_vision_models(vision_server: RunningServer) -> None:
    with vision_server.client() as http:
        response = http.post(
            "/v1/chat/completions",
            json={"model": TEXT, "messages": [user("What is it?", png_uri("red"))], "max_tokens": 2},
        )
        assert response.status_code == 400
        error = response.json()["error"]
        validate(response.json(), "ErrorResponse")
        assert error["param"] == "messages[0].content[1]"
        assert error["code"] == "model_not_vision_capable"
        assert TEXT in error["message"] and VLM in error["message"]
        loaded = [m["id"] for m in http.get("/v1/health").json()["loaded_models"]]
        assert TEXT not in loaded  # refused before anything was loaded for it
        # Images outside user messages have no place in a chat template.
        system_image = [{"role": "system", "content": [{"type": "image_url", "image_url": {"url": png_uri("red")}}]}, user("Hi")]
        response = complete(http, system_image)
        assert response.status_code == 400 and response.json()["error"]["param"] == "messages[0].content[0]"


def test_image_tokens_count_against_the_context(vision_server: RunningServer) -> None:
    with vision_server.client() as http:
        fits = ok(complete(http, [{"role": "user", "content": "Hi"}], model=SHORT, max_tokens=64))
        assert fits["usage"]["prompt_tokens"] + fits["usage"]["completion_tokens"] == 48  # bounded by the context
        response = complete(http, [user("Hi", png_uri("red"), png_uri("blue"))], model=SHORT)
        assert response.status_code == 400
        assert response.json()["error"]["code"] == "context_length_exceeded"


def test_bad_image_is_a_400_naming_the_part(vision_server: RunningServer) -> None:
    with vision_server.client() as http:
        response = complete(http, [user("What is it?", png_uri("red"), "data:image/png;base64,bm90IGFuIGltYWdl")])
        assert response.status_code == 400
        assert response.json()["error"]["param"].startswith("messages[0].content[2]")


def test_closing_a_vision_stream_cancels_it_in_the_worker(vision_server: RunningServer) -> None:
    body = {"model": VLM, "messages": [user("Go on.", png_uri("red"))], "max_tokens": 4000, "stream": True}
    cancelled = vision_server.log().count("cancelled after")
    with vision_server.client() as http:
        with http.stream("POST", "/v1/chat/completions", json=body) as response:
            lines = response.iter_lines()
            next(line for line in lines if '"content"' in line)
        deadline = time.monotonic() + 10
        while vision_server.log().count("cancelled after") == cancelled and time.monotonic() < deadline:
            time.sleep(0.05)
        assert vision_server.log().count("cancelled after") == cancelled + 1
        assert ok(complete(http, [user("Still there?", png_uri("red"))], max_tokens=2))["usage"]["completion_tokens"] == 2


def test_a_small_batch_still_admits_every_request(tmp_path: Path) -> None:
    """mlx-vlm admits prompts only when prefill_batch_size rows are free; with fewer rows than
    that in the whole batch, requests must still start (one as soon as a row frees up)."""
    from mlx_router.engine.types import BatchOptions, GenerationParams, GenerationRequest
    from mlx_router.engine.vlm import VisionScheduler, VLMEngine

    engine = VLMEngine.load_vision(str(make_tiny_vlm(tmp_path / VLM)), context_length=None)
    scheduler = VisionScheduler(engine, BatchOptions(max_batch_size=2, prefill_batch_size=8))
    buffer = io.BytesIO()
    Image.new("RGB", (56, 56), "red").save(buffer, "PNG")
    message = {"role": "user", "content": [{"type": "text", "text": "Hi"}, {"type": "image"}]}
    for i in range(3):
        request = GenerationRequest(f"r{i}", GenerationParams(max_tokens=4), messages=(message,), images=(buffer.getvalue(),))
        assert scheduler.add(request).prompt_tokens > IMAGE_TOKENS
    finished: list[str] = []
    for _ in range(100):
        chunks = scheduler.step()
        assert len(chunks) <= 2  # never more rows decoding than the batch holds
        finished += [c.request_id for c in chunks if c.finish_reason is not None]
        if not scheduler.active:
            break
    assert sorted(finished) == ["r0", "r1", "r2"]
