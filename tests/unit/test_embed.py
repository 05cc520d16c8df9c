"""Embedding maths and batching in the worker (``mlx_router.engine.embed``), on tiny models in process."""

from __future__ import annotations

from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from mlx_router.engine.embed import (
    EmbeddingQueue,
    EmbeddingRejected,
    EncoderEmbedder,
    LMEmbedder,
    normalize,
    pool,
    shorten,
    st_pooling,
)
from mlx_router.engine.types import EmbeddingRequest, EmbeddingResult, EngineError
from tests.fixtures.tiny_embedding import make_tiny_bert, make_tiny_qwen3_embedding

TEXTS = (
    "The cat slept, the dog barked, and the goose complained about everything.",
    "hello",
    "Once upon a time there was a little house at the edge of a forest.",
    "Yes. No. Maybe.",
)

# ------------------------------------------------------------------------------------- maths

HIDDEN = mx.array(
    [
        [[1.0, 0.0], [3.0, 2.0], [9.0, 9.0]],  # two real tokens, one pad
        [[0.0, 4.0], [2.0, 2.0], [4.0, 0.0]],  # three real tokens
    ]
)
LENGTHS = mx.array([2, 3])


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("mean", [[2.0, 1.0], [2.0, 2.0]]),
        ("last", [[3.0, 2.0], [4.0, 0.0]]),
        ("cls", [[1.0, 0.0], [0.0, 4.0]]),
    ],
)
def test_pooling_ignores_padding(mode: str, expected: list[list[float]]) -> None:
    assert pool(HIDDEN, LENGTHS, mode).tolist() == expected  # type: ignore[arg-type]


def test_normalize_gives_unit_rows_and_keeps_zero_rows() -> None:
    rows = normalize(mx.array([[3.0, 4.0], [0.0, 0.0]])).tolist()
    assert np.allclose(rows, [[0.6, 0.8], [0.0, 0.0]])


def test_shorten_cuts_then_renormalizes() -> None:
    vector = normalize(mx.array([[3.0, 4.0, 12.0]]))  # length 13 before normalizing
    assert np.allclose(shorten(vector, 2).tolist(), [[0.6, 0.8]])
    assert np.allclose(shorten(vector, None).tolist(), [[3 / 13, 4 / 13, 12 / 13]])


def test_sentence_transformers_pooling_file(tmp_path: Path) -> None:
    assert st_pooling(tmp_path) is None
    make_tiny_bert(tmp_path / "cls", st_pooling="cls")
    make_tiny_bert(tmp_path / "mean", st_pooling="mean")
    assert st_pooling(tmp_path / "cls") == "cls"
    assert st_pooling(tmp_path / "mean") == "mean"


# ------------------------------------------------------------------------------------- models


