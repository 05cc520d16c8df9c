"""``python -m mlx_router`` runs the server CLI."""

import sys

from mlx_router.cli import main

sys.exit(main())
