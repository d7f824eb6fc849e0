#!/usr/bin/env bash
# How long the lab takes on a GPU host: `make lab WHEELS=DIR` cold (a new venv, installed offline from the
# wheelhouse, then every stage of site.yml), then `ansible-playbook site.yml -i inventories/lab --tags host` warm RUNS
# times (changed=0 expected),
# each timed, with ansible.posix.profile_tasks. A benchmark, not a test: it prints the figures (best of the warm
# runs, every run, the slowest tasks of the best one) and exits non-zero only when a run fails.
#
#   benchmarks/lab_speed.sh --wheels DIR [--runs 3] [--out DIR]      (as root, on the GPU host, from a checkout)
set -uo pipefail
cd "$(dirname "$0")/.."
wheels="" runs=3 out=build/lab-speed
while [ $# -gt 0 ]; do
  case "$1" in
    --wheels) wheels=$2; shift 2 ;;
    --runs) runs=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    *) echo "usage: $0 --wheels DIR [--runs N] [--out DIR]" >&2; exit 2 ;;
  esac
done
[ -n "$wheels" ] || { echo "usage: $0 --wheels DIR [--runs N] [--out DIR]" >&2; exit 2; }
mkdir -p "$out" && out=$(cd "$out" && pwd)
export ANSIBLE_CALLBACKS_ENABLED=ansible.posix.profile_tasks PROFILE_TASKS_TASK_OUTPUT_LIMIT=8 ANSIBLE_FORCE_COLOR=0
ms() { echo $(( ($(date +%s%N) - $1) / 1000000 )); }
secs() { printf '%d.%03d' $(($1 / 1000)) $(($1 % 1000)); }
recap() { grep -E '^localhost +:' "$1" | tail -1; }
fail=0

rm -rf .venv-offline .collections/ansible_collections/kubernetes .collections/ansible_collections/community \
  .collections/ansible_collections/ansible
start=$(date +%s%N)
make lab WHEELS="$wheels" >"$out/make-lab-cold.log" 2>&1 || fail=1
cold=$(ms "$start")

# What a user types once the lab is installed: ansible-playbook site.yml -i inventories/lab --tags host.
export PATH="$PWD/.venv-offline/bin:$PATH" ANSIBLE_CONFIG="$PWD/ansible.cfg"
warm=()
for i in $(seq "$runs"); do
  start=$(date +%s%N)
  ansible-playbook site.yml -i inventories/lab --tags host >"$out/site-host-warm-$i.log" 2>&1 || fail=1
  warm+=("$(ms "$start")")
  grep -qE 'changed=0 .*failed=0' <(recap "$out/site-host-warm-$i.log") || { echo "warm run $i changed something or failed"; fail=1; }
done
best=0
for i in "${!warm[@]}"; do
  if [ "$best" = 0 ] || [ "${warm[$i]}" -lt "${warm[$((best - 1))]}" ]; then best=$((i + 1)); fi
done

echo "lab speed on $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null || hostname), $(date -u +%FT%TZ)"
echo "  make lab WHEELS=$wheels, cold (venv + offline install + every stage):  $(secs "$cold") s"
echo "    $(recap "$out/make-lab-cold.log")"
for i in "${!warm[@]}"; do
  echo "  site.yml --tags host, warm run $((i + 1)):  $(secs "${warm[$i]}") s   $(recap "$out/site-host-warm-$((i + 1)).log" | sed 's/  */ /g')"
done
echo "  best warm: $(secs "${warm[$((best - 1))]}") s (run $best); its slowest tasks (profile_tasks):"
sed -n '/^=====/,$p' "$out/site-host-warm-$best.log" | sed -n '2,9p' | sed 's/^/    /'
echo "  the cold run's slowest tasks:"
sed -n '/^=====/,$p' "$out/make-lab-cold.log" | sed -n '2,9p' | sed 's/^/    /'
# The lab's daemon goes again: a benchmark leaves nothing running.
make teardown WHEELS="$wheels" >"$out/make-teardown.log" 2>&1 || { echo "make teardown failed"; fail=1; }
echo "  teardown: $(recap "$out/make-teardown.log" | sed 's/  */ /g')"
exit "$fail"
