"""Embeddings as a service: a ``CreateEmbeddingRequest`` in, a ``CreateEmbeddingResponse`` out.

The router checks what it can without the model (the model computes embeddings, counts of
inputs and token ids, ``dimensions`` against the model's declared sizes) so those mistakes cost
no load; the model's worker tokenizes, checks lengths against its context, batches the inputs
into forward passes and returns one normalized float32 vector per input
(:mod:`mlx_router.engine.embed`). Nothing is computed in the router process.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import sys
import time
from array import array
from dataclasses import dataclass

from mlx_router.api.generation import engine_error
from mlx_router.config.settings import Settings
from mlx_router.engine.client import EngineFailure
from mlx_router.engine.types import EmbeddingRequest, EmbeddingResult
from mlx_router.errors import GenerationTimeout, InvalidRequest
from mlx_router.logs import REQUEST_ID
from mlx_router.manager.manager import MLXModelManager
from mlx_router.manager.registry import ModelEntry
from mlx_router.metrics.registry import RouterMetrics
from mlx_router.protocol.common import new_id
from mlx_router.protocol.embeddings import CreateEmbeddingRequest, CreateEmbeddingResponse, Embedding, EmbeddingUsage

__all__ = ["EmbeddingJob", "EmbeddingService", "decode_vector"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EmbeddingJob:
    """A checked request: the model and what its worker gets."""

    entry: ModelEntry
    request: EmbeddingRequest
    encoding_format: str


def decode_vector(raw: bytes) -> list[float]:
    """Little-endian float32 bytes as floats."""
    values = array("f", raw)
    if sys.byteorder == "big":
        values.byteswap()
    return values.tolist()


class EmbeddingService:
    """Runs embedding requests against the manager's models."""

    def __init__(self, manager: MLXModelManager, settings: Settings, metrics: RouterMetrics) -> None:
        self.manager = manager
        self.settings = settings
        self.metrics = metrics

    def prepare(self, req: CreateEmbeddingRequest) -> EmbeddingJob:
        """Validate against server and model settings; nothing is loaded yet."""
        entry = self.manager.resolve(req.model)
        if not entry.supports_embeddings:
            able = sorted(model_id for model_id, e in self.manager.entries.items() if e.supports_embeddings)
            raise InvalidRequest(
                f"Model {entry.id!r} does not compute embeddings (a vision model, or supports_embeddings is false). "
                f"Models that do: {', '.join(able) or 'none'}.",
                param="model",
            )
        defaults = self.settings.defaults
        inputs = req.inputs()
        if len(inputs) > defaults.embedding_max_inputs:
            raise InvalidRequest(
                f"The request has {len(inputs)} inputs; at most {defaults.embedding_max_inputs} are allowed "
                "(defaults.embedding_max_inputs). Split it into several requests.",
                param="input",
            )
        for i, item in enumerate(inputs):
            if not item:
                raise InvalidRequest(f"input[{i}] is empty; every input must hold text or token ids.", param="input")
            if not isinstance(item, str) and len(item) > defaults.embedding_max_input_tokens:
                raise InvalidRequest(
                    f"input[{i}] has {len(item)} tokens; at most {defaults.embedding_max_input_tokens} are allowed "
                    "per input (defaults.embedding_max_input_tokens).",
                    param="input",
                )
        allowed = entry.embedding_dimensions
        shortening = req.dimensions is not None and (
            allowed == "any" or (isinstance(allowed, list) and req.dimensions in allowed)
        )
        if req.dimensions is not None and isinstance(allowed, list) and not shortening and req.dimensions < max(allowed):
            raise InvalidRequest(
                f"Model {entry.id!r} gives embeddings of {', '.join(map(str, sorted(allowed)))} values "
                f"(models.{entry.id}.embedding_dimensions), not {req.dimensions}.",
                param="dimensions",
            )
        request = EmbeddingRequest(
            request_id=_request_id(),
            inputs=tuple(item if isinstance(item, str) else tuple(item) for item in inputs),
            max_input_tokens=defaults.embedding_max_input_tokens,
            batch_tokens=defaults.embedding_batch_tokens,
            pooling=entry.config.embedding_pooling,
            dimensions=req.dimensions,
            shortening=shortening,
        )
        return EmbeddingJob(entry, request, req.encoding_format)

    async def create(self, job: EmbeddingJob) -> CreateEmbeddingResponse:
        """Load the model if needed, compute the vectors, shape the response."""
        started = time.perf_counter()
        timeout = self.settings.defaults.timeout
        self.metrics.embedding(job.entry.id)
        try:
            async with asyncio.timeout(timeout):
                async with self.manager.acquire(job.entry.id) as lm:
                    result: EmbeddingResult = await lm.client.embed(job.request)
        except TimeoutError:
            raise GenerationTimeout(f"The embeddings took longer than {timeout:g} s (defaults.timeout).") from None
        except EngineFailure as exc:
            raise engine_error(exc.error, "input") from None
        self.metrics.prompt_tokens.labels(job.entry.id).inc(result.prompt_tokens)
        logger.info(
            "model=%s embeddings=%d prompt_tokens=%d %.3fs",
            job.entry.id,
            len(result.vectors),
            result.prompt_tokens,
            time.perf_counter() - started,
        )
        if job.encoding_format == "base64":
            data = [
                Embedding.model_construct(object="embedding", embedding=base64.b64encode(raw).decode("ascii"), index=i)
                for i, raw in enumerate(result.vectors)
            ]
        else:
            data = [
                Embedding.model_construct(object="embedding", embedding=decode_vector(raw), index=i)
                for i, raw in enumerate(result.vectors)
            ]
        usage = EmbeddingUsage(prompt_tokens=result.prompt_tokens, total_tokens=result.prompt_tokens)
        return CreateEmbeddingResponse.model_construct(object="list", data=data, model=job.entry.id, usage=usage)


def _request_id() -> str:
    current = REQUEST_ID.get()
    return current if current != "-" else new_id("emb")
