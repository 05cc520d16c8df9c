"""What chat and text completions prepare alike from an OpenAI sampling request: the model,
the resolved generation parameters, the number of choices and how the answer is streamed."""

from __future__ import annotations

from dataclasses import dataclass

from mlx_router.api.serving.runner import Runner
from mlx_router.api.sse import StreamFormat
from mlx_router.engine.types import GenerationParams
from mlx_router.errors import InvalidRequest
from mlx_router.manager.registry import ModelEntry
from mlx_router.protocol.sampling import ModelDefaults, SamplingRequest

__all__ = ["Sampling", "prepare_sampling"]


@dataclass(frozen=True)
class Sampling:
    entry: ModelEntry
    defaults: ModelDefaults
    """The model's values for what the request leaves out."""
    max_tokens_limit: int
    n: int
    stream: bool
    include_usage: bool
    stream_format: StreamFormat

    def params(self, req: SamplingRequest) -> GenerationParams:
        """The first choice's parameters (the others differ by seed: ``choice_params``)."""
        return req.to_generation_params(self.defaults, max_tokens_limit=self.max_tokens_limit)


def prepare_sampling(runner: Runner, req: SamplingRequest) -> Sampling:
    """Resolve the model and check ``n``, ``stream_options`` and ``max_tokens`` against the
    server's and the model's settings."""
    defaults = runner.settings.defaults
    entry = runner.manager.resolve(req.model)
    if entry.is_embedding_model:
        raise InvalidRequest(f"Model {entry.id!r} is an embedding model: it serves /v1/embeddings only.", param="model")
    n = req.n or 1
    if n > defaults.max_n:
        raise InvalidRequest(f"n must be at most {defaults.max_n} (defaults.max_n).", param="n")
    stream = defaults.stream if req.stream is None else req.stream
    if req.stream_options is not None and not stream:
        raise InvalidRequest("stream_options is only allowed when stream is true.", param="stream_options")
    return Sampling(
        entry=entry,
        defaults=runner.model_defaults(entry),
        max_tokens_limit=defaults.max_tokens_limit,
        n=n,
        stream=stream,
        include_usage=bool(req.stream_options and req.stream_options.include_usage),
        stream_format=req.streaming_format or defaults.streaming_format,
    )
