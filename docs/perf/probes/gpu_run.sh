#!/usr/bin/env bash
# The GPU run behind docs/PERFORMANCE.md, in parts that each fit the host's 10 minutes per
# command. On the host, from the root of the carried working tree (the source is read from .devC,
# a `git archive` of the branch, when it is there, else from the tree itself), with the wheels of
# ../shared/gpu-host/prepare.sh in .devB (py-spy's wheel added there for SPY_SECONDS):
#   bash docs/perf/probes/gpu_run.sh 1b     # install, Llama-3.2-1B bf16, probes
#   bash docs/perf/probes/gpu_run.sh 8b     # Llama-3.1-8B 4-bit
#   bash docs/perf/probes/gpu_run.sh sampled  # the 1B at temperature 0.7 (shared samplers), 1/8/32
#   bash docs/perf/probes/gpu_run.sh engine   # install, one stream's decode step (probe), the 1B at 1-128 streams
#     (LEVELS, PART_SECONDS, BENCH_SKIP to fit; SPY_SECONDS > 30 adds py-spy of the 1B at 32 streams)
#   bash docs/perf/probes/gpu_run.sh final    # install, the 1B at 1-128 streams, prefix, disconnect, agent session
#   bash docs/perf/probes/gpu_run.sh final8b  # the 8B 4-bit at 1/8/32 streams, the same scenarios
#   bash docs/perf/probes/gpu_run.sh turn     # install, cached_turn.py (widths not prepared attend directly, then
#     fused, then directly again), the 1B at LEVELS (default 1-128 streams) with every scenario but mlx_lm.server
#   bash docs/perf/probes/gpu_run.sh check    # install, cached_turn.py once, the 1B served alone (no mlx-lm direct)
#     at LEVELS (default 1,32) with the prefix, disconnect and agent scenarios
#   bash docs/perf/probes/gpu_run.sh alloc    # install, clear_cache.py (MLX's buffer cache emptied or kept), the 1B
#     at LEVELS (default 1,32) with the prefix scenario, then served again with buffer_cache_bytes 0
# Results go to $OUT (at most 8 files come back, so work folders travel as .tgz).
set -u
part=$1
root=$(pwd)
out=${OUT:-/tmp/gpu-out}
mkdir -p "$out"
if ! PYTHONPATH=/tmp/site python3 -c 'import mlx.core' 2>/dev/null; then
  bash .devB/install.sh > "$out/install-$part.txt" 2>&1 || { cat "$out/install-$part.txt"; exit 3; }
