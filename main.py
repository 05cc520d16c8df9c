"""Start mlx-router: ``python main.py --config config.json`` (same as the ``mlx-router`` command)."""

import sys

from mlx_router.cli import main

if __name__ == "__main__":
    sys.exit(main())
