"""Load-to-first-token: mlx_lm.load + 1 token in a fresh process, vs mlx-router swapping a model in."""
import json, os, subprocess, sys, time, tempfile
from pathlib import Path
import httpx
sys.path.insert(0, ".")
from tests.integration.conftest import start_server

MODEL = Path(sys.argv[1])  # e.g. SmolLM2-135M-Instruct imported with --dequantize
BLAS = "/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0"
env = dict(os.environ, LD_PRELOAD=BLAS, HF_HUB_OFFLINE="1")
fresh = []
for _ in range(3):
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", f"from mlx_lm import load, generate; m, tk = load('{MODEL}'); generate(m, tk, 'Hi', max_tokens=1)"], env=env, check=True, capture_output=True)
    fresh.append(time.perf_counter() - t)
print("fresh process mlx_lm.load + 1 token:", [round(x, 2) for x in fresh])
models = Path(tempfile.mkdtemp()); (models / "smol-a").symlink_to(MODEL); (models / "smol-b").symlink_to(MODEL)
for spare in (False, True):
    tmp = Path(tempfile.mkdtemp())
    server = start_server(tmp, {"defaults": {"model_directory": str(models), "embedded_model": False, "cache_size": 1, "spare_worker": spare}})
    times = []
    try:
        with server.client() as http:
            http.post("/v1/chat/completions", json={"model": "smol-a", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1})
            for i in range(3):
                model = "smol-b" if i % 2 == 0 else "smol-a"
                if spare:
                    deadline = time.time() + 60
                    while http.get("/v1/health").json()["spare_worker_pid"] is None and time.time() < deadline:
                        time.sleep(0.2)
                t = time.perf_counter()
                r = http.post("/v1/chat/completions", json={"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1})
                times.append(time.perf_counter() - t)
                assert r.status_code == 200, r.text
    finally:
        server.stop()
    print(f"mlx-router swap (unload other + load + 1 token), spare_worker={spare}:", [round(x, 2) for x in times])
