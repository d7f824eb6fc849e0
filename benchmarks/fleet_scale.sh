#!/usr/bin/env bash
# Fleet rollout at scale: playbooks/fleet.yml over N systemd containers with the NVIDIA STAND-INS of
# tests/standins/ (no GPU: the stand-ins replay H100 transcripts). A benchmark, not a test: it prints the
# figures and exits non-zero only when a rollout itself fails or the rerun changes something.
#
#   benchmarks/fleet_scale.sh [N ...]          (make fleet-scale HOSTS="20 50"; default: 20 50)
#
# For each N, ROUNDS times (default 2): N fresh containers, the first rollout, then the same rollout
# again (nothing to change). Per run: wall time and per host, the controller's own CPU seconds
# (ansible-playbook and every process it waited for, the docker CLI included; not the containers) per
# host, changed tasks, the load average before and after, and the slowest tasks (ansible.posix.profile_tasks,
# summed by task name over the batches). Then the best of the rounds.
#
# Environment: FLEET_SERIAL (batch size, default 10), FORKS (default 20), ROUNDS (default 2), KEEP=1 keeps
# the containers of the last round, IMAGE (default gpulab-mps/debian-systemd:bookworm, from
# tests/images/build.sh), FLEET_ARGS (extra ansible-playbook arguments of both rollouts, e.g. -e ...),
# TOP (profile lines shown, default 8), CONNECTION (the hosts' ansible_connection, default community.docker.docker;
# `docker` lets Mitogen's strategy take it over).
# Containers run with --network none (docker exec only), as the molecule scenarios do.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

