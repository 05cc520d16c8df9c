"""Summarize a py-spy raw profile (`py-spy record --format raw --subprocesses`) of the router and
its worker: samples per process, and inside the worker's step loop the share of each function
(inclusive) and of each call path's last frame.

Usage: python docs/perf/probes/spy_summary.py PROFILE.raw [LINES]
"""

import collections
import sys

path = sys.argv[1]
lines = int(sys.argv[2]) if len(sys.argv) > 2 else 25
per_process: collections.Counter[str] = collections.Counter()
loop_total = 0
inclusive: collections.Counter[str] = collections.Counter()
paths: collections.Counter[str] = collections.Counter()
with open(path) as profile:
    text = profile.read().splitlines()
for line in text:
    stack, _, count = line.rstrip().rpartition(" ")
    if not stack:
        continue
    n, frames = int(count), stack.split(";")
    process = "worker" if "spawn_main" in stack else "router"
    per_process[process] += n
    starts = [i for i, f in enumerate(frames) if f.startswith("_Worker.loop ")]
    if process != "worker" or not starts:
        continue
    below = frames[starts[0] + 1 :]
    loop_total += n
    for frame in set(below):
        inclusive[frame] += n
    paths[" > ".join(f.split(" (")[0] for f in below[:3]) + " || " + frames[-1]] += n
print("samples per process (busy threads only):", dict(per_process))
print(f"worker step loop: {loop_total} samples\n-- inclusive")
for frame, n in inclusive.most_common(lines):
    print(f"{n:7d} {n / loop_total:6.1%}  {frame}")
print("-- by path (three frames below the loop || the sampled frame)")
for frame, n in paths.most_common(lines):
    print(f"{n:7d} {n / loop_total:6.1%}  {frame}")