fi
src=$root/.devC
[ -d "$src" ] || src=$root
export PYTHONPATH=/tmp/site:$src HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
cd "$src"
bench() {  # KIND CONCURRENCY SECONDS [NAME [BENCHMARK ARGS...]]
  kind=$1 levels=$2 seconds=$3 name=${4:-$1}
  shift 4 2>/dev/null || shift $#
  timeout -s INT -k 20 "$seconds" python3 helper_tools/benchmark.py --make "$kind" --cache-dir /tmp/bench-cache \
    --concurrency "$levels" --repeat 3 --skip "${BENCH_SKIP-server}" --work-dir "/tmp/w-$name" --json "$out/gpu-$name.json" "$@" \
    > "$out/gpu-$name.txt" 2>&1
  echo "benchmark $name exit $?" >> "$out/gpu-$name.txt"
  tar czf "$out/work-$name.tgz" --exclude prefix-cache --exclude '*.safetensors' -C /tmp "w-$name" 2>/dev/null
}
spy() {  # NAME CONCURRENCY TOKENS SECONDS: the router and its worker under py-spy from the router's start
  name=$1 levels=$2 tokens=$3 seconds=$4
  timeout -s INT -k 10 "$seconds" python3 helper_tools/benchmark.py --make llama-1b --cache-dir /tmp/bench-cache \
    --concurrency "$levels" --repeat 3 --only router --max-tokens "$tokens" --work-dir "/tmp/w-spy-$name" \
    > "$out/spy-$name.txt" 2>&1 &
  bench_pid=$!
  for _ in $(seq 1 200); do router=$(pgrep -f 'main.py --config' | head -1); [ -n "$router" ] && break; sleep 0.1; done
  /tmp/site/bin/py-spy record -r 250 --subprocesses --nonblocking --format raw -d $((seconds - 10)) -p "$router" \
    -o "/tmp/spy-$name.raw" >> "$out/spy-$name.txt" 2>&1
  wait "$bench_pid"
}
case $part in
  final)  # the 1B at LEVELS (default 1-128 streams) with every scenario but mlx_lm.server
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/gpu-host.txt" 2>&1
    bench llama-1b "${LEVELS:-1,8,32,64,128}" $((${PART_SECONDS:-585} - SECONDS))
    ;;
  turn)
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/probes-turn.txt" 2>&1
    python3 -c "from pathlib import Path; from helper_tools.bench.models import make_model; print(make_model('llama-1b', Path('/tmp/bench-cache'), 170))" >> "$out/probes-turn.txt" 2>&1
    for mode in "" --fused-first ""; do
      echo "== cached_turn.py $mode" >> "$out/probes-turn.txt"
      timeout 110 python3 docs/perf/probes/cached_turn.py /tmp/bench-cache/llama-1b/random-llama-1b 16384 $mode >> "$out/probes-turn.txt" 2>&1
      echo "cached_turn.py $mode exit $?" >> "$out/probes-turn.txt"
    done
    bench llama-1b "${LEVELS:-1,8,32,64,128}" $((${PART_SECONDS:-585} - SECONDS))
    cat "$out/probes-turn.txt"
    ;;
  check)
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/probes-check.txt" 2>&1
    python3 -c "from pathlib import Path; from helper_tools.bench.models import make_model; print(make_model('llama-1b', Path('/tmp/bench-cache'), 170))" >> "$out/probes-check.txt" 2>&1
    timeout 110 python3 docs/perf/probes/cached_turn.py /tmp/bench-cache/llama-1b/random-llama-1b 16384 >> "$out/probes-check.txt" 2>&1
    echo "cached_turn.py exit $?" >> "$out/probes-check.txt"
    BENCH_SKIP=server,direct bench llama-1b "${LEVELS:-1,32}" $((${PART_SECONDS:-585} - SECONDS)) llama-1b-check
    cat "$out/probes-check.txt"
    ;;
  final8b)  # the 8B 4-bit at 1/8/32 streams with every scenario but mlx_lm.server
    bench llama-8b-4bit "${LEVELS:-1,8,32}" $((${PART_SECONDS:-585} - SECONDS)) llama-8b-4bit
    ;;
  alloc)
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/probes-alloc.txt" 2>&1
    python3 -c "from pathlib import Path; from helper_tools.bench.models import make_model; print(make_model('llama-1b', Path('/tmp/bench-cache'), 170))" >> "$out/probes-alloc.txt" 2>&1
    timeout 240 python3 docs/perf/probes/clear_cache.py /tmp/bench-cache/llama-1b/random-llama-1b >> "$out/probes-alloc.txt" 2>&1
    echo "clear_cache.py exit $?" >> "$out/probes-alloc.txt"
    BENCH_SKIP=${BENCH_SKIP-server,agent,disconnect} bench llama-1b "${LEVELS:-1,32}" $(((${PART_SECONDS:-585} - SECONDS) * 3 / 5))
    # the same served, MLX's buffer cache emptied after every prefill chunk (as before), mlx-lm direct not run again
    BENCH_SKIP=${BENCH_SKIP-server,agent,disconnect},direct bench llama-1b "${LEVELS:-1,32}" $((${PART_SECONDS:-585} - SECONDS)) \
      llama-1b-emptied --router-default buffer_cache_bytes=0
    cat "$out/probes-alloc.txt"
    ;;
  engine)
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/probes-engine.txt" 2>&1
    python3 -c "from pathlib import Path; from helper_tools.bench.models import make_model; print(make_model('llama-1b', Path('/tmp/bench-cache'), 170))" >> "$out/probes-engine.txt" 2>&1
    timeout 60 python3 docs/perf/probes/decode_step.py /tmp/bench-cache/llama-1b/random-llama-1b >> "$out/probes-engine.txt" 2>&1
    bench llama-1b "${LEVELS:-1,8,32,64,128}" $((${PART_SECONDS:-585} - SECONDS - ${SPY_SECONDS:-0}))
    if [ "${SPY_SECONDS:-0}" -gt 30 ]; then
      spy 1b-32 32 512 $((${PART_SECONDS:-585} - SECONDS))
      tar czf "$out/spy.tgz" -C /tmp $(cd /tmp && ls spy-*.raw) 2>/dev/null
    fi
    ;;
  1b)
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/probes-1b.txt" 2>&1
    bench llama-1b 1,8,32,64,128 400
    model=/tmp/bench-cache/llama-1b/random-llama-1b
    { echo "== first_token"; timeout 55 python3 docs/perf/probes/first_token.py "$model"
      echo "== admission"; timeout 40 python3 docs/perf/probes/admission.py "$model" 32 3 512 4; } >> "$out/probes-1b.txt" 2>&1
    ;;
  again)  # after the first run: the 1B scenarios and probe again, then the 8B
    bench llama-1b 1 110 llama-1b-scenarios --only prefix,disconnect,agent
    timeout 50 python3 docs/perf/probes/first_token.py /tmp/bench-cache/llama-1b/random-llama-1b > "$out/probes-1b-again.txt" 2>&1
    bench llama-8b-4bit 1,8,32 $((575 - SECONDS)) llama-8b-4bit
    ;;
  sampled)  # the throughput rounds with unseeded sampling, mlx_lm.server included (its samplers are per request)
    BENCH_SKIP= bench llama-1b 1,8,32 400 llama-1b-sampled --only direct,server,router --temperature 0.7
    timeout 60 python3 docs/perf/probes/sampling.py /tmp/bench-cache/llama-1b/random-llama-1b 32 > "$out/probes-sampling.txt" 2>&1
    ;;
  8b)
    bench llama-8b-4bit 1,8,32 440
    { echo "== first_token"; timeout 60 python3 docs/perf/probes/first_token.py /tmp/bench-cache/llama-8b-4bit/random-llama-8b-4bit; } \
      > "$out/probes-8b.txt" 2>&1
    ;;
esac
tail -n 5 "$out"/gpu-*.txt
