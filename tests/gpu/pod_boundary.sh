#!/usr/bin/env bash
# The pod boundary, measured: does a CUDA client in a pod's namespaces reach the host's MPS daemon, and which
# of hostIPC, the pipe-directory mount and the /dev/shm mount does it really need?
#
# A pod is a set of namespaces. This script runs the MPS dial-tone (`echo ps | nvidia-cuda-mps-control`) and a
# CUDA client (plugins/module_utils/_cuda_client.py, driver only) inside namespaces like a pod's: its own
# mount, PID and IPC namespaces (unshare), the host root with /tmp hidden under a tmpfs except the bind-mounted
# pipe directory, and a private /dev/shm tmpfs. It varies one factor at a time from that baseline and reports,
# for each case, whether the client really went through MPS (its host PID in the daemon's `ps` and
# `get_client_list`, its type M+C in nvidia-smi, the pinned limit of this daemon in the memory it sees) or
# silently ran without MPS.
#
#   sudo tests/gpu/pod_boundary.sh [OUT_DIR]        (default ./pod_boundary_out; about 1-2 minutes)
#
# It starts its OWN MPS control daemon on a private pipe directory (PB_PIPE, default /tmp/pb_pipe) and ALWAYS
# quits it at the end (trap), killing only processes it started, by PID. It never changes compute mode,
# clocks, persistence or MIG and never resets the GPU: nvidia-smi is only queried. The pinned memory limit it
# sets is a default of its own daemon, seen only by its own clients.
#
# Output: a summary table on stdout and in OUT_DIR/summary.txt (and .tsv), one log per case, the daemon's
# control.log and server.log, and env.txt (device, driver, kernel, MPS processes found before the run).
#
# Knobs (environment): PB_PIPE, PB_LIMIT (pinned limit of this daemon, default 4G), PB_HOLD (seconds each
# client holds its context, default 6), PB_DEADLINE (hard stop, default 170 s), PB_PYTHON, PB_MPS_CONTROL,
# PB_NVIDIA_SMI, PB_CLIENT (for tests of this script without a GPU).
set -u -o pipefail

OUT=${1:-./pod_boundary_out}
export PATH="/usr/local/nvidia/bin:$PATH"
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
PIPE=${PB_PIPE:-/tmp/pb_pipe}
LIMIT=${PB_LIMIT:-4G}
HOLD=${PB_HOLD:-6}
DEADLINE=${PB_DEADLINE:-170}
CLIENT_SRC=${PB_CLIENT:-$ROOT/plugins/module_utils/_cuda_client.py}
CTL=$(command -v "${PB_MPS_CONTROL:-nvidia-cuda-mps-control}" || true)
PY=$(command -v "${PB_PYTHON:-python3}" || true)
SMI=$(command -v "${PB_NVIDIA_SMI:-nvidia-smi}" || true)

START=$SECONDS
DAEMON_PID=""
CREATED_PIPE=0
STAGE=""
WATCHDOG=""
CASE_PIDS=()

say() { printf '[pod_boundary %3ds] %s\n' "$((SECONDS - START))" "$*" | tee -a "$OUT/run.log" >&2; }
die() { say "ERROR: $*"; exit 2; }

mkdir -p "$OUT" || { echo "cannot create $OUT" >&2; exit 2; }
OUT=$(cd "$OUT" && pwd)
: >"$OUT/run.log"

# --- cleanup: only what this script started, by PID ------------------------------------------------------------
alive() {  # a live process (a zombie waiting for its reaper counts as gone)
  local state
  state=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1)
  [[ -n "$state" && "$state" != Z ]]
}

descendants() {
  local child
  for child in $(pgrep -P "$1" 2>/dev/null); do
    descendants "$child"
    echo "$child"
  done
}

kill_tree() {
  local pid=$1 victims
  alive "$pid" || return 0
  victims="$(descendants "$pid") $pid"
  # shellcheck disable=SC2086
  kill -TERM $victims 2>/dev/null
  for _ in 1 2 3 4 5 6 7 8 9 10; do
    alive "$pid" || return 0
    sleep 0.3
  done
  # shellcheck disable=SC2086
  kill -KILL $victims 2>/dev/null
  return 0
}

