"""``/v1/embeddings`` on the real server with real MLX: the official ``openai`` SDK and LangChain
against a tiny chat model (pooled hidden states), a tiny BERT and a Qwen3-Embedding look-alike
(both through mlx-embeddings)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from transformers import AutoTokenizer

from mlx_router.fabricate import make_tiny_llm
from tests.fixtures.tiny_embedding import make_tiny_bert, make_tiny_qwen3_embedding
from tests.integration.conftest import NO_SPECIAL, RunningServer, start_server
from tests.openai_schemas import validate

pytestmark = pytest.mark.integration

TEXTS = [
    "The cat slept, the dog barked, and the goose complained about everything.",
    "hello",
    "Once upon a time there was a little house at the edge of a forest.",
]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("embedding-models")
    make_tiny_llm(root / "tiny-llama")
    make_tiny_bert(root / "tiny-bert", st_pooling="cls")
    make_tiny_qwen3_embedding(root / "tiny-qwen3-embedding")
    return root


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, models: Path) -> Iterator[RunningServer]:
    running = start_server(
        tmp_path_factory.mktemp("embedding-server"),
        {
            "defaults": {"model_directory": str(models), "embedded_model": False, "cache_size": 4, "max_tokens": 64},
            "models": {"tiny-llama-last": {"path": "tiny-llama", "embedding_pooling": "last", "embedding_dimensions": [16, 32]}},
        },
    )
    yield running
    running.stop()


@pytest.fixture(scope="module")
def client(server: RunningServer) -> Iterator[object]:
    with server.openai() as opened:
        yield opened


def as_array(result: object) -> np.ndarray:
    return np.array([item.embedding for item in result.data], dtype=np.float32)  # type: ignore[attr-defined]


@pytest.mark.parametrize("model", ["tiny-llama", "tiny-bert", "tiny-qwen3-embedding"])
def test_openai_sdk_float_and_base64_agree_and_batch_equals_single(client: Any, models: Path, model: str) -> None:
    coded = client.embeddings.create(model=model, input=TEXTS)  # the SDK asks for base64 and decodes it
    plain = client.embeddings.create(model=model, input=TEXTS, encoding_format="float")
    assert np.array_equal(as_array(coded), as_array(plain))
    vectors = as_array(plain)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    alone = np.stack([as_array(client.embeddings.create(model=model, input=text, encoding_format="float"))[0] for text in TEXTS])
    assert np.allclose(vectors, alone, atol=1e-5)
    folder = models / ("tiny-llama" if model.startswith("tiny-llama") else model)
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    assert plain.usage.prompt_tokens == sum(len(tokenizer(text)["input_ids"]) for text in TEXTS)
    assert plain.usage.total_tokens == plain.usage.prompt_tokens


def test_raw_response_validates_against_the_official_schema(server: RunningServer) -> None:
    with server.client() as http:
        response = http.post("/v1/embeddings", json={"model": "tiny-bert", "input": [[2, 40, 41, 3], [2, 3]]})
    assert response.status_code == 200, response.text
    body = response.json()
    validate(body, "CreateEmbeddingResponse")
    assert [len(item["embedding"]) for item in body["data"]] == [32, 32]
    assert body["usage"] == {"prompt_tokens": 6, "total_tokens": 6}


def test_dimensions_cut_and_renormalize(client: Any) -> None:
    full = as_array(client.embeddings.create(model="tiny-llama-last", input=TEXTS, encoding_format="float"))
    short = as_array(client.embeddings.create(model="tiny-llama-last", input=TEXTS, dimensions=16))
    assert short.shape == (3, 16)
    assert np.allclose(short, full[:, :16] / np.linalg.norm(full[:, :16], axis=1, keepdims=True), atol=1e-5)
    # Qwen3-Embedding is known to allow any size.
    qwen = as_array(client.embeddings.create(model="tiny-qwen3-embedding", input=TEXTS[:1], dimensions=40))
    assert qwen.shape == (1, 40) and np.isclose(np.linalg.norm(qwen), 1.0, atol=1e-5)
    # The same weights pooled two ways give different vectors.
    mean = as_array(client.embeddings.create(model="tiny-llama", input=TEXTS, encoding_format="float"))
    assert not np.allclose(mean, full, atol=1e-3)


def test_models_list_capabilities(client: Any) -> None:
    cards = {card.id: card for card in client.models.list().data}
    assert cards["tiny-bert"].capabilities == ["embeddings"]  # type: ignore[attr-defined]
    assert cards["tiny-qwen3-embedding"].capabilities == ["embeddings"]  # type: ignore[attr-defined]
    assert cards["tiny-llama"].capabilities == ["chat", "completions", "embeddings"]  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("body", "param", "fragment"),
    [
        ({"model": "tiny-bert", "input": "x", "dimensions": 8}, "dimensions", "not declared to allow shorter ones"),
        ({"model": "tiny-bert", "input": " ".join(["goose"] * 200)}, "input", "at most 128 tokens"),
        ({"model": "tiny-llama", "input": [[1, 2, 100000]]}, "input", "check_embedding_ctx_length=False"),
        ({"model": "tiny-llama-last", "input": "x", "dimensions": 20}, "dimensions", "16, 32"),
    ],
)
def test_refusals_are_400s(server: RunningServer, body: dict[str, object], param: str, fragment: str) -> None:
    with server.client() as http:
        response = http.post("/v1/embeddings", json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and fragment in error["message"], error


def test_chat_to_an_embedding_model_is_400(server: RunningServer) -> None:
    with server.client() as http:
        response = http.post("/v1/chat/completions", json={"model": "tiny-bert", "messages": [{"role": "user", "content": "hi"}]})
    assert response.status_code == 400 and "embedding model" in response.json()["error"]["message"]
    with server.client() as http:  # nor can its prompt be counted: it has no chat template
        counted = http.post("/v1/messages/count_tokens", json={"model": "tiny-bert", "messages": [{"role": "user", "content": "hi"}]})
    assert counted.status_code == 400 and counted.json()["error"]["type"] == "invalid_request_error"
    assert "embedding model" in counted.json()["error"]["message"]


def test_embeddings_beside_a_running_generation(client: Any) -> None:
    """An embedding request for a model that is generating is served between its decode steps,
    and leaves the generation untouched."""
    chat = {"model": "tiny-llama", "messages": [{"role": "user", "content": "Tell me a story."}], "max_tokens": 48,
            "temperature": 0, "logit_bias": NO_SPECIAL}
    alone = client.chat.completions.create(**chat).choices[0].message.content  # type: ignore[arg-type]
    texts: list[str] = []
    thread = threading.Thread(target=lambda: texts.append(client.chat.completions.create(**chat).choices[0].message.content or ""))  # type: ignore[arg-type]
    thread.start()
    for _ in range(5):
        assert len(client.embeddings.create(model="tiny-llama", input=TEXTS).data) == 3
    thread.join(60)
    assert texts == [alone]


def test_langchain_openai_embeddings(server: RunningServer) -> None:
    """LangChain's OpenAIEmbeddings, with check_embedding_ctx_length=False so that it sends text
    (by default it sends tiktoken ids of OpenAI's tokenizer, meaningless to another model)."""
    from langchain_openai import OpenAIEmbeddings

    embeddings = OpenAIEmbeddings(
        model="tiny-bert", base_url=f"{server.base_url}/v1", api_key="unused", check_embedding_ctx_length=False  # type: ignore[arg-type]
    )
    documents = embeddings.embed_documents(TEXTS)
    query = embeddings.embed_query(TEXTS[1])
    assert len(documents) == 3 and all(len(vector) == 32 for vector in documents)
    assert np.allclose(query, documents[1], atol=1e-6)


def test_unknown_model_is_404(server: RunningServer) -> None:
    response = httpx.post(f"{server.base_url}/v1/embeddings", json={"model": "text-embedding-3-small", "input": "x"})
    assert response.status_code == 404 and response.json()["error"]["param"] == "model"


def test_smollm2_mean_pooling_finds_the_paraphrase(smol_server: RunningServer) -> None:
    """Real weights, pooled: with the default mean pooling the embedded SmolLM2 puts a paraphrase
    nearest to its sentence, well above sentences on other topics (measured 0.96 against at most
    0.75; last-token pooling gave 0.91 against 0.85)."""
    texts = [
        "The capital of France is Paris.",
        "Paris is the capital city of France.",
        "My cat likes to sleep on the sofa.",
        "Quarterly revenue rose by eight percent.",
    ]
    with smol_server.openai() as smol:
        result = smol.embeddings.create(model="SmolLM2-135M-Instruct", input=texts)
    vectors = as_array(result)
    similarity = vectors @ vectors.T
    assert similarity[0].argsort()[-2] == 1 and similarity[1].argsort()[-2] == 0
    assert similarity[0, 1] > max(similarity[0, 2:].max(), similarity[1, 2:].max()) + 0.1
