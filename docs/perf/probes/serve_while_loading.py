"""Does a resident model keep its speed while another model loads? (run from the repository root)

    python docs/perf/probes/serve_while_loading.py RESIDENT_MODEL_DIR OTHER_MODEL_DIR
"""
import json, sys, tempfile, threading, time
from pathlib import Path

sys.path.insert(0, ".")
from tests.integration.conftest import start_server  # noqa: E402

resident, other = Path(sys.argv[1]), Path(sys.argv[2])
models = Path(tempfile.mkdtemp())
(models / "resident").symlink_to(resident)
(models / "other").symlink_to(other)
server = start_server(Path(tempfile.mkdtemp()), {"defaults": {
    "model": "resident", "model_directory": str(models), "embedded_model": False, "cache_size": 2}})
BODY = {"model": "resident", "messages": [{"role": "user", "content": "Tell me a story."}], "max_tokens": 200,
        "temperature": 0, "stream": True, "logit_bias": {"0": -100, "1": -100, "2": -100}}


def decode_rate() -> float:
    times = []
    with server.client() as http, http.stream("POST", "/v1/chat/completions", json=BODY) as response:
        for line in response.iter_lines():
            if line.startswith("data: {") and '"content":"' in line and '"role"' not in line:
                times.append(time.perf_counter())
    return (len(times) - 1) / (times[-1] - times[0])


try:
    decode_rate()  # warm-up
    alone = [decode_rate() for _ in range(3)]
    loads: list[float] = []

    def load_other() -> None:
        with server.client() as http:
            t = time.perf_counter()
            http.post("/v1/admin/models/other/load")
            loads.append(time.perf_counter() - t)
            http.post("/v1/admin/models/other/unload")

    during = []
    for _ in range(3):
        thread = threading.Thread(target=load_other)
        thread.start()
        during.append(decode_rate())
        thread.join()
    print(json.dumps({"alone_tok_s": [round(x, 1) for x in alone], "while_loading_tok_s": [round(x, 1) for x in during],
                      "other_load_s": [round(x, 2) for x in loads]}))
finally:
    server.stop()
