#!/usr/bin/env bash
# Fleet rollout at scale: playbooks/fleet.yml over N systemd containers (default 50) with the
# NVIDIA STAND-INS of tests/standins/ (no GPU: the stand-ins replay H100 transcripts). A benchmark,
# not a test: it prints the figures (wall time of each phase, per-host cost) and exits non-zero only
# when the rollout itself fails.
#
#   benchmarks/fleet_scale.sh [N]          (make fleet-scale HOSTS=N)
#
# Environment: FLEET_SERIAL (batch size, default 10), FORKS (default 20), KEEP=1 keeps the
# containers, IMAGE (default gpulab-mps/debian-systemd:bookworm, from tests/images/build.sh).
# Containers run with --network none (docker exec only), as the molecule scenarios do.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

N="${1:-50}"
SERIAL="${FLEET_SERIAL:-10}"
FORKS="${FORKS:-20}"
IMAGE="${IMAGE:-gpulab-mps/debian-systemd:bookworm}"
PREFIX="gpulab-scale"
WORK=$(mktemp -d /tmp/gpulab-fleet-scale.XXXXXX)
export PATH="$ROOT/.venv/bin:$PATH"
export ANSIBLE_CONFIG="$ROOT/ansible.cfg"
export ANSIBLE_FORKS="$FORKS"
export ANSIBLE_COLLECTIONS_PATH="$ROOT/.collections"
# docker exec into 50 booting containers on 2 CPUs can take longer than the default 10 s.
export ANSIBLE_TIMEOUT="${ANSIBLE_TIMEOUT:-60}"
# One docker exec a task instead of four (as SSH pipelining does on a real fleet).
export ANSIBLE_PIPELINING="${ANSIBLE_PIPELINING:-True}"

[[ "$N" =~ ^[1-9][0-9]*$ ]] || { echo "usage: $0 [N]  (N hosts, a positive number)" >&2; exit 2; }
docker info >/dev/null 2>&1 || { echo "no Docker engine answers: start one (see .ci/run)" >&2; exit 1; }
docker image inspect "$IMAGE" >/dev/null 2>&1 || tests/images/build.sh

# Every systemd in a container takes inotify instances from the host's per-user budget; the
# kernel default (128) lets about 25 booting containers start, the next ones exit 255 at once.
need=$((N * 16 + 256))
have=$(cat /proc/sys/fs/inotify/max_user_instances)
if (( have < need )); then
  if [[ $(id -u) -eq 0 ]] && sysctl -qw "fs.inotify.max_user_instances=$need"; then
    echo "raised fs.inotify.max_user_instances from $have to $need for $N systemd containers" >&2
  else
    echo "fs.inotify.max_user_instances is $have; $N systemd containers need about $need: sysctl -w fs.inotify.max_user_instances=$need" >&2
    exit 1
  fi
fi

names=()
for i in $(seq -f '%02g' 1 "$N"); do names+=("$PREFIX-$i"); done

cleanup() {
  if [[ "${KEEP:-0}" != 1 ]]; then
    docker rm -f "${names[@]}" >/dev/null 2>&1 || true
    rm -rf "$WORK"
  else
    echo "kept: containers $PREFIX-*, inventory $WORK/inventory.yml"
  fi
}
trap cleanup EXIT
docker rm -f "${names[@]}" >/dev/null 2>&1 || true

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }

# 1. N systemd containers, no network.
t0=$(now)
for name in "${names[@]}"; do
  docker run -d --name "$name" --hostname "$name" --network none \
    --cap-add SYS_ADMIN --security-opt seccomp=unconfined \
    -v /sys/fs/cgroup:/sys/fs/cgroup:rw --tmpfs /run --tmpfs /run/lock --tmpfs /tmp \
    --label owner=gpulab-fleet-scale "$IMAGE" /sbin/init >/dev/null
