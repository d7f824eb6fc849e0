#!/usr/bin/env bash
# Every GPU run of this project, for a GPU host lent for a few minutes:
#   lane          tests/gpu/run.sh: the modules against the real driver and MPS, site.yml cold and warm,
#                 the sample workloads and the benchmark playbook (--quick) through Ansible (~4 min)
#   pod_boundary  tests/gpu/pod_boundary.sh: which of hostIPC, pipe mount, /dev/shm a pod needs (~2 min)
#   workloads     benchmarks/seed_experiment.py: the seeds' experiment of `make lab` against a daemon of its own
#                 (matmul workers and kernel pair, alone and at once, time-slicing and MPS; its table) (~1 min)
#   benchmark     benchmarks/mps_benchmark.py: MPS against time-slicing (~3-4 min; --quick ~1 min)
#   lab_speed     benchmarks/lab_speed.sh: make lab cold (offline install; it ends with the seeds' table), then
#                 site.yml --tags host warm x3, then make teardown (~3 min)
#   readback      site.yml --tags host as make lab leaves it, then the daemon's defaults read back raw through the CLI
#   hostile       tests/gpu/hostile.yml: clients with hostile names as root and two users, odd commands, then mps_info,
#                 mps_daemon (apply, FAULT recovery, forced stop) and the collector; two users 1 s apart (~2 min)
#   replica_share site.yml --tags host with the Kubernetes stages planned here (gpulab_kubernetes true): the daemon
#                 holds the replicas' share, read back raw; then make teardown
#   dp_lane       tests/gpu/device_plugin/lane.py --bin .dp-bin: the released device plugin binaries from a folder
# Each step has its own time limit and starts and stops its own MPS daemon; a failing step does not stop the
# next. Results go to OUT as one archive per step (<step>.tar.gz) and summary.txt, printed last.
#
#   tests/gpu/run_all.sh OUT [--steps lane,pod_boundary,workloads,benchmark] [--wheels DIR] [--quick]
# All four steps take about 9 minutes; within a 10-minute call limit, run them as two calls:
#   --steps lane,pod_boundary   then   --steps workloads,benchmark
set -u
out=${1:?usage: run_all.sh OUT [--steps a,b] [--wheels DIR] [--quick]}
shift
steps=lane,pod_boundary,workloads,benchmark wheels=() quick=()
while [ $# -gt 0 ]; do
  case "$1" in
    --steps) steps=$2; shift 2 ;;
    --wheels) wheels=(--wheels "$2"); shift 2 ;;
    --quick) quick=(--quick); shift ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
cd "$(dirname "$0")/../.." || exit 2
mkdir -p "$out/work"
export PYTHONUNBUFFERED=1 PATH="/usr/local/nvidia/bin:$PATH"
# The host's python3 (with CuPy and PyTorch on the GPU machine), before a step puts the lab's venv first on PATH.
PY=$(command -v python3)
summary="$out/summary.txt"
: > "$summary"
note() { echo "$*" | tee -a "$summary"; }

