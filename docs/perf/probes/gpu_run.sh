#!/usr/bin/env bash
# The GPU run behind docs/PERFORMANCE.md, in two parts that each fit the host's 10 minutes per
# command. On the host, from the root of the carried working tree, with this repository's source
# in .devC (a `git archive` of the branch) and the wheels of ../shared/gpu-host/prepare.sh in .devB:
#   bash .devC/docs/perf/probes/gpu_run.sh 1b     # install, Llama-3.2-1B bf16, probes
#   bash .devC/docs/perf/probes/gpu_run.sh 8b     # Llama-3.1-8B 4-bit
# Results go to $OUT (at most 8 files come back, so work folders travel as .tgz).
set -u
part=$1
root=$(pwd)
out=${OUT:-/tmp/gpu-out}
mkdir -p "$out"
if ! PYTHONPATH=/tmp/site python3 -c 'import mlx.core' 2>/dev/null; then
  bash .devB/install.sh > "$out/install-$part.txt" 2>&1 || { cat "$out/install-$part.txt"; exit 3; }
fi
export PYTHONPATH=/tmp/site:$root/.devC HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
cd "$root/.devC"
bench() {  # KIND CONCURRENCY SECONDS
  timeout "$3" python3 helper_tools/benchmark.py --make "$1" --cache-dir /tmp/bench-cache --concurrency "$2" \
    --repeat 3 --skip server --work-dir "/tmp/w-$1" --json "$out/gpu-$1.json" > "$out/gpu-$1.txt" 2>&1
  echo "benchmark $1 exit $?" >> "$out/gpu-$1.txt"
  tar czf "$out/work-$1.tgz" --exclude prefix-cache --exclude '*.safetensors' -C /tmp "w-$1" 2>/dev/null
}
case $part in
  1b)
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/probes-1b.txt" 2>&1
    bench llama-1b 1,8,32,64,128 400
    model=/tmp/bench-cache/llama-1b/random-llama-1b
    { echo "== first_token"; timeout 55 python3 docs/perf/probes/first_token.py "$model"
      echo "== admission"; timeout 40 python3 docs/perf/probes/admission.py "$model" 32 3 512 4; } >> "$out/probes-1b.txt" 2>&1
    ;;
  8b)
    bench llama-8b-4bit 1,8,32 440
    { echo "== first_token"; timeout 60 python3 docs/perf/probes/first_token.py /tmp/bench-cache/llama-8b-4bit/random-llama-8b-4bit; } \
      > "$out/probes-8b.txt" 2>&1
    ;;
esac
tail -5 "$out"/gpu-*.txt