done
# Wait until systemd has booted in every container (what a real fleet has before a rollout).
for name in "${names[@]}"; do
  for _ in $(seq 240); do
    state=$(docker exec "$name" busctl get-property org.freedesktop.systemd1 /org/freedesktop/systemd1 \
            org.freedesktop.systemd1.Manager SystemState 2>/dev/null || true)
    [[ "$state" == 's "running"' || "$state" == 's "degraded"' ]] && break
    sleep 0.5
  done
  [[ "$state" == 's "running"' || "$state" == 's "degraded"' ]] || { echo "$name did not boot: $state" >&2; exit 1; }
done
t1=$(now)

{
  echo "gpu_nodes:"
  echo "  vars:"
  echo "    ansible_connection: community.docker.docker"
  echo "    ansible_python_interpreter: /usr/bin/python3"
  echo "    mps_host_pipe_directory: /run/nvidia-mps"
  echo "    mps_host_log_directory: /var/log/nvidia-mps"
  echo "    mps_host_default_active_thread_percentage: 50"
  echo "    mps_dialtone_client_check: false   # no GPU: no CUDA client can run in a container"
  echo "  hosts:"
  for name in "${names[@]}"; do echo "    $name: {}"; done
} >"$WORK/inventory.yml"
cat >"$WORK/prepare.yml" <<PLAY
- name: Install the NVIDIA stand-ins (no GPU in these containers)
  hosts: gpu_nodes
  gather_facts: false
  vars:
    standin_dir: $ROOT/tests/standins
  tasks:
    - name: Import the stand-in installation
      ansible.builtin.import_tasks: $ROOT/tests/standins/install.yml
PLAY
ansible-playbook -i "$WORK/inventory.yml" "$WORK/prepare.yml" >"$WORK/prepare.log" 2>&1 \
  || { grep -m 5 -A 3 -E 'UNREACHABLE|FAILED' "$WORK/prepare.log"; tail -n 5 "$WORK/prepare.log"; exit 1; }
t2=$(now)

# 2. The rollout, then the same rollout again (nothing to change).
rollout() {
  ansible-playbook -i "$WORK/inventory.yml" "$ROOT/playbooks/fleet.yml" -e fleet_hosts=gpu_nodes \
    -e "fleet_serial=$SERIAL" -e "fleet_summary_file=$WORK/summary-$1.json" >"$WORK/rollout-$1.log" 2>&1
}
rollout first || { grep -m 5 -A 3 -E 'UNREACHABLE|FAILED' "$WORK/rollout-first.log"; tail -n 70 "$WORK/rollout-first.log"; exit 1; }
t3=$(now)
rollout second || { grep -m 5 -A 3 -E 'UNREACHABLE|FAILED' "$WORK/rollout-second.log"; tail -n 70 "$WORK/rollout-second.log"; exit 1; }
t4=$(now)

ok_first=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["counts"]["ok"])' "$WORK/summary-first.json")
changed_second=$(awk '/^fleet|^gpulab-scale/ && /changed=/ { sub(/.*changed=/, ""); split($0, a, " "); s += a[1] } END { print s + 0 }' "$WORK/rollout-second.log")
second=$(elapsed "$t3" "$t4")
echo "fleet rollout scale run: $N hosts, serial $SERIAL, forks $FORKS, pipelining $ANSIBLE_PIPELINING, $(nproc) CPUs, $(date -u +%Y-%m-%dT%H:%M:%SZ)"
echo "  containers started and booted:       $(elapsed "$t0" "$t1") s"
echo "  stand-ins installed (prepare):       $(elapsed "$t1" "$t2") s"
echo "  rollout, first run:                  $(elapsed "$t2" "$t3") s   ($(awk -v a="$t2" -v b="$t3" -v n="$N" 'BEGIN { printf "%.2f", (b - a) / n }') s per host; $ok_first of $N nodes ok)"
echo "  rollout, second run (idempotent):    $second s   ($(awk -v a="$t3" -v b="$t4" -v n="$N" 'BEGIN { printf "%.2f", (b - a) / n }') s per host; changed tasks: $changed_second)"
echo "  summary of the first run:"
python3 -c 'import json,sys; t=json.load(open(sys.argv[1]))["table"]; print("\n".join("    " + l for l in t[:5] + ["..."] + t[-2:]))' "$WORK/summary-first.json"
