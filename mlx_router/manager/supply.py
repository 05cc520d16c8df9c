"""Worker supply: where the engines of model loads come from.

:class:`WorkerSupply` holds the client factory (worker processes, or a test's fake engine), the
spare worker kept started with MLX imported (``defaults.spare_worker``: a load adopts it and a
new spare starts behind it, so a load pays for reading the weights, not for starting Python and
MLX), and GGUF imports, which run in a child process (the router process never imports MLX).
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing as mp
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from mlx_router.engine.client import WorkerClient, openblas_library
from mlx_router.engine.distributed import GroupClient
from mlx_router.engine.protocol import ClientFactory, Engine, ExitCallback
from mlx_router.engine.types import WorkerOptions
from mlx_router.engine.worker import keep_pytorch_out
from mlx_router.manager.registry import EMBEDDED_MODEL_ID, IMPORT_DIR_NAME, ModelEntry

__all__ = ["WorkerSupply"]

logger = logging.getLogger(__name__)


def _import_gguf_job(src: str, dst: str, dequantize: bool, pytorch: bool) -> str:
    """Runs in a child process: GGUF → MLX folder (the router process never touches MLX); an
    installed PyTorch hidden as in the workers unless ``pytorch``."""
    if not pytorch:
        keep_pytorch_out()
    from mlx_router.importers.gguf import import_gguf

    return str(import_gguf(src, dst, dequantize=dequantize))


class WorkerSupply:
    """Engines for model loads, the spare worker, and GGUF imports (see the module docstring)."""

    def __init__(self, *, client_factory: ClientFactory | None, spare_worker: bool, pytorch: bool = False) -> None:
        self.blas = openblas_library()
        self.pytorch = pytorch
        """Workers may import PyTorch (``defaults.worker_pytorch``)."""
        self._factory: ClientFactory = client_factory or self._worker
        self._spares = client_factory is None and spare_worker
        """Keep a pre-started worker process ready (only with real workers)."""
        self._spare: WorkerClient | None = None
        self._closing = False
        self._tasks: set[asyncio.Task[None]] = set()

    def engine(self, options: WorkerOptions, on_exit: ExitCallback) -> Engine:
        """The engine of one model load."""
        return self._factory(options, on_exit)

    @property
    def spare_pid(self) -> int | None:
        return self._spare.pid if self._spare is not None and self._spare.alive else None

    def _worker(self, options: WorkerOptions, on_exit: ExitCallback) -> WorkerClient:
        """A worker process: the waiting spare when there is one (then a new spare starts in the
        background), else a new process."""
        if options.distributed is not None:  # a group of ranks, started by mlx.launch
            return GroupClient(options, on_exit=on_exit, blas_library=self.blas, pytorch=self.pytorch)
        spare, self._spare = self._spare, None
        if spare is not None and spare.alive:
            spare.adopt(options, on_exit)
            self.start_spare()
            return spare
        return WorkerClient(options, on_exit=on_exit, blas_library=self.blas, pytorch=self.pytorch)

    def start_spare(self) -> None:
        """Start a spare worker process (MLX imported, no model) in the background."""
        if not self._spares or self._spare is not None or self._closing:
            return

        async def spawn() -> None:
            client = WorkerClient(WorkerOptions(model_id="spare", model_path=""), blas_library=self.blas, pytorch=self.pytorch)
            await client.spawn(spare=True)
            if self._spare is None and not self._closing:
                self._spare = client
            else:
                await client.stop(grace=1)

        task = asyncio.get_running_loop().create_task(spawn())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def materialize(self, entry: ModelEntry, model_dir: Path) -> Path:
        """The MLX folder of a model; GGUF files are imported on first use."""
        if not entry.is_gguf:
            return entry.path
        target = model_dir / IMPORT_DIR_NAME / entry.id.replace("/", "__")
        return await self.run_import(entry.path, target)

    async def import_embedded(self, model_dir: Path) -> None:
        """Import the bundled SmolLM2 into the model directory (when nothing else is served)."""
        from mlx_router.importers.gguf import find_embedded_gguf

        gguf = find_embedded_gguf()
        if gguf is None:
            logger.warning("No model configured or discovered, and the embedded model package is not installed.")
            return
        logger.info("Importing the embedded %s into the model directory (once)", EMBEDDED_MODEL_ID)
        started = time.perf_counter()
        await self.run_import(gguf, model_dir / EMBEDDED_MODEL_ID)
        logger.info("Imported %s in %.1f s", EMBEDDED_MODEL_ID, time.perf_counter() - started)

    async def run_import(self, src: Path, dst: Path) -> Path:
        dst.parent.mkdir(parents=True, exist_ok=True)
        # Float32 is faster than 4-bit on a CPU with OpenBLAS; elsewhere keep the quantized weights.
        dequantize = self.blas is not None
        loop = asyncio.get_running_loop()
        with ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn")) as pool:
            return Path(await loop.run_in_executor(pool, _import_gguf_job, str(src), str(dst), dequantize, self.pytorch))

    async def close(self) -> None:
        self._closing = True
        for task in list(self._tasks):
            task.cancel()
        spare, self._spare = self._spare, None
        if spare is not None:
            await spare.stop(grace=1)
