"""``POST /v1/embeddings``: a ``CreateEmbeddingRequest`` in, a ``CreateEmbeddingResponse`` out.

Built on the shared :class:`~mlx_router.api.serving.runner.Runner` for what every endpoint
shares (the manager, the settings as reloaded, metrics, request counts, the drain state and the
mapping of engine errors); an embedding request generates nothing, so it has no choices or chunks:
one :class:`~mlx_router.engine.types.EmbeddingRequest` goes to the model's worker, which answers
with every vector at once.

The router checks what it can without the model (the model computes embeddings, the number of
inputs and of token ids, ``dimensions`` against the model's declared sizes), so those mistakes
cost no load; the worker tokenizes, checks lengths against its context, batches the inputs into
forward passes and returns one normalized float32 vector per input (:mod:`mlx_router.engine.embed`).
Nothing is computed in the router process.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import sys
import time
from array import array
from dataclasses import dataclass

from mlx_router.api.serving.runner import Runner, engine_error, request_ids
from mlx_router.engine.client import EngineFailure
from mlx_router.engine.types import EmbeddingRequest, EmbeddingResult
from mlx_router.errors import GenerationTimeout, InternalError, InvalidRequest, RouterError
from mlx_router.manager.registry import ModelEntry
from mlx_router.protocol.embeddings import CreateEmbeddingRequest, CreateEmbeddingResponse, Embedding, EmbeddingUsage

__all__ = ["EmbeddingJob", "create_embeddings", "decode_vector", "prepare_embeddings"]

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


def prepare_embeddings(runner: Runner, req: CreateEmbeddingRequest) -> EmbeddingJob:
    """Validate against server and model settings; nothing is loaded yet."""
    manager = runner.manager
    entry = manager.resolve(req.model)
    if not entry.supports_embeddings:
        able = sorted(model_id for model_id, e in manager.entries.items() if e.supports_embeddings)
        raise InvalidRequest(
            f"Model {entry.id!r} does not compute embeddings (a vision model, or supports_embeddings is false). "
            f"Models that do: {', '.join(able) or 'none'}.",
            param="model",
        )
    defaults = runner.settings.defaults
    inputs = req.inputs()
    if len(inputs) > defaults.embedding_max_inputs:
        raise InvalidRequest(
            f"The request has {len(inputs)} inputs; at most {defaults.embedding_max_inputs} are allowed "
            "(defaults.embedding_max_inputs). Split it into several requests.",
            param="input",
        )
    ids = sum(len(item) for item in inputs if not isinstance(item, str))
    if ids > defaults.embedding_max_request_tokens:
        raise InvalidRequest(
            f"The inputs have {ids} tokens together; at most {defaults.embedding_max_request_tokens} are allowed per "
            "request (defaults.embedding_max_request_tokens). Split them into several requests.",
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
    shortening = req.dimensions is not None and (allowed == "any" or (isinstance(allowed, list) and req.dimensions in allowed))
    if req.dimensions is not None and isinstance(allowed, list) and not shortening and req.dimensions < max(allowed):
        raise InvalidRequest(
            f"Model {entry.id!r} gives embeddings of {', '.join(map(str, sorted(allowed)))} values "
            f"(models.{entry.id}.embedding_dimensions), not {req.dimensions}.",
            param="dimensions",
        )
    request = EmbeddingRequest(
        request_id=request_ids(1)[0],
        inputs=tuple(item if isinstance(item, str) else tuple(item) for item in inputs),
        max_input_tokens=defaults.embedding_max_input_tokens,
        batch_tokens=defaults.embedding_batch_tokens,
        max_total_tokens=defaults.embedding_max_request_tokens,
        pooling=entry.config.embedding_pooling,
        dimensions=req.dimensions,
        shortening=shortening,
    )
    return EmbeddingJob(entry, request, req.encoding_format)


async def create_embeddings(runner: Runner, job: EmbeddingJob) -> CreateEmbeddingResponse:
    """Load the model if needed, compute the vectors, shape the response."""
    started = time.perf_counter()
    runner.requests_total += 1
    runner.metrics.embedding(job.entry.id)
    try:
        result = await _compute(runner, job)
    except RouterError:
        runner.requests_failed += 1
        raise
    runner.metrics.prompt_tokens.labels(job.entry.id).inc(result.prompt_tokens)
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


async def _compute(runner: Runner, job: EmbeddingJob) -> EmbeddingResult:
    """The worker's answer, within ``defaults.timeout`` (the load included). Counted as a running
    job while it runs, so a drain waits for it and, at its deadline, ends it."""
    timeout = runner.settings.defaults.timeout
    stop: asyncio.Queue[tuple[int, object]] = asyncio.Queue()
    runner.drain_state.queues.add(stop)
    try:
        async with asyncio.timeout(timeout):
            async with runner.manager.acquire(job.entry.id) as lm:
                work = asyncio.ensure_future(lm.client.embed(job.request))
                drained = asyncio.ensure_future(stop.get())
                try:
                    done, _ = await asyncio.wait({work, drained}, return_when=asyncio.FIRST_COMPLETED)
                    if work not in done:  # the drain deadline passed: end with its error
                        error = drained.result()[1]
                        raise error if isinstance(error, RouterError) else InternalError("The request was stopped.")
                    return work.result()
                finally:
                    drained.cancel()
                    if not work.done():
                        work.cancel()  # cancels the request in the worker
                        await asyncio.gather(work, return_exceptions=True)
    except TimeoutError:
        raise GenerationTimeout(f"The embeddings took longer than {timeout:g} s (defaults.timeout).") from None
    except EngineFailure as exc:
        raise engine_error(exc.error, "input") from None
    finally:
        runner.drain_state.queues.discard(stop)
