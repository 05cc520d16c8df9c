#!/usr/bin/env bash
# Is mlx-router's single-stream decode on the H200 (0.48 of stream_generate, docs/perf/h200-1b-run.txt)
# slower because of this round's engine changes or because of the host? One host run, one model:
#   1. 1 stream, this tree (.devC, a `git archive HEAD`) against mlx-lm's stream_generate
#   2. 1 stream, the tree before the round (.devD, `git archive 40cb9b9`), same model, same host
#   3. the agent scenario with the prefix cache's disk tier on (default) and off (prefix_cache_disk_bytes 0)
# On the host, from the root of the carried working tree (wheels of ../shared/gpu-host/prepare.sh in .devB):
#   bash .devC/docs/perf/probes/gpu_regression.sh
# Everything ends within ~560 s; results go to $OUT: the tables as .txt, the raw numbers (.json) and the
# work folders in one .tgz (the host returns at most 8 files).
set -u
root=$(pwd)
out=${OUT:-/tmp/gpu-out}
mkdir -p "$out"
log=$out/regression.txt
left() { echo $(( 555 - SECONDS )); }  # seconds left of the run
cap() { local l; l=$(left); [ "$1" -lt "$l" ] && echo "$1" || echo "$l"; }
step() { echo "[$(date -u +%T) +${SECONDS}s] $*" >> "$log"; }
step "start"; nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv >> "$log" 2>&1
if ! PYTHONPATH=/tmp/site python3 -c 'import mlx.core' 2>/dev/null; then
  timeout 150 bash .devB/install.sh >> "$log" 2>&1 || { step "install failed"; exit 3; }
fi
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
cache=/tmp/bench-cache
mkdir -p /tmp/json
bench() {  # NAME TREE SECONDS BENCHMARK-ARGS...
  local name=$1 tree=$2 seconds; seconds=$(cap "$3"); shift 3
  [ "$seconds" -gt 30 ] || { step "$name skipped: ${seconds}s left"; return; }
  step "$name ($tree, ${seconds}s)"
  (cd "$tree" && PYTHONPATH=/tmp/site:$tree timeout -s INT -k 15 "$seconds" python3 helper_tools/benchmark.py \
     --make llama-1b --cache-dir $cache --work-dir "/tmp/w-$name" --json "/tmp/json/$name.json" "$@") > "$out/$name.txt" 2>&1
  step "$name exit $?"
}
# The model, once (the new tree's writer; the old tree finds it by the same path and .complete marker).
(cd .devC && PYTHONPATH=/tmp/site:$root/.devC timeout 120 python3 -c \
  "from pathlib import Path; from helper_tools.bench.models import make_model; print(make_model('llama-1b', Path('$cache'), 110))") >> "$log" 2>&1
step "model made"
bench new-1 "$root/.devC" 120 --concurrency 1 --repeat 2 --skip server,prefix,disconnect,agent
bench old-1 "$root/.devD" 120 --concurrency 1 --repeat 2 --skip server,prefix,disconnect
# Disk tier off: the same tree with prefix_cache_disk_bytes 0 in the benchmark's router config.
cp -r .devC /tmp/devC-nodisk
sed -i 's/"prefix_cache_bytes": PREFIX_CACHE_BYTES,/"prefix_cache_bytes": PREFIX_CACHE_BYTES, "prefix_cache_disk_bytes": 0,/' \
  /tmp/devC-nodisk/helper_tools/bench/servers.py
grep -c prefix_cache_disk_bytes /tmp/devC-nodisk/helper_tools/bench/servers.py >> "$log"
bench agent-disk "$root/.devC" $(( $(left) / 2 )) --concurrency 1 --only agent
bench agent-nodisk /tmp/devC-nodisk 200 --concurrency 1 --only agent
step "done"
tar czf "$out/results.tgz" --exclude prefix-cache --exclude '*.safetensors' -C /tmp json w-new-1 w-old-1 w-agent-disk w-agent-nodisk 2>/dev/null
for f in new-1 old-1 agent-disk agent-nodisk; do echo "== $f"; grep -E "tok/s|turn|^1 |agent session|exit" "$out/$f.txt" 2>/dev/null | head -30; done
cat "$log"
