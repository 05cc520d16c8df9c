"""/v1/messages/count_tokens against the message it counts: a system prompt of WORDS repeated
phrases, three rounds (each a new prompt), the time of the count, of the message after it and of
a second message sharing the prompt (its cache hit).

Usage: python docs/perf/probes/count_tokens.py MODEL_DIR WORDS
"""
import json, os, subprocess, sys, tempfile, time
import httpx
model = sys.argv[1]; words = int(sys.argv[2]); port = 18781
cfg = {"defaults": {"model": os.path.basename(model), "model_directory": os.path.dirname(model), "embedded_model": False, "warmup_tokens": 2},
       # a fresh data directory: no prefix-cache blocks on disk from an earlier run
       "server": {"port": port, "log_file": "/tmp/count-tokens-probe.log", "data_directory": tempfile.mkdtemp()}}
open("/tmp/count-tokens-probe.json", "w").write(json.dumps(cfg))
p = subprocess.Popen([sys.executable, "main.py", "--config", "/tmp/count-tokens-probe.json"], stdout=open("/tmp/count-tokens-probe.out", "w"), stderr=subprocess.STDOUT)
try:
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=600) as c:
        for _ in range(300):
            try:
                if c.get("/health").status_code == 200: break
            except Exception: pass
            time.sleep(0.3)
        for i in range(3):
            body = {"model": os.path.basename(model), "max_tokens": 1, "system": f"Rules {i}: " + "keep answers short and exact. " * words,
                    "messages": [{"role": "user", "content": "hello"}]}
            t = time.perf_counter(); r = c.post("/v1/messages/count_tokens", json=body); counted = time.perf_counter() - t
            t = time.perf_counter(); m = c.post("/v1/messages", json=body); sent = time.perf_counter() - t
            print(f"{r.json()['input_tokens']} tokens: count_tokens {counted * 1000:.0f} ms, then the message {sent * 1000:.0f} ms "
                  f"(cache read {m.json()['usage']['cache_read_input_tokens']})", flush=True)
            t = time.perf_counter(); m2 = c.post("/v1/messages", json={**body, "system": body["system"] + " x"})
            print(f"  a second message sharing the prompt: {(time.perf_counter() - t) * 1000:.0f} ms, usage {m2.json()['usage']}")
finally:
    p.terminate(); p.wait(20)
