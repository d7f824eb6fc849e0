#!/usr/bin/env bash
# The QoS lane (issue 13), for a GPU host lent for one call of under 8 minutes: run as root from a checkout.
#
#   tests/gpu/qos_lane.sh OUT [--wheels DIR]
#
# 1. multiuser  benchmarks/mps_multiuser.py: two throwaway Unix users' clients at once, under `-d` and `-d -M`
#               (users created and removed, daemons stopped)                                     (~1.5 min)
# 2. ansible    with --wheels: make lab WHEELS=DIR TAGS=host with the lane's classes (latency, and batch with a
#               16G pinned limit) and mps_host_multiuser_server: the class files /etc/gpulab-mps/qos/*.env and a
#               `-d -M` daemon; again (must change nothing); the lab daemon is then stopped so that the GPU is
#               idle for the benchmark                                                           (~1.2 min)
# 3. qos        the noisy-neighbour benchmark through playbooks/benchmark.yml (benchmark_kind qos) against the class
#               files the host has; without Ansible, the same script directly against class files written by
#               tests/gpu/qos_class_files.py (the collection's _qos)                             (~3 min)
# 4. teardown   make teardown: the lab daemon and the class files go (checked)
# OUT gets at most 5 files: multiuser.tar.gz, ansible.tar.gz, qos.tar.gz, summary.txt, lane.log. The last lines
# printed are the findings. It never changes compute mode, clocks, power, persistence or MIG (checked before/after).
#
# GPULAB_QOS_LANE_REHEARSAL=DIR rehearses the lane on a machine without a GPU (tests/unit/gpu/test_qos_lane.py):
# simulated clients, the fake control binary, both "users" the current user, the NVIDIA stand-ins for site.yml
# (the checkout's .venv instead of the wheels), every path under DIR.
set -u
out=${1:?usage: qos_lane.sh OUT [--wheels DIR]}
shift
wheels=""
while [ $# -gt 0 ]; do
  case "$1" in
    --wheels) wheels=$(cd "$2" && pwd); shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
cd "$(dirname "$0")/../.." || exit 2
rehearsal=${GPULAB_QOS_LANE_REHEARSAL:-}
bench_extra=() mu_extra=() lab_env=() lab_extra="" make_wheels=()
lab_pipe=/tmp/nvidia-mps lab_log=/var/log/nvidia-mps lab_state=/var/lib/gpulab-mps qos_dir=/etc/gpulab-mps/qos
stop_args="" ansible_bin=.venv-offline/bin
[ -n "$wheels" ] && make_wheels=(WHEELS="$wheels")
if [ -n "$rehearsal" ]; then
  fake="$rehearsal/nvidia-cuda-mps-control" standin="$rehearsal/nvidia-cuda-mps-control-standin"
  mu_extra=(--backend sim --control-binary "$fake" --as-current-user --a-seconds 4)
  bench_extra=(--backend sim --control-binary "$fake" --ns 0,2 --repeats 1 --duration 0.3 --sim-latency-ms 1
               --sim-fill-ms 3 --criterion 0)
  lab_pipe="$rehearsal/lab/pipe" lab_log="$rehearsal/lab/log" lab_state="$rehearsal/lab/state"
  qos_dir="$rehearsal/qos" ansible_bin=.venv/bin stop_args=" control_binary=$standin"
  lab_extra=", \"preflight_control_binary\": \"$standin\", \"mps_host_pipe_directory\": \"$lab_pipe\", \"mps_host_log_directory\": \"$lab_log\", \"mps_host_state_directory\": \"$lab_state\", \"mps_host_service_manager\": \"direct\", \"mps_dialtone_client_check\": false, \"gpulab_mps_qos_directory\": \"$qos_dir\""
  lab_env=(env "PYTHONPATH=$PWD/tests/standins")  # the stand-in NVML, for the lab's modules only
fi
mkdir -p "$out" && out=$(cd "$out" && pwd)
work="$out/work"
rm -rf "$work" && mkdir -p "$work/multiuser" "$work/ansible" "$work/qos"
exec > >(tee "$out/lane.log") 2>&1
export PYTHONUNBUFFERED=1 PATH="/usr/local/nvidia/bin:$PATH" ANSIBLE_FORCE_COLOR=0
start=$(date +%s)
deadline=$((start + 440))  # the whole lane, cleanup included, inside one call of under 8 minutes
left() { echo $((deadline - $(date +%s))); }
bounded() { local most=$1; shift; local l; l=$(left); [ "$l" -lt "$most" ] && most=$l; [ "$most" -lt 5 ] && most=5; timeout -k 5 "$most" "$@"; }
summary="$out/summary.txt"
: > "$summary"
note() { echo "$*" | tee -a "$summary"; }
step() { printf '\n=== %s (%s, %d s left)\n' "$*" "$(date -u +%H:%M:%S)" "$(left)"; }
mode_of() { nvidia-smi --query-gpu=compute_mode,persistence_mode,mig.mode.current --format=csv,noheader 2>/dev/null; }