COUNTS=("$@")
[[ ${#COUNTS[@]} -gt 0 ]] || COUNTS=(20 50)
SERIAL="${FLEET_SERIAL:-10}"
FORKS="${FORKS:-20}"
ROUNDS="${ROUNDS:-2}"
TOP="${TOP:-8}"
IMAGE="${IMAGE:-gpulab-mps/debian-systemd:bookworm}"
# The hosts start from an image that already carries the stand-ins (made below with tests/standins/install.yml
# on one container): installing them on 50 hosts through Ansible took 175 to 227 s a round, and is not what is measured.
STANDIN_IMAGE="gpulab-mps/fleet-scale:standins"
PREFIX="gpulab-scale"
WORK=$(mktemp -d /tmp/gpulab-fleet-scale.XXXXXX)
export PATH="$ROOT/.venv/bin:$PATH"
export ANSIBLE_CONFIG="$ROOT/ansible.cfg"
export ANSIBLE_FORKS="$FORKS"
export ANSIBLE_COLLECTIONS_PATH="$ROOT/.collections"
export ANSIBLE_FORCE_COLOR=0
# docker exec into 50 booting containers on 2 CPUs can take longer than the default 10 s.
export ANSIBLE_TIMEOUT="${ANSIBLE_TIMEOUT:-60}"
# One docker exec a task instead of four (as SSH pipelining does on a real fleet).
export ANSIBLE_PIPELINING="${ANSIBLE_PIPELINING:-True}"

for n in "${COUNTS[@]}"; do
  [[ "$n" =~ ^[1-9][0-9]*$ ]] || { echo "usage: $0 [N ...]  (numbers of hosts)" >&2; exit 2; }
done
[[ "$ROUNDS" =~ ^[1-9][0-9]*$ ]] || { echo "ROUNDS must be a positive number" >&2; exit 2; }
docker info >/dev/null 2>&1 || { echo "no Docker engine answers: start one (see .ci/run)" >&2; exit 1; }
docker image inspect "$IMAGE" >/dev/null 2>&1 || tests/images/build.sh

MAX=$(printf '%s\n' "${COUNTS[@]}" | sort -n | tail -1)
# Every systemd in a container takes inotify instances from the host's per-user budget; the
# kernel default (128) lets about 25 booting containers start, the next ones exit 255 at once.
need=$((MAX * 16 + 256))
have=$(cat /proc/sys/fs/inotify/max_user_instances)
if (( have < need )); then
  if [[ $(id -u) -eq 0 ]] && sysctl -qw "fs.inotify.max_user_instances=$need"; then
    echo "raised fs.inotify.max_user_instances from $have to $need for $MAX systemd containers" >&2
  else
    echo "fs.inotify.max_user_instances is $have; $MAX systemd containers need about $need: sysctl -w fs.inotify.max_user_instances=$need" >&2
    exit 1
  fi
fi

names=()
remove_hosts() { docker ps -aq --filter label=owner=gpulab-fleet-scale | xargs -r docker rm -f >/dev/null 2>&1 || true; }
cleanup() {
  if [[ "${KEEP:-0}" != 1 ]]; then
    remove_hosts
    rm -rf "$WORK"
  else
    echo "kept: containers $PREFIX-*, inventory and logs in $WORK"
  fi
}
trap cleanup EXIT
remove_hosts

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }
loadavg() { cut -d' ' -f1-3 /proc/loadavg; }

run_container() {
  docker run -d --name "$1" --hostname "$1" --network none \
    --cap-add SYS_ADMIN --security-opt seccomp=unconfined \
    -v /sys/fs/cgroup:/sys/fs/cgroup:rw --tmpfs /run --tmpfs /run/lock --tmpfs /tmp \
    --label owner=gpulab-fleet-scale "$2" /sbin/init >/dev/null
}

inventory() {  # inventory FILE NAME...
  local file=$1; shift
  {
    echo "gpu_nodes:"
    echo "  vars:"
    echo "    ansible_connection: ${CONNECTION:-community.docker.docker}"
    echo "    ansible_python_interpreter: /usr/bin/python3"
    echo "    mps_host_pipe_directory: /run/nvidia-mps"
    echo "    mps_host_log_directory: /var/log/nvidia-mps"
    echo "    mps_host_default_active_thread_percentage: 50"
    echo "    mps_dialtone_client_check: false   # no GPU: no CUDA client can run in a container"
    echo "  hosts:"
    for name in "$@"; do echo "    $name: {}"; done
  } >"$file"
}

# 0. The image with the stand-ins: tests/standins/install.yml on one container, committed.
t=$(now)
run_container "$PREFIX-image" "$IMAGE"
inventory "$WORK/image-inventory.yml" "$PREFIX-image"
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
ansible-playbook -i "$WORK/image-inventory.yml" "$WORK/prepare.yml" >"$WORK/prepare.log" 2>&1 \
  || { grep -m 5 -A 3 -E 'UNREACHABLE|FAILED' "$WORK/prepare.log"; tail -n 5 "$WORK/prepare.log"; exit 1; }
docker commit "$PREFIX-image" "$STANDIN_IMAGE" >/dev/null
docker rm -f "$PREFIX-image" >/dev/null
echo "image $STANDIN_IMAGE (the stand-ins installed by tests/standins/install.yml): $(elapsed "$t" "$(now)") s"

boot() {  # boot N: N fresh containers, systemd booted in each (what a real fleet has before a rollout)
  remove_hosts
  names=()
  for i in $(seq -f '%02g' 1 "$1"); do names+=("$PREFIX-$i"); done
  for name in "${names[@]}"; do run_container "$name" "$STANDIN_IMAGE"; done
  for name in "${names[@]}"; do
    for _ in $(seq 240); do
      state=$(docker exec "$name" busctl get-property org.freedesktop.systemd1 /org/freedesktop/systemd1 \
              org.freedesktop.systemd1.Manager SystemState 2>/dev/null || true)
      [[ "$state" == 's "running"' || "$state" == 's "degraded"' ]] && break
      sleep 0.5
    done
    [[ "$state" == 's "running"' || "$state" == 's "degraded"' ]] || { echo "$name did not boot: $state" >&2; exit 1; }
  done
}

# rollout LABEL N: one run of playbooks/fleet.yml, timed by /usr/bin/time (wall, controller user + sys CPU).
# Prints one line of figures: label wall cpu changed ok load_before load_after
rollout() {
  local label=$1 n=$2 log="$WORK/rollout-$1.log" before after
  before=$(loadavg)
  # shellcheck disable=SC2086
  ANSIBLE_CALLBACKS_ENABLED=ansible.posix.profile_tasks PROFILE_TASKS_TASK_OUTPUT_LIMIT=all PROFILE_TASKS_SUMMARY_ONLY=true \
    /usr/bin/time -f '%e %U %S' -o "$WORK/time-$label" \
    ansible-playbook -i "$WORK/inventory.yml" "$ROOT/playbooks/fleet.yml" -e fleet_hosts=gpu_nodes \
      -e "fleet_serial=$SERIAL" -e "fleet_summary_file=$WORK/summary-$label.json" ${FLEET_ARGS:-} >"$log" 2>&1 \
    || { grep -m 5 -A 3 -E 'UNREACHABLE|FAILED' "$log"; tail -n 70 "$log"; return 1; }
  after=$(loadavg)
  local wall cpu changed ok
  read -r wall cpu < <(awk '{ printf "%.1f %.1f\n", $1, $2 + $3 }' "$WORK/time-$label")
  changed=$(awk -v p="$PREFIX" '$0 ~ "^" p && /changed=/ { sub(/.*changed=/, ""); split($0, a, " "); s += a[1] } END { print s + 0 }' "$log")
  ok=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["counts"]["ok"])' "$WORK/summary-$label.json")
  echo "$label $wall $cpu $changed $ok ${before// /,} ${after// /,}"
}

# The slowest tasks of a run: profile_tasks' lines, summed by task name (a role's tasks are included once a batch).
top_tasks() {
  python3 - "$1" "$TOP" <<'PY'
import collections, re, sys
lines = open(sys.argv[1]).read().split("TASKS RECAP", 1)[-1].splitlines()
total = collections.Counter()
for line in lines:
    m = re.match(r"^(.*?) -{2,} +(\d+\.\d+)s$", line.strip())
    if m:
        total[m.group(1).strip()] += float(m.group(2))
for name, secs in total.most_common(int(sys.argv[2])):
    print("      %7.1f s  %s" % (secs, name))
PY
}

declare -A best_first best_second
fail=0
echo "fleet rollout scale run: hosts ${COUNTS[*]}, serial $SERIAL, forks $FORKS, pipelining $ANSIBLE_PIPELINING, strategy ${ANSIBLE_STRATEGY:-linear}, $ROUNDS round(s), $(nproc) CPUs, commit $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- playbooks roles plugins || echo '+changes'), $(date -u +%Y-%m-%dT%H:%M:%SZ)"
for n in "${COUNTS[@]}"; do
  for round in $(seq "$ROUNDS"); do
    t=$(now)
    boot "$n"
    inventory "$WORK/inventory.yml" "${names[@]}"
    echo "$n hosts, round $round: $n containers booted in $(elapsed "$t" "$(now)") s"
    for phase in first second; do
      label="$n-$round-$phase"
      if ! figures=$(rollout "$label" "$n"); then
        echo "$figures"; echo "  $phase rollout FAILED (log: $WORK/rollout-$label.log)"; fail=1; break 2
      fi
      read -r _ wall cpu changed ok before after <<<"$figures"
      printf '  %-6s rollout: %6.1f s  (%5.2f s a host)  controller CPU %6.1f s (%4.2f s a host)  changed %-3s ok %s/%s  load %s -> %s\n' \
        "$phase" "$wall" "$(awk -v w="$wall" -v n="$n" 'BEGIN { print w / n }')" "$cpu" \
        "$(awk -v c="$cpu" -v n="$n" 'BEGIN { print c / n }')" "$changed" "$ok" "$n" "$before" "$after"
      top_tasks "$WORK/rollout-$label.log"
      [[ "$ok" == "$n" ]] || { echo "  only $ok of $n nodes ok"; fail=1; }
      if [[ $phase == second && "$changed" != 0 ]]; then echo "  the rerun CHANGED $changed task(s)"; fail=1; fi
      if [[ $phase == first ]]; then key=best_first; else key=best_second; fi
      declare -n best=$key
      if [[ -z "${best[$n]:-}" ]] || awk -v a="$wall" -v b="${best[$n]%% *}" 'BEGIN { exit !(a < b) }'; then
        best[$n]="$wall $cpu"
      fi
      unset -n best
    done
  done
  [[ $fail == 0 ]] || break
done
echo "best of $ROUNDS (wall s, s a host, controller CPU s a host):"
for n in "${COUNTS[@]}"; do
  [[ -n "${best_first[$n]:-}" && -n "${best_second[$n]:-}" ]] || continue
  read -r fw fc <<<"${best_first[$n]}"
  read -r sw sc <<<"${best_second[$n]}"
  awk -v n="$n" -v fw="$fw" -v fc="$fc" -v sw="$sw" -v sc="$sc" 'BEGIN {
    printf "  %3d hosts: first rollout %6.1f s (%.2f, CPU %.2f)   no-change rerun %6.1f s (%.2f, CPU %.2f)\n",
      n, fw, fw / n, fc / n, sw, sw / n, sc / n }'
done
echo "summary of the last first run:"
last=$(ls -t "$WORK"/summary-*-first.json 2>/dev/null | head -1)
[[ -n "$last" ]] && python3 -c 'import json,sys; t=json.load(open(sys.argv[1]))["table"]; print("\n".join("  " + l for l in t[:4] + ["  ..."] + t[-1:]))' "$last"
exit "$fail"
