"""Importers that turn foreign model files into mlx-lm loadable model folders.

People arrive with GGUF files from Ollama, LM Studio or llama.cpp; the router serves mlx-lm
folders. The importers bridge the two once, on disk, so the serving path stays plain mlx-lm.
"""

from mlx_router.importers.gguf import (
    GGUFImportError,
    find_embedded_gguf,
    import_gguf,
    inspect_gguf,
)

__all__ = ["GGUFImportError", "find_embedded_gguf", "import_gguf", "inspect_gguf"]