step "host"
date -u +%FT%TZ
nvidia-smi --query-gpu=index,name,driver_version,memory.total,compute_mode --format=csv,noheader || echo "no nvidia-smi"
modes_before=$(mode_of)
echo "modes before (compute, persistence, MIG): $modes_before"
python3 -c 'import sys; print("python3", sys.version.split()[0], sys.executable)'
python3 -c 'import cupy; print("cupy", cupy.__version__)' 2>&1 | tail -1
python3 -c 'import matplotlib; print("matplotlib", matplotlib.__version__)' 2>&1 | tail -1
command -v setpriv runuser useradd userdel | tr '\n' ' '; echo
pgrep -a nvidia-cuda-mps || echo "no MPS process at start"
note "qos lane $(date -u +%FT%TZ) on $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null)"

step "1. two Unix users, without and with the multi-user server"
bounded 150 python3 benchmarks/mps_multiuser.py --out "$work/multiuser" "${mu_extra[@]}"
note "multiuser: exit $?"

classes='{"latency": {"client_priority": 0, "description": "a latency-critical service: normal priority, the SMs its server allows"}, "batch": {"active_thread_percentage": 12, "client_priority": 1, "pinned_memory_limit": "16G", "description": "throughput work beside a latency-critical service: 12 % of the SMs, below-normal priority, 16G"}}'
bench_args=(--modes ts,mps,prio,qos --ns 0,3,7 --repeats 3 --duration 2.0 "${bench_extra[@]}")
ran_playbook=0
if [ -n "$wheels" ] || [ -n "$rehearsal" ]; then
  step "2. the classes on the host: make lab TAGS=host, twice"
  # The lab daemon as a multi-user server too: the collection's own way of starting -d -M, on the real driver.
  echo "{\"gpulab_mps_qos_classes\": $classes, \"mps_host_multiuser_server\": true$lab_extra}" \
    > "$work/ansible/qos-vars.json"
  bounded 150 "${lab_env[@]}" make lab "${make_wheels[@]}" TAGS=host ANSIBLE_ARGS="-e @$work/ansible/qos-vars.json" \
    > "$work/ansible/site-1.log" 2>&1
  rc1=$?
  tail -4 "$work/ansible/site-1.log"
  bounded 60 "${lab_env[@]}" make lab "${make_wheels[@]}" TAGS=host ANSIBLE_ARGS="-e @$work/ansible/qos-vars.json" \
    > "$work/ansible/site-2.log" 2>&1
  rc2=$?
  note "site.yml --tags host: exit $rc1, again exit $rc2: $(grep -E '^localhost +:' "$work/ansible/site-2.log")"
  note "lab daemon: $(pgrep -a -f "nvidia-cuda-mps-control -d" | tr '\n' ' ')"
  ls -l "$qos_dir" 2>&1 | tee "$work/ansible/qos-files.txt"
  for f in "$qos_dir"/*.env; do echo "--- $f"; cat "$f"; done 2>&1 | tee -a "$work/ansible/qos-files.txt"
  # An idle server of the lab daemon would hold a context on the GPU that the benchmark must have to itself.
  ANSIBLE_CONFIG=$PWD/ansible.cfg bounded 30 "${lab_env[@]}" "$ansible_bin/ansible" localhost -i inventories/lab \
    -m gpulab.mps.mps_daemon \
    -a "state=stopped force=true timeout=5 pipe_directory=$lab_pipe log_directory=$lab_log state_directory=$lab_state$stop_args" \
    -e "@$work/ansible/qos-vars.json" > "$work/ansible/stop-lab-daemon.log" 2>&1
  note "lab daemon stopped: exit $?"
  if [ "$rc1" = 0 ] && [ -f "$qos_dir/batch.env" ]; then
    step "3. the noisy-neighbour benchmark through playbooks/benchmark.yml"
    budget=$(( $(left) - 110 )); [ "$budget" -gt 170 ] && budget=170
    # The script stops itself (and cleans up) before the playbook's async limit would kill it.
    args_json=$(printf '"%s",' "${bench_args[@]}" --budget-s "$budget" --deadline-s $((budget + 60)))
    # A vars file: JSON on make's command line would lose its quotes to the shell.
    printf '{"benchmark_kind": "qos", "benchmark_timeout": %d, "benchmark_fetch_to": "%s", "benchmark_qos_directory": "%s", "benchmark_args": [%s]%s}\n' \
      $((budget + 80)) "$work/qos" "$qos_dir" "${args_json%,}" \
      "${rehearsal:+, \"benchmark_control_binary\": \"$fake\", \"benchmark_python\": \"$(command -v python3)\"}" \
      > "$work/ansible/benchmark-vars.json"
    bounded $((budget + 90)) make benchmark "${make_wheels[@]}" ANSIBLE_ARGS="-e @$work/ansible/benchmark-vars.json" \
      > "$work/ansible/benchmark-playbook.log" 2>&1
    note "benchmark playbook: exit $?: $(grep -E '^localhost +:' "$work/ansible/benchmark-playbook.log")"
    ran_playbook=1
  fi
fi
if [ "$ran_playbook" = 0 ] || [ ! -f "$work/qos/localhost/mps_qos.json" ]; then
  step "3. the noisy-neighbour benchmark, directly (no Ansible run here)"
  direct_qos="$work/qos/classes"
  python3 tests/gpu/qos_class_files.py "$direct_qos" "$classes" "$lab_pipe"
  budget=$(( $(left) - 60 )); [ "$budget" -gt 170 ] && budget=170
  bounded $((budget + 50)) python3 benchmarks/mps_qos_benchmark.py --qos-dir "$direct_qos" --out "$work/qos/direct" \
    "${bench_args[@]}" --budget-s "$budget" --deadline-s $((budget + 40))
  note "benchmark (direct): exit $?"
fi

if [ -n "$wheels" ] || [ -n "$rehearsal" ]; then
  step "4. teardown"
  bounded 40 "${lab_env[@]}" make teardown "${make_wheels[@]}" ANSIBLE_ARGS="--tags host -e @$work/ansible/qos-vars.json" \
    > "$work/ansible/teardown.log" 2>&1
  note "teardown: exit $?: $(grep -E '^localhost +:' "$work/ansible/teardown.log"); class files left: $(ls "$qos_dir" 2>/dev/null | tr '\n' ' ')"
fi

step "leftovers"
left_mps=$(ps -eo pid=,stat=,args= | awk '$2 !~ /^Z/ && $3 ~ /nvidia-cuda-mps/')
note "MPS processes left: ${left_mps:-none}"
note "throwaway users left: $(getent passwd gpulabmu1 gpulabmu2 | cut -d: -f1 | tr '\n' ' ')"
modes_after=$(mode_of)
note "modes (compute, persistence, MIG) before: $modes_before; after: $modes_after"
[ "$modes_before" = "$modes_after" ] || note "WARNING: the GPU's modes changed"
note "lane took $(( $(date +%s) - start )) s"

for part in multiuser ansible qos; do tar -C "$work" -czf "$out/$part.tar.gz" "$part"; done
# The findings last, compact (a caller may see only the last 12,000 characters): the table, the class evidence of
# mode qos, the multi-user verdicts, the summary.
echo; echo "=== noisy neighbours"
js=$(ls "$work"/qos/localhost/mps_qos.json "$work"/qos/direct/mps_qos.json 2>/dev/null | head -1)
if [ -n "$js" ]; then
  python3 - "$js" <<'EOF'
import json, sys
sys.path.insert(0, "benchmarks")
import mps_qos_report as report
r = json.load(open(sys.argv[1]))
for line in report.table_lines(r["rows"]):
    print(line)
print(report.criterion_line(r["criterion"]))
for line in r["verdicts"]:
    print("*", line)
short = {"CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": "threads", "CUDA_MPS_CLIENT_PRIORITY": "priority",
         "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT": "pinned"}
for e in r["evidence"]:
    if e["mode"] == "qos" or not e.get("class_ok"):
        env = " ".join("%s=%s" % (short.get(k, k), v) for k, v in sorted(e["mps_env"].items()) if k in short)
        print("class %s %s pid %s [%s]: SM attr %s, SMs used %s, free %s MiB%s" % (
            e["mode"], e["role"], e["pid"], env or "-", e.get("sm_count_attribute"), e.get("sms_used"),
            e.get("mem_free_mib"), "" if e.get("class_ok") else " NOT OK: " + e.get("class_line", "")))
for line in [d for d in r["daemon_evidence"] if d.startswith(("mode qos", "server.log"))][:10]:
    print("daemon:", line[:300])
for line in r["check_lines"] + r["problems"]:
    print(line[:300])
EOF
else
  echo "(no noisy-neighbour result)"
fi
echo; echo "=== multi-user finding"
python3 - "$work/multiuser/mps_multiuser.json" <<'EOF' 2>/dev/null || echo "(no multiuser result)"
import json, sys
r = json.load(open(sys.argv[1]))
for f in r["findings"]:
    print("%s: %s: %s" % (f["start"], f["verdict"].upper(), f["line"]))
    for who in ("a", "b"):
        s = f.get(who + "_seen")
        if s:
            print("  %s pid %s uid %s MPS client %s: SM attr %s, SMs used %s, env %s" % (
                who, s["pid"], s.get("uid"), f.get(who + "_mps_client"), s.get("sm_count_attribute"),
                s.get("sms_used"), {k: v for k, v in s["mps_env"].items() if k != "CUDA_MPS_PIPE_DIRECTORY"}))
    for srv in f.get("servers_during") or []:
        print("  server while A ran:", srv)
    if f.get("b_wait_after_a_exit_s") is not None:
        print("  B ready %s s after A's exit; then: %s" % (f["b_wait_after_a_exit_s"],
                                                          (f.get("after_a") or {}).get("servers")))
for p in r["problems"]:
    print("PROBLEM:", p)
EOF
rm -rf "$work"
echo; echo "=== summary"; cat "$summary"
