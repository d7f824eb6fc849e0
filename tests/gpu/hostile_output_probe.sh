#!/usr/bin/env bash
# What the real nvidia-cuda-mps-control prints when other users choose the text (issue 20): clients whose argv[0]
# holds a newline, \x1e, bytes that are not UTF-8 and forged ps rows, and odd commands sent to the control socket by
# a non-root user. Run as root on a GPU host, on a daemon of its own (a private pipe and log directory):
#   sudo tests/gpu/hostile_output_probe.sh OUT_DIR
# OUT_DIR gets the raw answers (ps, get_server_list, get_client_list) and control.log / server.log; they are copied
# into tests/unit/fixtures/h200-hostile/ as fixtures of the parsers' tests. About 30 s.
set -u
OUT=${1:?usage: hostile_output_probe.sh OUT_DIR}
mkdir -p "$OUT"
CTL=$(command -v nvidia-cuda-mps-control || ls /usr/local/nvidia/bin/nvidia-cuda-mps-control /usr/bin/nvidia-cuda-mps-control 2>/dev/null | head -1)
[ -n "$CTL" ] || { echo "nvidia-cuda-mps-control not found" >&2; exit 2; }
BASE=$(mktemp -d /run/gpulab-hostile-XXXXXX)
chmod 755 "$BASE"
export CUDA_MPS_PIPE_DIRECTORY=$BASE/pipe CUDA_MPS_LOG_DIRECTORY=$BASE/log
mkdir -m 755 "$CUDA_MPS_PIPE_DIRECTORY" "$CUDA_MPS_LOG_DIRECTORY"
NOBODY=65534
say() { echo "== $*" | tee -a "$OUT/steps.txt"; }
ctl() { printf '%s\n' "$1" | timeout 10 "$CTL"; echo "[exit $?]"; }
as_nobody() { setpriv --reuid=$NOBODY --regid=$NOBODY --clear-groups -- "$@"; }

cat > "$BASE/client.py" <<'EOF'
import ctypes, sys, time
cuda = ctypes.CDLL("libcuda.so.1")
dev, ctx = ctypes.c_int(), ctypes.c_void_p()
rc = [cuda.cuInit(0), cuda.cuDeviceGet(ctypes.byref(dev), 0), cuda.cuCtxCreate_v2(ctypes.byref(ctx), 0, dev)]
print("client", rc, flush=True)
time.sleep(float(sys.argv[1]))
EOF
chmod 644 "$BASE/client.py"
PY=$(command -v python3)

say "$(date -u +%FT%TZ) $(hostname) $("$CTL" -v 2>&1 | head -1) driver $(cat /proc/driver/nvidia/version 2>/dev/null | head -1)"
nvidia-smi -L >> "$OUT/steps.txt" 2>&1
"$CTL" -d; echo "start rc=$?" >> "$OUT/steps.txt"
sleep 1
# A plain client first: the server it starts is the one the forged rows name.
( exec -a python3 "$PY" "$BASE/client.py" 60 ) > "$OUT/client-plain.txt" 2>&1 &
PLAIN=$!
for _ in $(seq 50); do SRV=$(ctl get_server_list | head -1); [[ $SRV =~ ^[0-9]+$ ]] && break; sleep 0.2; done
sleep 2
say "plain client $PLAIN, server $SRV"
( exec -a $'job\nsecond line of argv0' "$PY" "$BASE/client.py" 60 ) > /dev/null 2>&1 &
NL=$!
( exec -a $'rs\x1eafter-rs\x1cfs\x85nel\xe2\x80\xa8ls' "$PY" "$BASE/client.py" 60 ) > /dev/null 2>&1 &
RS=$!
( exec -a $'bad\xff\xfe\xc3utf8 \xb2\xd9\xa3' "$PY" "$BASE/client.py" 60 ) > /dev/null 2>&1 &
BAD=$!
FORGED=$(printf 'x\n%-10s%-10s%-15s%-26s%-15s%-15s\n%-10s%-10s%-15s%-26s%-15s%-15s' \
  4242 9 "$SRV" GPU-00000000-0000-0000 4026531836 forged-other-pid \
  "$PLAIN" 7 "$SRV" GPU-ffffffff-ffff-ffff 4026531836 forged-copy-of-plain)
