"""``keep_pytorch_out``: what a worker process sees of an installed PyTorch (a stand-in ``torch``
with its dist-info, in a fresh interpreter so that this process's modules stay as they are)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

PROBE = """
import importlib.util, json, sys
from mlx_router.engine.worker import describe_exception, keep_pytorch_out
if sys.argv[1] == "hide":
    keep_pytorch_out()
from transformers.utils import is_torch_available
try:
    import torch
    imported, message = True, ""
except ImportError as exc:
    imported, message = False, describe_exception(exc)
print(json.dumps({"found": importlib.util.find_spec("torch") is not None, "transformers": is_torch_available(),
                  "imported": imported, "message": message}))
"""


def probe(tmp_path: Path, mode: str) -> dict[str, object]:
    site = tmp_path / "site"
    (site / "torch").mkdir(parents=True, exist_ok=True)
    (site / "torch" / "__init__.py").write_text('__version__ = "2.9.0"\n')
    (site / "torch-2.9.0.dist-info").mkdir(exist_ok=True)
    (site / "torch-2.9.0.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: torch\nVersion: 2.9.0\n")
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, "-c", PROBE, mode],
        env={"PYTHONPATH": f"{site}:{root}", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def test_a_worker_sees_no_pytorch_and_a_model_that_imports_it_is_told_what_to_set(tmp_path: Path) -> None:
    seen = probe(tmp_path, "show")
    assert seen == {"found": True, "transformers": True, "imported": True, "message": ""}
    hidden = probe(tmp_path, "hide")
    assert hidden["found"] is False and hidden["transformers"] is False and hidden["imported"] is False
    assert "defaults.worker_pytorch" in str(hidden["message"]) and "imports torch" in str(hidden["message"])
