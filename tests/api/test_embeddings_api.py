"""``POST /v1/embeddings`` over the fake engine: shapes, encodings, limits and errors."""

from __future__ import annotations

import base64
import shutil
import struct
from pathlib import Path
from typing import Any

import pytest

from mlx_router.engine.types import EngineError
from tests.fakes import MODEL, FakeEngineScript, assert_error, chat_body
from tests.fixtures.tiny_embedding import make_tiny_bert
from tests.openai_schemas import validate

EMB = "/v1/embeddings"


def floats(item: dict[str, Any]) -> list[float]:
    value = item["embedding"]
    if isinstance(value, str):
        raw = base64.b64decode(value)
        return list(struct.unpack(f"<{len(raw) // 4}f", raw))
    return value  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def mixed_models(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    """A model directory with the tiny chat model and a tiny BERT embedding model."""
    root = tmp_path_factory.mktemp("mixed-models")
    shutil.copytree(tiny_model_dir, root / MODEL)
    make_tiny_bert(root / "tiny-bert")
    return root


async def test_float_response_validates_and_keeps_input_order(harness: Any) -> None:
    response = await harness.client.post(EMB, json={"model": MODEL, "input": ["one", "two words", "and three words"]})
    assert response.status_code == 200, response.text
    body = response.json()
    validate(body, "CreateEmbeddingResponse")
    assert body["object"] == "list" and body["model"] == MODEL
    assert [item["index"] for item in body["data"]] == [0, 1, 2]
    assert [floats(item).index(1.0) for item in body["data"]] == [0, 1, 2]  # the fake's vector i points along axis i
    assert body["usage"] == {"prompt_tokens": 6, "total_tokens": 6}
    [request] = harness.factory.clients[0].embedding_requests
    assert request.inputs == ("one", "two words", "and three words")
    assert request.max_input_tokens == 8192 and request.batch_tokens == 8192
    assert request.pooling is None and request.dimensions is None


async def test_base64_is_little_endian_float32(harness: Any) -> None:
    plain = (await harness.client.post(EMB, json={"model": MODEL, "input": ["a", "b"]})).json()
    coded = (await harness.client.post(EMB, json={"model": MODEL, "input": ["a", "b"], "encoding_format": "base64"})).json()
    assert all(isinstance(item["embedding"], str) for item in coded["data"])
    assert [floats(item) for item in coded["data"]] == [item["embedding"] for item in plain["data"]]
    # The official schema types `embedding` as floats only; decoded, the base64 answer matches it.
    validate({**coded, "data": [{**item, "embedding": floats(item)} for item in coded["data"]]}, "CreateEmbeddingResponse")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("just text", ("just text",)),
        (["a", "b"], ("a", "b")),
        ([5, 6, 7], ((5, 6, 7),)),
        ([[5, 6], [7]], ((5, 6), (7,))),
    ],
)
async def test_every_input_shape(harness: Any, value: Any, expected: tuple[Any, ...]) -> None:
    response = await harness.client.post(EMB, json={"model": MODEL, "input": value})
    assert response.status_code == 200, response.text
    assert len(response.json()["data"]) == len(expected)
    assert harness.factory.clients[0].embedding_requests[-1].inputs == expected


@pytest.mark.parametrize(
    ("body", "param", "fragment"),
    [
        ({"input": []}, "input", ""),
        ({"input": [[]]}, "input", ""),
        ({"input": ""}, "input", "input[0] is empty"),
        ({"input": ["ok", ""]}, "input", "input[1] is empty"),
        ({"input": ["text", 5]}, "input", ""),
        ({"input": [1, -2]}, "input", ""),
        ({"input": "x", "encoding_format": "binary"}, "encoding_format", ""),
        ({"input": "x", "dimensions": 0}, "dimensions", ""),
        ({"input": "x", "truncate": True}, "truncate", ""),
        ({}, "input", ""),
    ],
)
async def test_bad_requests_are_400_and_load_nothing(harness: Any, body: dict[str, Any], param: str, fragment: str) -> None:
    response = await harness.client.post(EMB, json={"model": MODEL, **body})
    assert_error(response, 400, param=param, error_type="invalid_request_error", message_contains=[fragment] if fragment else [])
    assert harness.factory.calls == 0


async def test_limits_are_configurable_400s(make_app: Any) -> None:
    app = await make_app(defaults={"embedding_max_inputs": 3, "embedding_max_input_tokens": 4})
    response = await app.client.post(EMB, json={"model": MODEL, "input": ["a", "b", "c", "d"]})
    assert_error(response, 400, param="input", message_contains=["4 inputs", "defaults.embedding_max_inputs"])
    response = await app.client.post(EMB, json={"model": MODEL, "input": [[1, 2, 3, 4, 5]]})
    assert_error(response, 400, param="input", message_contains=["5 tokens", "defaults.embedding_max_input_tokens"])
    assert app.factory.calls == 0
    ok = await app.client.post(EMB, json={"model": MODEL, "input": [[1, 2, 3, 4], [1], [2]]})
    assert ok.status_code == 200, ok.text
    assert app.factory.clients[0].embedding_requests[0].max_input_tokens == 4


