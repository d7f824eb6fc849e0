#!/usr/bin/env bash
# Records the MPS control CLI behaviours that gpulab.mps relies on and that MPS-FACTS.md leaves open.
# Run on a GPU host as root: tests/gpu/explore_cli.sh > docs/evidence/<date>-cli-exploration.txt
# It starts its own daemon on a private pipe directory and quits it at the end; it never changes
# compute mode, clocks, persistence or MIG.
set -u
export PATH=/usr/local/nvidia/bin:$PATH
P=/tmp/gx_pipe L=/tmp/gx_log
CLIENT=plugins/module_utils/_cuda_client.py
rm -rf $P $L; mkdir -p $P $L
ctl() { echo "\$ echo $1 | nvidia-cuda-mps-control"; echo "$1" | CUDA_MPS_PIPE_DIRECTORY=$P CUDA_MPS_LOG_DIRECTORY=$L timeout 20 nvidia-cuda-mps-control; echo "[exit $?]"; }
stop_all() { echo quit | CUDA_MPS_PIPE_DIRECTORY=$P timeout 10 nvidia-cuda-mps-control >/dev/null 2>&1; sleep 1
  pkill -f "nvidia-cuda-mps-control" 2>/dev/null; pkill -f nvidia-cuda-mps-server 2>/dev/null; sleep 0.5; }
trap 'stop_all; echo "== left over:"; pgrep -a nvidia-cuda-mps || echo none' EXIT

echo "== date $(date -u +%FT%TZ); $(nvidia-smi --query-gpu=name,driver_version,compute_mode --format=csv,noheader)"
echo "== pid 1: $(cat /proc/1/comm); /run/systemd/system: $(test -d /run/systemd/system && echo yes || echo no); unshare: $(command -v unshare)"
echo "== 1. -d under Python with captured pipes (does the daemon keep the pipes open?)"
python3 - <<EOF
import os, subprocess, time
t = time.time()
env = dict(os.environ, CUDA_MPS_PIPE_DIRECTORY="$P", CUDA_MPS_LOG_DIRECTORY="$L")
try:
    p = subprocess.run(["nvidia-cuda-mps-control", "-d"], capture_output=True, env=env, timeout=15)
    print("rc", p.returncode, "seconds", round(time.time() - t, 3), p.stdout, p.stderr)
except subprocess.TimeoutExpired:
    print("TIMEOUT after 15 s: the daemon kept the pipes open")
EOF
ls -la $P; cat $P/nvidia-cuda-mps-control.pid; echo
echo "== 2. read-back of sizes and the commands beyond MPS-FACTS"
for v in 512M 1536M 2048M 2G 1.5G 100G 1T 0 -1 2GB; do
  ctl "set_default_device_pinned_mem_limit 0 $v"; ctl "get_default_device_pinned_mem_limit 0"; done
ctl "set_default_device_pinned_mem_limit 7 2G"; ctl "get_default_device_pinned_mem_limit 7"
ctl "set_default_active_thread_percentage 12.5"; ctl "set_default_active_thread_percentage 0"
ctl "set_default_active_thread_percentage 100"
ctl "help"; ctl "get_default_client_priority"
ctl "set_default_device_pinned_mem_limit 0 2G"; ctl "set_default_active_thread_percentage 40"
echo "== 3. a client (ctypes, driver only) holding a context; per-server commands"
(CUDA_MPS_PIPE_DIRECTORY=$P python3 $CLIENT --hold 40 --alloc-mib 256 > /tmp/gx_client.out 2>&1 &)
sleep 4; cat /tmp/gx_client.out
ctl get_server_list; S=$(echo get_server_list | CUDA_MPS_PIPE_DIRECTORY=$P nvidia-cuda-mps-control | head -1)
ctl ps; ctl "get_active_thread_percentage $S"; ctl "get_device_pinned_mem_limit $S 0"
ctl "set_device_pinned_mem_limit $S 0 1G"; ctl "get_device_pinned_mem_limit $S 0"
ctl "shutdown_server $S"; sleep 1; ctl get_server_list
echo "-- server.log"; cat $L/server.log
echo "== 4. a client above the limit (2G default, 3000 MiB allocation)"
CUDA_MPS_PIPE_DIRECTORY=$P timeout 30 python3 $CLIENT --hold 0 --alloc-mib 3000; echo "[exit $?]"
echo "== 5. env defaults on the control daemon (CUDA_MPS_ACTIVE_THREAD_PERCENTAGE, CUDA_MPS_PINNED_DEVICE_MEM_LIMIT)"
stop_all; sleep 1; ls -la $P
CUDA_MPS_PIPE_DIRECTORY=$P CUDA_MPS_LOG_DIRECTORY=$L CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=30 CUDA_MPS_PINNED_DEVICE_MEM_LIMIT=0=3G \
  nvidia-cuda-mps-control -d; echo "[exit $?]"
sleep 0.5; ctl get_default_active_thread_percentage; ctl "get_default_device_pinned_mem_limit 0"
echo "== 6. -d with a stale control socket left by the quit above, then quit -t with a live client"
stop_all; ls -la $P; CUDA_MPS_PIPE_DIRECTORY=$P CUDA_MPS_LOG_DIRECTORY=$L nvidia-cuda-mps-control -d; echo "[exit $?]"; ctl get_server_list
(CUDA_MPS_PIPE_DIRECTORY=$P python3 $CLIENT --hold 30 > /tmp/gx_client2.out 2>&1; echo "client exit $?" >> /tmp/gx_client2.out) &
sleep 4; ctl ps; ctl "quit -t 2"; sleep 4; pgrep -a nvidia-cuda-mps || echo "no mps processes"; cat /tmp/gx_client2.out
echo "== 7. CUDA_DEVICE_ORDER and nvidia-smi -q compute mode (read only)"
nvidia-smi -q | grep -iE "compute mode|MIG Mode|Current *:" | head -5
