#!/usr/bin/env bash
# Every GPU run of this project in one call, for a GPU host lent for a few minutes:
#   1. the GPU lane (tests/gpu/run.sh: modules against the real driver and MPS, site.yml cold and warm)
#   2. the pod boundary experiment (tests/gpu/pod_boundary.sh: which of hostIPC, pipe mount, /dev/shm a pod needs)
#   3. the MPS benchmark (benchmarks/mps_benchmark.py: MPS against time-slicing)
# Each step has its own time limit and starts and stops its own MPS daemon; a failing step does not stop the
# next. Results go to OUT as one archive per step (lane.tar.gz, pod_boundary.tar.gz, benchmark.tar.gz) and
# summary.txt; the summary is also printed last.
#
#   tests/gpu/run_all.sh OUT [--wheels DIR] [--quick]      (about 8 minutes on an H100; --quick about 5)
set -u
out=${1:?usage: run_all.sh OUT [--wheels DIR] [--quick]}
shift
wheels=() quick=()
while [ $# -gt 0 ]; do
  case "$1" in
    --wheels) wheels=(--wheels "$2"); shift 2 ;;
    --quick) quick=(--quick); shift ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
cd "$(dirname "$0")/../.." || exit 2
mkdir -p "$out/work"
export PYTHONUNBUFFERED=1
summary="$out/summary.txt"
: > "$summary"
note() { echo "$*" | tee -a "$summary"; }

note "run_all $(date -u +%FT%TZ) on $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null || echo 'no nvidia-smi')"
timeout 330 tests/gpu/run.sh "${wheels[@]}" --out "$out/work/lane"
note "lane: exit $? ($(grep -E '^site.yml --tags host' "$out/work/lane/gpu-lane.log" 2>/dev/null || echo 'no timing'))"
timeout 200 tests/gpu/pod_boundary.sh "$out/work/pod_boundary"
note "pod boundary: exit $?"
timeout 280 python3 benchmarks/mps_benchmark.py "${quick[@]}" --out "$out/work/benchmark"
note "benchmark: exit $?"
note "MPS processes left: $(pgrep -a nvidia-cuda-mps || echo none)"

for step in lane pod_boundary benchmark; do
  [ -d "$out/work/$step" ] && tar -C "$out/work" -czf "$out/$step.tar.gz" "$step"
done
rm -rf "$out/work"
echo; echo "=== pod boundary"; tar -xzOf "$out/pod_boundary.tar.gz" pod_boundary/summary.txt 2>/dev/null
echo; echo "=== benchmark"; tar -xzOf "$out/benchmark.tar.gz" benchmark/mps_benchmark.md 2>/dev/null | head -60
echo; echo "=== summary"; cat "$summary"