ctl() {  # ctl "command" -> the daemon's answer on stdout; rc of the CLI
  printf '%s\n' "$1" | CUDA_MPS_PIPE_DIRECTORY="$PIPE" CUDA_MPS_LOG_DIRECTORY="$STAGE/log" timeout 10 "$CTL" 2>&1
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM HUP
  [[ -n "$WATCHDOG" ]] && kill_tree "$WATCHDOG"
  for pid in "${CASE_PIDS[@]}"; do kill_tree "$pid"; done
  if [[ -n "$DAEMON_PID" ]] && alive "$DAEMON_PID"; then
    say "quitting this script's MPS daemon (pid $DAEMON_PID)"
    ctl quit >>"$OUT/run.log" 2>&1
    for _ in $(seq 1 30); do
      alive "$DAEMON_PID" || break
      sleep 0.3
    done
    if alive "$DAEMON_PID"; then
      say "the daemon did not quit: killing pid $DAEMON_PID and its servers"
      kill_tree "$DAEMON_PID"
    fi
  fi
  if [[ -n "$STAGE" && -d "$STAGE" ]]; then
    cp "$STAGE"/log/*.log "$OUT/" 2>/dev/null
    rm -rf "$STAGE"
  fi
  [[ $CREATED_PIPE == 1 ]] && rm -rf "$PIPE"
  if [[ -n "$DAEMON_PID" ]] && alive "$DAEMON_PID"; then
    say "WARNING: pid $DAEMON_PID is still alive"
    rc=3
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'say "interrupted"; exit 130' INT TERM HUP

# --- preconditions ----------------------------------------------------------------------------------------------
[[ $(id -u) -eq 0 ]] || die "run as root: unshare and mount need it"
[[ -n "$CTL" ]] || die "nvidia-cuda-mps-control not found (PATH has /usr/local/nvidia/bin; or set PB_MPS_CONTROL)"
[[ -n "$PY" ]] || die "python3 not found (or set PB_PYTHON)"
[[ -f "$CLIENT_SRC" ]] || die "CUDA client $CLIENT_SRC not found: run from the collection checkout"
command -v unshare >/dev/null || die "unshare (util-linux) not found"
timeout 10 unshare --mount --pid --fork --ipc true || die "unshare --mount --pid --fork --ipc does not work here"
case "$PY$CTL" in /tmp/*) die "python ($PY) and the MPS binaries must not live under /tmp (the cases hide /tmp)" ;; esac
[[ $PIPE == /tmp/?* ]] || die "PB_PIPE ($PIPE) must be under /tmp: the cases hide /tmp to take the pipe away"
[[ $LIMIT =~ ^[0-9]+[MG]$ ]] || die "PB_LIMIT ($LIMIT) must be whole M or G, such as 4G"
[[ $HOLD =~ ^[0-9]+$ && $DEADLINE =~ ^[0-9]+$ ]] || die "PB_HOLD and PB_DEADLINE must be whole seconds"

# Hard stop: whatever hangs, the trap still quits the daemon.
( sleep "$DEADLINE"; echo "[pod_boundary] deadline of $DEADLINE s reached" >&2; kill -TERM $$ ) 2>/dev/null &
WATCHDOG=$!

STAGE=$(mktemp -d /var/tmp/pod_boundary.XXXXXX) || die "cannot create a staging directory in /var/tmp"
mkdir -p "$STAGE/log" "$STAGE/bind"
cp "$CLIENT_SRC" "$STAGE/cuda_client.py"
CLIENT="$STAGE/cuda_client.py"

{
  echo "date: $(date -u +%FT%TZ)"
  echo "host: $(uname -n) kernel $(uname -r)"
  if [[ -n "$SMI" ]]; then
    echo "gpu: $(timeout 20 "$SMI" --query-gpu=index,name,driver_version,compute_mode,mig.mode.current --format=csv,noheader 2>&1)"
  fi
  echo "control binary: $CTL"
  echo "python: $PY ($("$PY" --version 2>&1))"
  echo "unshare: $(unshare --version 2>&1 | head -1)"
  echo "staging directory: $STAGE"
  echo "pipe directory: $PIPE; pinned limit of this daemon: $LIMIT; client hold: $HOLD s"
  echo "MPS processes before the run (not this script's; left alone):"
  pgrep -a nvidia-cuda-mps || echo "  none"
} >"$OUT/env.txt" 2>&1
say "environment in $OUT/env.txt"

# --- this script's MPS daemon -----------------------------------------------------------------------------------
if [[ -e "$PIPE" ]]; then
  if printf 'get_server_list\n' | CUDA_MPS_PIPE_DIRECTORY="$PIPE" timeout 5 "$CTL" >/dev/null 2>&1; then
    die "an MPS daemon already listens on $PIPE and it is not this script's: set PB_PIPE to another directory"
  fi
  rm -rf "$PIPE"
fi
mkdir -p "$PIPE" && CREATED_PIPE=1
chmod 0755 "$PIPE"
CUDA_MPS_PIPE_DIRECTORY="$PIPE" CUDA_MPS_LOG_DIRECTORY="$STAGE/log" timeout 20 "$CTL" -d </dev/null >>"$OUT/run.log" 2>&1 \
  || die "nvidia-cuda-mps-control -d failed (see $OUT/run.log)"
for _ in $(seq 1 50); do
  [[ -s "$PIPE/nvidia-cuda-mps-control.pid" ]] && break
  sleep 0.1
done
DAEMON_PID=$(cat "$PIPE/nvidia-cuda-mps-control.pid" 2>/dev/null)
[[ "$DAEMON_PID" =~ ^[0-9]+$ ]] || die "the daemon wrote no pid file in $PIPE"
say "MPS daemon of this script: pid $DAEMON_PID, pipe $PIPE"
ctl "set_default_device_pinned_mem_limit 0 $LIMIT" >>"$OUT/run.log"
READBACK=$(ctl "get_default_device_pinned_mem_limit 0")
say "default pinned limit of device 0 on this daemon: '$READBACK' (asked $LIMIT)"
LIMIT_MIB=$("$PY" -c "import re,sys; m=re.match(r'(\d+)([MG])', sys.argv[1]); print(int(m.group(1)) * (1024 if m.group(2) == 'G' else 1))" "$LIMIT")

# --- the cases --------------------------------------------------------------------------------------------------
# The script that runs inside the namespaces. Arguments: isolate pipe_mount shm pipe stage python client hold ctl
# shellcheck disable=SC2016
INNER='
set -u
isolate=$1 pipe_mount=$2 shm=$3 pipe=$4 stage=$5 py=$6 client=$7 hold=$8 ctl=$9
if [ "$isolate" = yes ]; then
  mount --make-rprivate / || exit 90
  mount --bind "$pipe" "$stage/bind" || exit 91
  mount -t tmpfs -o mode=1777,size=16m pb_tmp /tmp || exit 92
  if [ "$pipe_mount" = yes ]; then
    mkdir -p "$pipe" && mount --bind "$stage/bind" "$pipe" || exit 93
  fi
  umount "$stage/bind" 2>/dev/null
  if [ "$shm" = private ]; then
    mount -t tmpfs -o mode=1777,size=64m pb_shm /dev/shm || exit 94
  fi
fi
echo "== view: pid $$ ipc $(readlink /proc/self/ns/ipc) pid-ns $(readlink /proc/self/ns/pid) mnt $(readlink /proc/self/ns/mnt)"
echo "== pipe directory $pipe: $(ls -A "$pipe" 2>&1 | tr "\n" " ")"
echo "== /dev/shm: $(df -h /dev/shm 2>/dev/null | tail -1)"
echo "== dialtone"
echo ps | CUDA_MPS_PIPE_DIRECTORY="$pipe" timeout 10 "$ctl" 2>&1
echo "== dialtone rc=$?"
echo "== client"
export CUDA_MPS_PIPE_DIRECTORY="$pipe"
exec timeout $((hold + 40)) "$py" "$client" --hold "$hold"
'

SUMMARY_ROWS=()
TSV="$OUT/summary.tsv"
printf 'case\tnamespaces\tpipe_mount\tdev_shm\tdialtone\tclient\tverdict\tevidence\n' >"$TSV"

client_host_pid() {  # the host PID of the CUDA client under $1
  local pid
  for pid in $(descendants "$1") "$1"; do
    if tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q "cuda_client.py"; then
      # timeout(1) wraps python: take the python, not timeout
      if [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" != timeout ]]; then
        echo "$pid"
        return 0
      fi
    fi
  done
  return 1
}

# run_case NAME NAMESPACES(unshare flags, or "host") PIPE_MOUNT(yes|no) SHM(private|host) DESCRIPTION
run_case() {
  local name=$1 ns=$2 pipe_mount=$3 shm=$4 desc=$5
  local log="$OUT/case_${name}.log" pid hostpid="" nspid="" json="" dial="" client="" verdict evidence=()
  if (( SECONDS - START > DEADLINE - 25 )); then
    say "case $name skipped: too close to the deadline"
    SUMMARY_ROWS+=("$name|$ns|$pipe_mount|$shm|-|-|SKIPPED|deadline")
    printf '%s\t%s\t%s\t%s\t-\t-\tSKIPPED\tdeadline\n' "$name" "$ns" "$pipe_mount" "$shm" >>"$TSV"
    return
  fi
  say "case $name: $desc"
  echo "# case $name: $desc (namespaces: $ns, pipe mount: $pipe_mount, /dev/shm: $shm)" >"$log"
  if [[ $ns == host ]]; then
    bash -c "$INNER" inner no "$pipe_mount" "$shm" "$PIPE" "$STAGE" "$PY" "$CLIENT" "$HOLD" "$CTL" </dev/null >>"$log" 2>&1 &
  else
    # shellcheck disable=SC2086
    unshare $ns -- bash -c "$INNER" inner yes "$pipe_mount" "$shm" "$PIPE" "$STAGE" "$PY" "$CLIENT" "$HOLD" "$CTL" \
      </dev/null >>"$log" 2>&1 &
  fi
  pid=$!
  CASE_PIDS+=("$pid")
  for _ in $(seq 1 100); do   # up to 30 s for the client to hold its context (or fail)
    json=$(grep -m1 '^{.*"pid"' "$log" 2>/dev/null || true)
    [[ -n "$json" ]] && break
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.3
  done
  hostpid=$(client_host_pid "$pid" || true)
  if [[ -n "$json" ]]; then
    nspid=$("$PY" -c 'import json,sys; print(json.loads(sys.argv[1])["pid"])' "$json" 2>/dev/null)
    sleep 1
    {
      echo "== host view: client host pid ${hostpid:-unknown}, pid in its namespace ${nspid:-?}"
      [[ -n "$hostpid" ]] && grep -E '^(NSpid|NStgid)' "/proc/$hostpid/status"
      echo "== host: echo ps | nvidia-cuda-mps-control"
      ctl ps
      echo "== host: get_server_list / get_client_list"
      for srv in $(ctl get_server_list); do
        [[ "$srv" =~ ^[0-9]+$ ]] || continue
        echo "server $srv: clients $(ctl "get_client_list $srv" | tr '\n' ' ')"
      done
      if [[ -n "$SMI" && -n "$hostpid" ]]; then
        echo "== host: nvidia-smi (process rows of the client)"
        timeout 20 "$SMI" 2>&1 | grep -E "^\|\s+[0-9N/A]+\s+[0-9N/A]+\s+[0-9N/A]+\s+$hostpid\s" || echo "(no nvidia-smi row for pid $hostpid)"
      fi
    } >>"$log" 2>&1
  fi
  # Let the client finish its hold; then make sure nothing of this case is left.
  for _ in $(seq 1 $(( (HOLD + 20) * 3 ))); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.33
  done
  kill_tree "$pid"
  wait "$pid" 2>/dev/null
  echo "== case exit: $?" >>"$log"

  # The dial-tone, as the pod would see it.
  dial=$(sed -n '/^== dialtone$/,/^== dialtone rc=/p' "$log")
  if grep -q "Cannot find MPS control daemon" <<<"$dial"; then dial="no daemon"
  elif grep -q "Transport endpoint is not connected" <<<"$dial"; then dial="daemon died"
  elif grep -q "Connection refused" <<<"$dial"; then dial="refused"
  elif grep -qE "Server not found|^PID +ID +SERVER" <<<"$dial"; then dial="answers"
  # A server with no client: `ps` prints nothing and exits 0 (transcript 60): the daemon answered.
  elif [[ "$dial" == $'== dialtone\n== dialtone rc=0' ]]; then dial="answers (idle)"
  elif [[ -z "$dial" ]]; then dial="not run (setup exit $(grep -m1 '^== case exit' "$log" | cut -d' ' -f4))"
  else dial="other: $(sed -n 2p <<<"$dial" | cut -c1-40)"; fi

  # The client: did it run, and through MPS?
  if [[ -z "$json" ]]; then
    client="no report"
  elif grep -q '"error"' <<<"$json"; then
    client="failed: $("$PY" -c 'import json,sys; print(json.loads(sys.argv[1])["error"][:60])' "$json" 2>/dev/null)"
  else
    client="ran"
  fi
  local ps_hit=0 list_hit=0 smi_type="" free_mib=""
  if [[ -n "$hostpid" ]]; then
    sed -n '/^== host: echo ps/,/^== host: get_server_list/p' "$log" | awk 'NR>1 {print $1}' | grep -qx "$hostpid" && ps_hit=1
    grep -E '^server [0-9]+: clients ' "$log" | grep -qw "$hostpid" && list_hit=1
    smi_type=$(grep -E "^\|.*\s$hostpid\s" "$log" | grep -oE '\s(M\+C|C|M|G|C\+G)\s' | head -1 | tr -d ' ')
  fi
  [[ $ps_hit == 1 ]] && evidence+=("pid in ps")
  [[ $list_hit == 1 ]] && evidence+=("pid in get_client_list")
  [[ -n "$smi_type" ]] && evidence+=("nvidia-smi type $smi_type")
  if [[ $client == ran ]]; then
    free_mib=$("$PY" -c 'import json,sys; print(json.loads(sys.argv[1])["free_bytes"] >> 20)' "$json" 2>/dev/null)
    if [[ -n "$free_mib" ]]; then
      if (( free_mib <= LIMIT_MIB )); then evidence+=("sees ${free_mib} MiB free (<= ${LIMIT_MIB} limit)")
      else evidence+=("sees ${free_mib} MiB free (> ${LIMIT_MIB} limit)"); fi
    fi
  fi
  if [[ $client != ran ]]; then
    verdict="CLIENT FAILED"
  elif [[ $ps_hit == 1 || $list_hit == 1 || $smi_type == "M+C" ]] || { [[ -n "$free_mib" ]] && (( free_mib <= LIMIT_MIB )); }; then
    verdict="MPS"
    if [[ $ps_hit == 0 && $list_hit == 0 ]]; then verdict="MPS? (not in ps)"; fi
  else
    verdict="NO MPS (silent fallback)"
  fi
  local ev; ev=$(IFS=';'; echo "${evidence[*]:-none}")
  SUMMARY_ROWS+=("$name|$ns|$pipe_mount|$shm|$dial|$client|$verdict|$ev")
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$ns" "$pipe_mount" "$shm" "$dial" "$client" "$verdict" "$ev" >>"$TSV"
  say "case $name: dial-tone $dial; client $client; $verdict ($ev)"
}

POD="--mount --pid --fork --mount-proc --ipc"
run_case host          host                              yes host    "control: a plain host process (no namespaces)"
run_case pod           "$POD"                            yes private "pod baseline: own mount/PID/IPC ns, pipe mounted, private /dev/shm"
run_case pod_hostipc   "--mount --pid --fork --mount-proc" yes private "hostIPC: the host IPC namespace, else the baseline"
run_case pod_nopipe    "$POD"                            no  private "no pipe mount, else the baseline (expected: no MPS)"
run_case pod_hostshm   "$POD"                            yes host    "the host /dev/shm instead of a private one, else the baseline"
run_case pod_hostpid   "--mount --ipc"                   yes private "hostPID: the host PID namespace, else the baseline"
run_case seed001       "--mount --pid --fork --mount-proc" yes host  "seed 001 with hostIPC true (host IPC ns and host /dev/shm)"

say "daemon after the cases: $(ctl get_server_list | tr '\n' ' ') (servers); ps: $(ctl ps | head -3 | tr '\n' '|')"

# --- summary ------------------------------------------------------------------------------------------------------
{
  echo "MPS pod boundary, $(date -u +%FT%TZ), $(head -3 "$OUT/env.txt" | tail -1)"
  printf '%-12s %-40s %-5s %-8s %-12s %-22s %-26s %s\n' case namespaces pipe dev_shm dial-tone client verdict evidence
  for row in "${SUMMARY_ROWS[@]}"; do
    IFS='|' read -r c n p s d cl v e <<<"$row"
    printf '%-12s %-40s %-5s %-8s %-12s %-22s %-26s %s\n' "$c" "$n" "$p" "$s" "$d" "${cl:0:22}" "$v" "$e"
  done
  echo
  echo "Verdict MPS: the client's host PID is in this daemon's ps/get_client_list. NO MPS (silent fallback):"
  echo "the client ran but MPS never saw it. Logs per case: $OUT/case_*.log; daemon logs: control.log, server.log."
} | tee "$OUT/summary.txt"
say "done in $((SECONDS - START)) s; results in $OUT"
