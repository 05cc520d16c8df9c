"""The benchmark behind ``helper_tools/benchmark.py``, by concern.

  cli.py        arguments, the run's phases in order, the machine, the JSON
  context.py    Run: the model, prompts, environment and report every phase shares
  models.py     the --make kinds (random-weight models from mlx_router.fabricate)
  workload.py   prompts of a given token length through the chat template
  direct.py     mlx-lm called directly, in a subprocess (stream_generate, BatchGenerator)
  servers.py    mlx_lm.server and mlx-router as subprocesses, with their memory sampled
  client.py     streaming chat requests and one round of concurrent streams
  phases.py     rounds per concurrency against a server, then its scenarios
  scenarios.py  one function per scenario (prefix, disconnect), registered by name
  stats.py      rates, percentiles, ratios, targets (pure)
  report.py     the plain-text tables (pure)

A scenario is a function of the run, a started server and the model name that writes its
result into the report; registering it in ``scenarios.SCENARIOS`` makes it a phase of the CLI
(``--only`` / ``--skip``), and a section function in ``report.SECTIONS`` prints it.
"""

from pathlib import Path

__all__ = ["REPO_ROOT", "SCRIPT"]

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = REPO_ROOT / "helper_tools" / "benchmark.py"
"""The script; its hidden ``--make-worker`` / ``--direct-worker`` modes run in subprocesses."""