async def test_worker_refusal_is_400_naming_the_input(make_app: Any) -> None:
    error = EngineError("invalid_request", "input[0] has 900 tokens; this model embeds at most 512", param="input")
    app = await make_app(script=FakeEngineScript(admission_error=error))
    response = await app.client.post(EMB, json={"model": MODEL, "input": "long"})
    assert_error(response, 400, param="input", message_contains=["900 tokens"])


async def test_dimensions_follow_the_declared_sizes(make_app: Any) -> None:
    app = await make_app(models={MODEL: {"embedding_dimensions": [4, 8]}})
    response = await app.client.post(EMB, json={"model": MODEL, "input": "x", "dimensions": 4})
    assert response.status_code == 200, response.text
    assert len(response.json()["data"][0]["embedding"]) == 4
    request = app.factory.clients[0].embedding_requests[-1]
    assert (request.dimensions, request.shortening) == (4, True)
    response = await app.client.post(EMB, json={"model": MODEL, "input": "x", "dimensions": 5})
    assert_error(response, 400, param="dimensions", message_contains=["4, 8", "embedding_dimensions"])


async def test_dimensions_without_declared_sizes_may_only_be_the_full_size(harness: Any) -> None:
    """The router cannot know the full size before loading: the worker checks it (shortening off)."""
    response = await harness.client.post(EMB, json={"model": MODEL, "input": "x", "dimensions": 8})
    assert response.status_code == 200, response.text
    request = harness.factory.clients[0].embedding_requests[-1]
    assert (request.dimensions, request.shortening) == (8, False)


async def test_any_dimensions_and_pooling_from_the_model_config(make_app: Any) -> None:
    app = await make_app(models={MODEL: {"embedding_dimensions": "any", "embedding_pooling": "last"}})
    response = await app.client.post(EMB, json={"model": MODEL, "input": "x", "dimensions": 3})
    assert response.status_code == 200, response.text
    request = app.factory.clients[0].embedding_requests[-1]
    assert (request.dimensions, request.shortening, request.pooling) == (3, True, "last")


async def test_model_without_embeddings_is_400(make_app: Any) -> None:
    app = await make_app(models={MODEL: {"supports_embeddings": False}})
    response = await app.client.post(EMB, json={"model": MODEL, "input": "x"})
    assert_error(response, 400, param="model", message_contains=["does not compute embeddings"])
    assert app.factory.calls == 0


async def test_unknown_model_is_404(harness: Any) -> None:
    response = await harness.client.post(EMB, json={"model": "nope", "input": "x"})
    assert_error(response, 404, param="model")


async def test_embedding_model_is_listed_and_refuses_chat(make_app: Any, mixed_models: Path) -> None:
    app = await make_app(defaults={"model_directory": str(mixed_models)})
    cards = {card["id"]: card for card in (await app.client.get("/v1/models")).json()["data"]}
    for card in cards.values():
        validate(card, "Model")
    assert cards["tiny-bert"]["capabilities"] == ["embeddings"]
    assert cards[MODEL]["capabilities"] == ["chat", "completions", "embeddings"]
    for path, body in (("/v1/chat/completions", chat_body(model="tiny-bert")), ("/v1/completions", {"model": "tiny-bert", "prompt": "x"})):
        assert_error(await app.client.post(path, json=body), 400, param="model", message_contains=["embedding model"])
    assert app.factory.calls == 0
    response = await app.client.post(EMB, json={"model": "tiny-bert", "input": "x"})
    assert response.status_code == 200, response.text
    assert app.factory.clients[0].options.embedding_model is True
    assert app.factory.clients[0].options.batch.prefix_cache_bytes == 0


async def test_timeout_is_504_and_cancels(make_app: Any) -> None:
    app = await make_app(script=FakeEngineScript(admission_delay=5.0), defaults={"timeout": 0.2})
    response = await app.client.post(EMB, json={"model": MODEL, "input": "x"})
    assert_error(response, 504, code="timeout")
    assert len(app.factory.clients[0].cancellations) == 1


async def test_needs_the_api_key_and_is_counted(make_app: Any) -> None:
    app = await make_app(server={"api_key": "embed-key-0123456789"})
    assert_error(await app.client.post(EMB, json={"model": MODEL, "input": "x"}), 401, code="invalid_api_key")
    headers = {"Authorization": "Bearer embed-key-0123456789"}
    assert (await app.client.post(EMB, json={"model": MODEL, "input": "x"}, headers=headers)).status_code == 200
    metrics = (await app.client.get("/metrics", headers=headers)).text
    assert f'mlx_router_embedding_requests_total{{model="{MODEL}"}} 1.0' in metrics
    assert 'route="/v1/embeddings",status="200"' in metrics


