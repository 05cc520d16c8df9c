"""The HTTP layer: FastAPI app factory, routes, auth, streaming and the error envelope."""

from mlx_router.api.app import create_app

__all__ = ["create_app"]
