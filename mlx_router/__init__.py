"""mlx-router: an OpenAI-compatible server that routes requests to many MLX models."""

__all__ = ["__version__"]

__version__ = "0.1.0"
