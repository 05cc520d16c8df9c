"""``chunk_json`` writes a chat chunk byte for byte as pydantic's ``model_dump_json`` does."""

from __future__ import annotations

import random

import pytest

from mlx_router.protocol.chat import ChatCompletionChunk, ChunkChoice, Delta, chunk_json
from mlx_router.protocol.common import usage

ALPHABET = [chr(i) for i in range(0x300)] + ["😀", "\u2028", "\u2029", "\ufeff", "\U0010ffff", "\ue000", "\\", '"']


def _chunk(*choices: ChunkChoice, **fields: object) -> ChatCompletionChunk:
    return ChatCompletionChunk(id="chatcmpl-1", created=2, model="tiny-llama", choices=list(choices), **fields)


def test_content_chunks_match_pydantic() -> None:
    rng = random.Random(0)
    for i in range(3000):
        text = "".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 10)))
        chunk = _chunk(ChunkChoice(index=i % 3, delta=Delta(content=text)), system_fingerprint="fp_x" if i % 2 else None)
        assert chunk_json(chunk) == chunk.model_dump_json(), repr(text)


@pytest.mark.parametrize(
    "chunk",
    [
        _chunk(ChunkChoice(delta=Delta(role="assistant", content=""))),
        _chunk(ChunkChoice(delta=Delta(content="a", reasoning_content="b"))),
        _chunk(ChunkChoice(delta=Delta(reasoning_content="b"))),
        _chunk(ChunkChoice(delta=Delta(), finish_reason="stop")),
        _chunk(ChunkChoice(delta=Delta(content="a"), finish_reason="length")),
        _chunk(ChunkChoice(delta=Delta(content="a")), ChunkChoice(index=1, delta=Delta(content="b"))),
        _chunk(usage=usage(3, 4, 0)),
        _chunk(ChunkChoice(delta=Delta(content="a")), usage=usage(3, 4, 0)),
        _chunk(ChunkChoice(delta=Delta(content="a")), service_tier="default"),
    ],
)
def test_other_chunks_match_pydantic(chunk: ChatCompletionChunk) -> None:
    assert chunk_json(chunk) == chunk.model_dump_json()
