#!/usr/bin/env bash
# The sample workloads of roles/cuda_workload on a GPU host, without Ansible: what the role's host variant does,
# for a quick check of the seed workloads on real hardware (about 30 s).
#
#   benchmarks/sample_workloads.sh [OUT_DIR]          (default ./sample_workloads_out)
#
# It starts its OWN MPS control daemon on a private pipe directory and ALWAYS quits it at the end (trap; SIGTERM
# to that daemon only if `quit` hangs). It builds kernel_pair.cu with nvcc when nvcc is there (else the CuPy/
# PyTorch version runs), then runs the matmul workers of seed 002 and the kernel pair of seed 003 side by side
# twice through run_workloads.py: with an empty pipe directory (each must NOT be an MPS client), then through the
# daemon (each must be in its `ps`). It changes no GPU setting.
#
# Output: OUT_DIR/sample_workloads.json ({"no-mps": report, "mps": report}), OUT_DIR/sample_workloads.log, and a
# summary, last. Exit 0 when both runs pass, 1 when a check fails, 2 when it cannot start.
# Environment: PYTHON (with PyTorch or CuPy; default python3), MATMUL_WORKERS (default 2; 0 leaves them out).
set -u -o pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 2

OUT=${1:-./sample_workloads_out}
PY=${PYTHON:-python3}
WORKERS=${MATMUL_WORKERS:-2}
FILES=roles/cuda_workload/files
export PATH="$PATH:/usr/local/nvidia/bin:/usr/local/cuda/bin"

mkdir -p "$OUT" || { echo "cannot create $OUT" >&2; exit 2; }
LOG="$OUT/sample_workloads.log"
: >"$LOG"
say() { printf '[sample_workloads %3ds] %s\n' "$SECONDS" "$*" | tee -a "$LOG"; }

CTL=$(command -v nvidia-cuda-mps-control) || { say "nvidia-cuda-mps-control not found"; exit 2; }
WORK=$(mktemp -d /tmp/gpulab-sample-workloads.XXXXXX)
PIPE="$WORK/pipe"
LOGDIR="$WORK/log"
mkdir -p "$PIPE" "$LOGDIR"
DAEMON=""

# shellcheck disable=SC2317  # ctl and cleanup run from the EXIT trap
ctl() { printf '%s\n' "$1" | CUDA_MPS_PIPE_DIRECTORY="$PIPE" CUDA_MPS_LOG_DIRECTORY="$LOGDIR" timeout 10 "$CTL"; }

# shellcheck disable=SC2317
cleanup() {
  if [[ -n "$DAEMON" ]] && kill -0 "$DAEMON" 2>/dev/null; then
    ctl quit >/dev/null 2>&1
    for _ in $(seq 1 100); do kill -0 "$DAEMON" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$DAEMON" 2>/dev/null; then
      say "the daemon $DAEMON did not quit: SIGTERM"
      kill -TERM "$DAEMON" 2>/dev/null
    fi
    say "MPS daemon $DAEMON stopped"
  fi
  { echo "==> control.log <=="; cat "$LOGDIR/control.log" 2>/dev/null; } >>"$LOG"
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The kernel pair: CUDA C where nvcc builds it, else the same kernels through CuPy (or PyTorch).
KERNEL_PAIR="$PY $FILES/kernel_pair.py"
if command -v nvcc >/dev/null 2>&1; then
  if timeout 180 nvcc -O2 -o "$WORK/kernel_pair" "$FILES/kernel_pair.cu" >>"$LOG" 2>&1; then
    KERNEL_PAIR="$WORK/kernel_pair"
    say "kernel pair built with $(command -v nvcc)"
  else
    say "nvcc could not build kernel_pair.cu (see $LOG): the CuPy/PyTorch version runs instead"
  fi
else
  say "no nvcc: the kernel pair runs through CuPy/PyTorch"
fi

CUDA_MPS_PIPE_DIRECTORY="$PIPE" CUDA_MPS_LOG_DIRECTORY="$LOGDIR" timeout 30 "$CTL" -d </dev/null >>"$LOG" 2>&1
for _ in $(seq 1 100); do
  [[ -s "$PIPE/nvidia-cuda-mps-control.pid" ]] && break
  sleep 0.1
done
DAEMON=$(cat "$PIPE/nvidia-cuda-mps-control.pid" 2>/dev/null)
[[ "$DAEMON" =~ ^[0-9]+$ ]] || { say "the MPS control daemon did not start in $PIPE"; exit 2; }
say "MPS control daemon started: pid $DAEMON, pipe directory $PIPE"

WORKLOADS=()
for ((i = 0; i < WORKERS; i++)); do
  WORKLOADS+=(--workload "matmul-$i=$PY $FILES/matmul_worker.py --handshake")
done
WORKLOADS+=(--workload "add=$KERNEL_PAIR --kernel add --handshake")
WORKLOADS+=(--workload "scale=$KERNEL_PAIR --kernel scale --handshake")

rc=0
for mode in no-mps mps; do
  say "mode $mode: $((WORKERS + 2)) workloads side by side"
  if ! timeout 120 "$PY" "$FILES/run_workloads.py" --mode "$mode" --pipe-dir "$PIPE" --control-binary "$CTL" \
      --timeout 90 "${WORKLOADS[@]}" >"$WORK/$mode.json" 2>>"$LOG"; then
    rc=1
  fi
done

"$PY" - "$WORK/no-mps.json" "$WORK/mps.json" "$OUT/sample_workloads.json" <<'EOF' | tee -a "$LOG"
import json, sys
reports = {}
for mode, path in (("no-mps", sys.argv[1]), ("mps", sys.argv[2])):
    try:
        with open(path) as handle:
            reports[mode] = json.loads(handle.read().strip().splitlines()[-1])
    except (OSError, ValueError, IndexError) as exc:
        reports[mode] = {"ok": False, "problems": ["no report: %s" % exc], "workloads": []}
with open(sys.argv[3], "w") as handle:
    json.dump(reports, handle, indent=1, sort_keys=True)
print("sample workloads (seed 002 matmul workers, seed 003 kernel pair):")
for mode, report in reports.items():
    for w in report.get("workloads", []):
        r = w.get("result") or {}
        print("  %-6s %-9s pid %-7s %-15s median %8s ms over %2d iterations  %-6s %s" % (
            mode, w["name"], w["pid"], "an MPS client" if w["under_mps"] else "not MPS",
            "%.3f" % w["median_ms"] if w.get("median_ms") is not None else "-", len(w["iteration_ms"]),
            r.get("implementation", "?"), w["check"]))
    print("  %-6s %s" % (mode, "ok" if report.get("ok") else "FAILED: " + "; ".join(report.get("problems", []))))
EOF
exit $rc
