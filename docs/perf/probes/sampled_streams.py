"""S concurrent streams against mlx-router (python main.py): per round, the aggregate tok/s (each
client reading to [DONE]) and the CPU time per generated token of the router process and of its
workers. ROUNDS rounds (default 3).

Usage: python docs/perf/probes/sampled_streams.py MODEL_DIR MAX_TOKENS STREAMS TEMPERATURE [ROUNDS]
"""
import asyncio, json, os, subprocess, sys, time
import httpx
import psutil
model = sys.argv[1]; N = int(sys.argv[2]); S = int(sys.argv[3]); temp = float(sys.argv[4])
ROUNDS = int(sys.argv[5]) if len(sys.argv) > 5 else 3
port = 18778
cfg = {"defaults": {"model": os.path.basename(model), "model_directory": os.path.dirname(model), "embedded_model": False,
        "warmup_tokens": 4, "max_tokens": N, "cache_size": 1, "max_batch_size": 64},
       "server": {"port": port, "log_file": "/tmp/sampled-streams-router2.log"}}
open("/tmp/sampled-streams-cfg2.json", "w").write(json.dumps(cfg))
env = {k: v for k, v in os.environ.items() if not k.startswith("MLX_ROUTER_")}
p = subprocess.Popen([sys.executable, "main.py", "--config", "/tmp/sampled-streams-cfg2.json"], env=env,
                     stdout=open("/tmp/sampled-streams-out2.log", "w"), stderr=subprocess.STDOUT)
async def one(c, i):
    body = {"model": os.path.basename(model), "messages": [{"role": "user", "content": f"story {i}"}],
            "max_tokens": N, "stream": True, "temperature": temp, "stream_options": {"include_usage": True}}
    toks = 0
    async with c.stream("POST", f"http://127.0.0.1:{port}/v1/chat/completions", json=body) as r:
        async for line in r.aiter_lines():
            if line == "data: [DONE]": break
            if line.startswith("data: "):
                d = json.loads(line[6:])
                if d.get("usage"): toks = d["usage"]["completion_tokens"]
    return toks
async def main():
    async with httpx.AsyncClient(timeout=300, limits=httpx.Limits(max_connections=200)) as c:
        router = psutil.Process(p.pid)
        def cpu(proc):
            t = proc.cpu_times()
            return t.user + t.system
        for rep in range(ROUNDS):
            workers = router.children(recursive=True)
            before = cpu(router), sum(cpu(w) for w in workers)
            t = time.perf_counter()
            toks = await asyncio.gather(*(one(c, rep * 1000 + i) for i in range(S)))
            wall = time.perf_counter() - t
            spent = [(a - b) * 1000 / sum(toks) for a, b in zip((cpu(router), sum(cpu(w) for w in workers)), before)]
            print(f"rep {rep}: {S} streams T={temp}: {sum(toks)} tokens, {sum(toks) / wall:.0f} tok/s; CPU ms per token: "
                  f"router {spent[0]:.3f}, workers {spent[1]:.3f}", flush=True)
try:
    for _ in range(300):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200: break
        except Exception: pass
        time.sleep(0.2)
    asyncio.run(main())
finally:
    p.terminate(); p.wait(20)