@pytest.fixture(scope="module")
def lm(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> LMEmbedder:
    from mlx_router.engine.lm import LMEngine

    engine = LMEngine.load(str(tiny_model_dir), context_length=None, chat_template=None)
    return LMEmbedder.for_engine(engine, str(tiny_model_dir))


@pytest.fixture(scope="module")
def bert(tmp_path_factory: pytest.TempPathFactory) -> EncoderEmbedder:
    path = make_tiny_bert(tmp_path_factory.mktemp("bert") / "tiny-bert")
    return EncoderEmbedder.load(str(path), context_length=None)


def run(embedder: object, *requests: EmbeddingRequest) -> dict[str, EmbeddingResult | EngineError]:
    queue = EmbeddingQueue(embedder)  # type: ignore[arg-type]
    for request in requests:
        queue.add(request)
    out: dict[str, EmbeddingResult | EngineError] = {}
    passes = 0
    while queue.active:
        passes += 1
        for item in queue.step():
            out[item.request_id or ""] = item
    out["passes"] = passes  # type: ignore[assignment]
    return out


def vectors(result: object) -> np.ndarray:
    assert isinstance(result, EmbeddingResult), result
    return np.stack([np.frombuffer(raw, dtype="<f4") for raw in result.vectors])


def request(inputs: tuple[object, ...], rid: str = "r", batch_tokens: int = 8192, **kwargs: object) -> EmbeddingRequest:
    return EmbeddingRequest(rid, inputs, max_input_tokens=8192, batch_tokens=batch_tokens, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("pooling", [None, "mean", "last"])
def test_lm_batch_equals_each_input_alone(lm: LMEmbedder, pooling: str | None) -> None:
    """Right padding under a causal mask changes nothing: a batched input's vector is its own."""
    together = vectors(run(lm, request(TEXTS, pooling=pooling))["r"])
    alone = np.stack([vectors(run(lm, request((text,), pooling=pooling))["r"])[0] for text in TEXTS])
    assert together.shape == (len(TEXTS), 64)
    assert np.allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-5)
    assert np.allclose(together, alone, atol=1e-5)
    assert len({tuple(np.round(row, 4)) for row in together}) == len(TEXTS)


def test_lm_pooling_modes_differ_and_mean_is_the_default(lm: LMEmbedder) -> None:
    default = vectors(run(lm, request(TEXTS[:2]))["r"])
    mean = vectors(run(lm, request(TEXTS[:2], pooling="mean"))["r"])
    last = vectors(run(lm, request(TEXTS[:2], pooling="last"))["r"])
    assert np.allclose(default, mean)
    assert not np.allclose(mean, last, atol=1e-3)


def test_lm_last_token_is_the_final_hidden_state(lm: LMEmbedder) -> None:
    """Pooling reads the model's own final hidden states (after its last norm)."""
    ids = lm.tokenize([TEXTS[1]])[0]
    hidden = lm.engine.model.model(mx.array([ids]))[0, -1].astype(mx.float32)
    expected = np.array(normalize(hidden[None]).tolist()[0])
    got = vectors(run(lm, request((TEXTS[1],), pooling="last"))["r"])[0]
    assert np.allclose(got, expected, atol=1e-5)


def test_token_ids_embed_like_their_text(lm: LMEmbedder) -> None:
    ids = tuple(lm.tokenize([TEXTS[0]])[0])
    result = run(lm, request((TEXTS[0], ids)))["r"]
    both = vectors(result)
    assert np.allclose(both[0], both[1], atol=1e-6)
    assert isinstance(result, EmbeddingResult) and result.prompt_tokens == 2 * len(ids)


def test_small_batch_budget_splits_into_passes_with_the_same_vectors(lm: LMEmbedder) -> None:
    """TEXTS have 26, 3, 29 and 12 tokens: a pass keeps rows at least half as long as its longest
    (29 and 26; then 12; then 3); with a 16-token budget no two rows fit."""
    whole = run(lm, request(TEXTS))
    split = run(lm, request(TEXTS, batch_tokens=16))
    assert [len(row) for row in lm.tokenize(list(TEXTS))] == [26, 3, 29, 12]
    assert whole["passes"] == 3 and split["passes"] == len(TEXTS)
    assert np.allclose(vectors(whole["r"]), vectors(split["r"]), atol=1e-5)


def test_requests_share_a_pass_and_keep_their_own_dimensions(lm: LMEmbedder) -> None:
    out = run(lm, request(TEXTS[:1], "a"), request(TEXTS[2:3], "b", dimensions=16, shortening=True))
    assert out["passes"] == 1
    full, short = vectors(out["a"]), vectors(out["b"])
    assert full.shape == (1, 64) and short.shape == (1, 16)
    assert np.allclose(np.linalg.norm(short, axis=1), 1.0, atol=1e-5)
    alone = vectors(run(lm, request(TEXTS[2:3]))["r"])
    expected = alone[:, :16] / np.linalg.norm(alone[:, :16], axis=1, keepdims=True)
    assert np.allclose(short, expected, atol=1e-5)


def test_bert_batch_equals_each_input_alone_with_attention_mask(bert: EncoderEmbedder) -> None:
    """A bidirectional model sees the padding unless masked: the mask keeps vectors exact."""
    together = vectors(run(bert, request(TEXTS))["r"])
    alone = np.stack([vectors(run(bert, request((text,)))["r"])[0] for text in TEXTS])
    assert together.shape == (len(TEXTS), 32)
    assert np.allclose(together, alone, atol=1e-5)


def test_bert_vector_is_mlx_embeddings_own(bert: EncoderEmbedder) -> None:
    ids = bert.tokenize([TEXTS[3]])[0]
    own = bert.model(mx.array([ids]), attention_mask=mx.ones((1, len(ids)))).text_embeds[0]
    assert np.allclose(vectors(run(bert, request((TEXTS[3],)))["r"])[0], np.array(own.tolist()), atol=1e-5)
    assert ids[0] == bert.tokenizer._tokenizer.cls_token_id  # special tokens are added to texts


def test_qwen3_embedding_loads_with_last_token_pooling(tmp_path: Path) -> None:
    path = make_tiny_qwen3_embedding(tmp_path / "tiny-qwen3-embedding")
    embedder = EncoderEmbedder.load(str(path), context_length=None)
    assert (embedder.model_type, embedder.default_pooling, embedder.dimensions) == ("qwen3", "last", 64)
    together = vectors(run(embedder, request(TEXTS))["r"])
    alone = np.stack([vectors(run(embedder, request((text,)))["r"])[0] for text in TEXTS])
    assert np.allclose(together, alone, atol=1e-5)


@pytest.mark.parametrize(
    ("inputs", "kwargs", "param", "fragment"),
    [
        (("x" * 3000,), {}, "input", "input[0] has"),
        (((1, 2, 99999),), {}, "input", "outside this model's vocabulary"),
        (("a",), {"dimensions": 65}, "dimensions", "have 64 values"),
        (("a",), {"dimensions": 16}, "dimensions", "not declared to allow shorter ones"),
    ],
)
def test_refusals_name_the_parameter(
    lm: LMEmbedder, inputs: tuple[object, ...], kwargs: dict[str, object], param: str, fragment: str
) -> None:
    queue = EmbeddingQueue(lm)
    with pytest.raises(EmbeddingRejected) as caught:
        queue.add(request(inputs, **kwargs))
    assert caught.value.param == param and fragment in caught.value.message
    assert not queue.active


def test_input_limit_is_the_smaller_of_setting_and_context(bert: EncoderEmbedder) -> None:
    queue = EmbeddingQueue(bert)
    long = " ".join(["goose"] * 200)  # more than the tiny BERT's 128 positions
    with pytest.raises(EmbeddingRejected, match="at most 128 tokens"):
        queue.add(request((long,)))
    with pytest.raises(EmbeddingRejected, match="at most 3 tokens"):
        queue.add(EmbeddingRequest("r", ("one two three four",), max_input_tokens=3, batch_tokens=64))


def test_cancel_drops_a_queued_request(lm: LMEmbedder) -> None:
    queue = EmbeddingQueue(lm)
    queue.add(request(TEXTS, "a", batch_tokens=16))
    queue.add(request(TEXTS[:1], "b"))
    queue.step()
    assert queue.cancel("a") and not queue.cancel("a")
    results = queue.step()
    assert [r.request_id for r in results] == ["b"] and not queue.active


@pytest.mark.parametrize("model_type", ["qwen2", "qwen3", "gemma", "olmo2", "starcoder2"])
def test_other_architectures_pool_their_hidden_states(tmp_path: Path, model_type: str) -> None:
    """Any mlx-lm text model embeds: its body's final hidden states, batched exactly."""
    from mlx_router.engine.lm import LMEngine
    from mlx_router.fabricate import make_tiny_llm

    path = make_tiny_llm(tmp_path / model_type, model_type=model_type)
    embedder = LMEmbedder.for_engine(LMEngine.load(str(path), context_length=None, chat_template=None), str(path))
    for pooling in ("mean", "last"):
        together = vectors(run(embedder, request(TEXTS, pooling=pooling))["r"])
        alone = np.stack([vectors(run(embedder, request((text,), pooling=pooling))["r"])[0] for text in TEXTS])
        assert together.shape == (len(TEXTS), 64)
        assert np.allclose(together, alone, atol=1e-5)


def test_total_tokens_of_a_request_are_bounded(lm: LMEmbedder) -> None:
    queue = EmbeddingQueue(lm)
    with pytest.raises(EmbeddingRejected, match="58 tokens together; at most 40"):
        queue.add(EmbeddingRequest("r", TEXTS[:3], max_input_tokens=8192, batch_tokens=8192, max_total_tokens=40))
    assert not queue.active