note "run_all $(date -u +%FT%TZ) on $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null || echo 'no nvidia-smi'): $steps"
for step in ${steps//,/ }; do
  case "$step" in
    lane) timeout 450 tests/gpu/run.sh "${wheels[@]}" --out "$out/work/lane"; rc=$?
          note "lane: exit $rc; $(grep -E '^site.yml --tags host' "$out/work/lane/gpu-lane.log" 2>/dev/null)" ;;
    pod_boundary) timeout 200 tests/gpu/pod_boundary.sh "$out/work/pod_boundary"; note "pod boundary: exit $?" ;;
    workloads) timeout 240 python3 benchmarks/seed_experiment.py --out "$out/work/workloads"; note "workloads: exit $?" ;;
    benchmark) timeout 400 python3 benchmarks/mps_benchmark.py "${quick[@]}" --out "$out/work/benchmark"
               note "benchmark: exit $?" ;;
    lab_speed) timeout 300 benchmarks/lab_speed.sh "${wheels[@]}" --out "$out/work/lab_speed" | tee "$out/work/lab_speed.txt"
               note "lab speed: exit ${PIPESTATUS[0]}"; mv "$out/work/lab_speed.txt" "$out/work/lab_speed/summary.txt" ;;
    readback|replica_share)
          mkdir -p "$out/work/$step"
          export PATH="$PWD/.venv-offline/bin:$PATH" ANSIBLE_CONFIG="$PWD/ansible.cfg"
          extra=(); [ "$step" = replica_share ] && extra=(-e gpulab_kubernetes=true)
          timeout 200 ansible-playbook site.yml -i inventories/lab --tags host "${extra[@]}" >"$out/work/$step/site-host.log" 2>&1
          note "$step: site.yml --tags host ${extra[*]}: exit $? $(grep -E '^localhost +:' "$out/work/$step/site-host.log" | sed 's/  */ /g')"
          note "$step: $(grep -oE '(No replica limits|Replica limits)[^.]*\.' "$out/work/$step/site-host.log" | head -1)"
          for c in get_default_active_thread_percentage "get_default_device_pinned_mem_limit 0" get_server_list; do
            note "$step: echo $c | nvidia-cuda-mps-control -> [$(echo "$c" | CUDA_MPS_PIPE_DIRECTORY=/tmp/nvidia-mps timeout 20 nvidia-cuda-mps-control 2>&1 | tr '\n' ' ')]"
          done
          note "$step: daemon $(pgrep -a -f 'nvidia-cuda-mps-control -d' | head -1)"
          if [ "$step" = replica_share ]; then
            timeout 120 make teardown WHEELS="${wheels[1]}" >"$out/work/$step/teardown.log" 2>&1; note "$step: teardown exit $?"
          fi ;;
    hostile)
          mkdir -p "$out/work/hostile"
          export PATH="$PWD/.venv-offline/bin:$PATH" ANSIBLE_CONFIG="$PWD/ansible.cfg"
          timeout 300 ansible-playbook tests/gpu/hostile.yml -i inventories/lab -e hostile_client_python="$PY" \
            >"$out/work/hostile/hostile.log" 2>&1
          note "hostile: exit $? $(grep -E '^localhost +:' "$out/work/hostile/hostile.log" | sed 's/  */ /g')" ;;
    dp_lane)
          timeout 300 "$PY" tests/gpu/device_plugin/lane.py --bin .dp-bin --out "$out/work/dp_lane" \
            >"$out/work/dp_lane.log" 2>&1; rc=$?; mv "$out/work/dp_lane.log" "$out/work/dp_lane/stdout.log" 2>/dev/null
          note "dp_lane: exit $rc; $(grep -E '^VERDICT|^binaries' "$out/work/dp_lane/summary.txt" 2>/dev/null | tr '\n' ' ')" ;;
    *) note "unknown step $step" ;;
  esac
  [ -d "$out/work/$step" ] && tar -C "$out/work" -czf "$out/$step.tar.gz" "$step"
done
# Zombies (Z) are gone already, waiting only for a reaper that this container may not have.
left=$(ps -eo pid=,stat=,args= | awk '$2 !~ /^Z/ && $3 ~ /nvidia-cuda-mps/')
note "MPS processes left: ${left:-none}"
rm -rf "$out/work"
for step in ${steps//,/ }; do
  case "$step" in
    pod_boundary) echo; echo "=== pod boundary"; tar -xzOf "$out/pod_boundary.tar.gz" pod_boundary/summary.txt 2>/dev/null ;;
    workloads) echo; echo "=== the seeds' experiment"; tar -xzOf "$out/workloads.tar.gz" workloads/seed_experiment.md 2>/dev/null ;;
    benchmark) echo; echo "=== benchmark"; tar -xzOf "$out/benchmark.tar.gz" benchmark/mps_benchmark.md 2>/dev/null | head -60 ;;
    lab_speed) echo; echo "=== lab speed"; tar -xzOf "$out/lab_speed.tar.gz" lab_speed/summary.txt 2>/dev/null ;;
  esac
done
echo; echo "=== summary"; cat "$summary"