async def test_openai_model_names_reach_a_local_model_through_aliases(make_app: Any, mixed_models: Path) -> None:
    """Clients that hard-code OpenAI's embedding model names work through ``aliases``."""
    app = await make_app(defaults={"model_directory": str(mixed_models)}, aliases={"text-embedding-*": "tiny-bert"})
    response = await app.client.post(EMB, json={"model": "text-embedding-3-small", "input": "x"})
    assert response.status_code == 200, response.text
    assert response.json()["model"] == "tiny-bert"
    assert app.factory.clients[0].options.model_id == "tiny-bert"


async def test_reload_applies_embedding_limits_and_model_keys(make_app: Any, tmp_path: Path, tiny_models_root: Path) -> None:
    """``defaults.embedding_*`` and the model's embedding keys apply from the next request after a
    reload, without reloading the model."""
    import json

    from mlx_router.config.settings import load_settings

    path = tmp_path / "config.json"

    def write(defaults: dict[str, Any], models: dict[str, Any]) -> None:
        base = {"model_directory": str(tiny_models_root), "embedded_model": False}
        path.write_text(json.dumps({"defaults": {**base, **defaults}, "server": {"log_file": None}, "models": models}))

    write({}, {})
    app = await make_app(reload_settings=lambda: load_settings(path, environ={}))
    assert (await app.client.post(EMB, json={"model": MODEL, "input": ["a", "b"]})).status_code == 200
    write({"embedding_max_inputs": 1}, {MODEL: {"embedding_pooling": "last"}})
    reloaded = await app.client.post("/v1/admin/reload")
    assert reloaded.status_code == 200, reloaded.text
    assert_error(await app.client.post(EMB, json={"model": MODEL, "input": ["a", "b"]}), 400, param="input")
    assert (await app.client.post(EMB, json={"model": MODEL, "input": "a"})).status_code == 200
    assert app.factory.clients[-1].embedding_requests[-1].pooling == "last"


async def test_drain_waits_for_a_running_embedding_then_ends_it(make_app: Any) -> None:
    """A drain counts embedding requests as running jobs: it waits for them, and at its deadline
    ends the rest with 503 shutting_down (the worker's request is cancelled)."""
    import asyncio

    app = await make_app(script=FakeEngineScript(admission_delay=0.3))
    runner = app.app.state.runner
    quick = asyncio.ensure_future(app.client.post(EMB, json={"model": MODEL, "input": "x"}))
    await asyncio.sleep(0.1)
    assert runner.running == 1
    await runner.drain(5.0)  # waits for it
    assert (await quick).status_code == 200
    app.factory.script.admission_delay = 5.0
    runner.drain_state.draining = False
    slow = asyncio.ensure_future(app.client.post(EMB, json={"model": MODEL, "input": "x"}))
    await asyncio.sleep(0.1)
    await runner.drain(0.2)
    assert_error(await slow, 503, code="shutting_down")
    assert len(app.factory.clients[0].cancellations) == 1


async def test_total_tokens_of_a_request_are_bounded(make_app: Any) -> None:
    app = await make_app(defaults={"embedding_max_request_tokens": 5})
    response = await app.client.post(EMB, json={"model": MODEL, "input": [[1, 2, 3], [4, 5, 6]]})
    assert_error(response, 400, param="input", message_contains=["6 tokens together", "defaults.embedding_max_request_tokens"])
    assert app.factory.calls == 0
    assert (await app.client.post(EMB, json={"model": MODEL, "input": "many words here"})).status_code == 200
    assert app.factory.clients[0].embedding_requests[0].max_total_tokens == 5  # texts are counted in the worker


def test_every_parameter_of_the_official_request_is_known() -> None:
    from mlx_router.protocol.embeddings import CreateEmbeddingRequest
    from tests.openai_schemas import schemas

    assert set(schemas()["CreateEmbeddingRequest"]["properties"]) == set(CreateEmbeddingRequest.model_fields)


async def test_every_input_form_of_the_official_request_is_accepted(harness: Any) -> None:
    """Each ``oneOf`` branch of the spec's ``input`` (string, strings, token ids, lists of them),
    with every other parameter set."""
    from tests.openai_schemas import schemas

    examples = {"string": "This is a test.", "strings": ["a", "b"], "integer": [1, 2, 3], "array": [[1, 2], [3]]}
    for branch in schemas()["CreateEmbeddingRequest"]["properties"]["input"]["oneOf"]:
        items = branch.get("items", {}).get("type")
        value = examples["string"] if branch["type"] == "string" else examples["strings" if items == "string" else items]
        body = {"model": MODEL, "input": value, "encoding_format": "base64", "dimensions": 8, "user": "someone"}
        response = await harness.client.post(EMB, json=body)
        assert response.status_code == 200, (branch, response.text)
