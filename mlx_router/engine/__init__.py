"""The engine: one worker process per resident model owns every MLX call for that model.

Nothing in this package imports FastAPI or the wire protocol; it speaks the dataclasses in
:mod:`mlx_router.engine.types`.
"""

from mlx_router.engine.client import EngineFailure, WorkerClient
from mlx_router.engine.types import (
    Admission,
    EngineError,
    GenerationChunk,
    GenerationParams,
    GenerationRequest,
    LoadInfo,
    WorkerOptions,
)

__all__ = [
    "Admission",
    "EngineError",
    "EngineFailure",
    "GenerationChunk",
    "GenerationParams",
    "GenerationRequest",
    "LoadInfo",
    "WorkerClient",
    "WorkerOptions",
]