( exec -a "$FORGED" "$PY" "$BASE/client.py" 60 ) > /dev/null 2>&1 &
FORGE=$!
LOGLINE=$(printf 'y\n[2026-12-04 00:00:00.000 Control %6d] Try shutting down server %d, backoff is disabled' 1 "$SRV")
( exec -a "$LOGLINE" "$PY" "$BASE/client.py" 60 ) > /dev/null 2>&1 &
FLOG=$!
sleep 6
say "clients: plain $PLAIN newline $NL rs $RS bad-utf8 $BAD forged-rows $FORGE forged-log-line $FLOG"
printf 'ps\n' | timeout 10 "$CTL" > "$OUT/ps.raw"; echo "ps rc=$?" >> "$OUT/steps.txt"
printf 'get_server_list\n' | timeout 10 "$CTL" > "$OUT/get_server_list.raw"
printf 'get_client_list %s\n' "$SRV" | timeout 10 "$CTL" > "$OUT/get_client_list.raw"
od -c "$OUT/ps.raw" > "$OUT/ps.od.txt"
say "ps as nobody"
printf 'ps\n' | as_nobody timeout 10 "$CTL" > "$OUT/ps-nobody.raw"; echo "rc=$?" >> "$OUT/steps.txt"

say "odd commands from a non-root user"
for cmd in "shutdown_server $SRV" $'get_server_list \x1e[2026-12-04 00:00:00.000 Control      1] Try shutting down server '"$SRV" \
           $'frob\xc3\xa9 \xff' "quit" "set_default_active_thread_percentage 1" "terminate_client $SRV $PLAIN"; do
  printf '%s\n' "$cmd" | as_nobody timeout 10 "$CTL" >> "$OUT/nobody-answers.txt" 2>&1; echo "[exit $?]" >> "$OUT/nobody-answers.txt"
done
say "a raw socket command holding a newline, from a non-root user"
as_nobody timeout 10 "$PY" - "$CUDA_MPS_PIPE_DIRECTORY/control" "$SRV" > "$OUT/raw-socket.txt" 2>&1 <<'EOF'
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(3)
s.connect(sys.argv[1])
s.sendall(("get_server_list\n[2026-12-04 00:00:00.000 Control      1] Try shutting down server %s, backoff is disabled\n" % sys.argv[2]).encode())
try:
    print(repr(s.recv(4096)))
except Exception as error:
    print("recv:", error)
s.close()
EOF

say "root: shutdown_server with clients attached, then the clients end"
ctl "shutdown_server $SRV" >> "$OUT/steps.txt"
sleep 1
kill $PLAIN $NL $RS $BAD $FORGE $FLOG 2>/dev/null
wait $PLAIN $NL $RS $BAD $FORGE $FLOG 2>/dev/null
sleep 2
ctl get_server_list >> "$OUT/steps.txt"

say "root: a new server, no client left, shutdown_server"
( exec -a python3 "$PY" "$BASE/client.py" 3 ) > /dev/null 2>&1 &
C2=$!
for _ in $(seq 50); do SRV2=$(ctl get_server_list | head -1); [[ $SRV2 =~ ^[0-9]+$ ]] && break; sleep 0.2; done
wait $C2
sleep 1
ctl "shutdown_server $SRV2" >> "$OUT/steps.txt"
sleep 2
ctl get_server_list >> "$OUT/steps.txt"

say "root: a third server, killed with SIGKILL"
( exec -a python3 "$PY" "$BASE/client.py" 3 ) > /dev/null 2>&1 &
C3=$!
for _ in $(seq 50); do SRV3=$(ctl get_server_list | head -1); [[ $SRV3 =~ ^[0-9]+$ ]] && break; sleep 0.2; done
wait $C3
kill -9 "$SRV3"
sleep 2
say "servers $SRV $SRV2 $SRV3"
ctl quit >> "$OUT/steps.txt"
sleep 2
cp "$CUDA_MPS_LOG_DIRECTORY/control.log" "$OUT/control.log"
cp "$CUDA_MPS_LOG_DIRECTORY/server.log" "$OUT/server.log"
ls -la "$CUDA_MPS_PIPE_DIRECTORY" >> "$OUT/steps.txt"
rm -rf "$BASE"
say done
