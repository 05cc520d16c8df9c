"""The worker process + router-side client, no HTTP: where does a request's time go?"""
import asyncio, sys, time
sys.path.insert(0, ".")
from mlx_router.engine.client import WorkerClient
from mlx_router.engine.types import Admission, GenerationParams, GenerationRequest, WorkerOptions, GenerationChunk

def prompt(i, n, V=int(sys.argv[2]) if len(sys.argv) > 2 else 1000):
    return tuple(((i * 7919 + j * 31) % (V - 10)) + 5 for j in range(n))

async def main(path):
    client = WorkerClient(WorkerOptions(model_id="m", model_path=path, warmup_tokens=4))
    await client.start(600)
    async def one(i, n, max_tokens):
        t0 = time.perf_counter(); adm = first = None; count = 0
        async for item in client.generate(GenerationRequest(f"q{i}-{time.time()}", GenerationParams(max_tokens=max_tokens), prompt_ids=prompt(i, n))):
            now = (time.perf_counter() - t0) * 1000
            if isinstance(item, Admission): adm = now
            elif first is None: first = now
            if isinstance(item, GenerationChunk): count += 1
        return adm, first, (time.perf_counter() - t0) * 1000, count
    for i, n in enumerate([512, 512, 512, 511, 500, 32, 32, 31, 512]):
        a, f, t, c = await one(i, n, 4)
        print(f"len {n}: admitted {a:.1f} first {f:.1f} total {t:.1f} ms ({c} chunks)", flush=True)
    for rep in range(2):
        a, f, t, c = await one(50 + rep, 512, 128)
        print(f"len 512 x128: admitted {a:.1f} first {f:.1f} total {t:.1f} ms ({c} chunks) -> {(c-1)/((t-f)/1000):.1f} tok/s decode", flush=True)
    await client.stop()

if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
