#!/usr/bin/env bash
# The GPU lane: run on a GPU host (NVIDIA driver 550+, MPS binaries), as root, from a checkout.
#
#   tests/gpu/run.sh [--wheels DIR] [--out DIR]      (make gpu-lane WHEELS=DIR)
#
# 1. Installs ansible-core and nvidia-ml-py into .venv-gpu, and gpulab.mps with the collections it
#    depends on into build/gpu-collections: from DIR (made by `make wheelhouse` on a machine with
#    internet) when --wheels is given, which is how air-gapped GPU hosts get them; else from PyPI and
#    the checkout's own .venv.
# 2. Runs tests/gpu/lane.yml: the modules against the real driver and MPS.
# 3. Runs site.yml's host stages twice on localhost and checks that the second run changes nothing,
#    timing both (cold and warm); does the seeds' experiment (--tags host,workload: cuda_workload_python auto; its
#    table in OUT/workload/<host>/seed_experiment.md and .json);
#    sets new defaults through site.yml (must change, then not), rolls fleet.yml out to this one host,
#    runs teardown.yml (no daemon may answer after it), and runs the benchmark playbook (--quick).
# Everything it prints also goes to OUT/gpu-lane.log (default build/gpu-lane).
set -euo pipefail
cd "$(dirname "$0")/../.."
wheels="" out="build/gpu-lane"
while [ $# -gt 0 ]; do
  case "$1" in
    --wheels) wheels=$(cd "$2" && pwd); shift 2 ;;
    --out) out=$2; shift 2 ;;
    *) echo "usage: $0 [--wheels DIR] [--out DIR]" >&2; exit 2 ;;
  esac
done
mkdir -p "$out" && out=$(cd "$out" && pwd)
exec > >(tee "$out/gpu-lane.log") 2>&1

step() { printf '\n=== %s (%s)\n' "$*" "$(date -u +%H:%M:%S)"; }
# The PLAY RECAP line of a playbook's log; empty (judged a failure below) when the playbook never got that far.
recap_of() { grep -E '^localhost +:' "$1" || true; }
export PATH="$PWD/.venv-gpu/bin:/usr/local/nvidia/bin:$PATH"
export ANSIBLE_CONFIG="$PWD/ansible.cfg" ANSIBLE_FORCE_COLOR=0 PYTHONUNBUFFERED=1
collections="$PWD/build/gpu-collections"

step "host"
date -u +%FT%TZ; uname -r
nvidia-smi --query-gpu=index,name,driver_version,memory.total,compute_mode --format=csv,noheader || echo "nvidia-smi: not found or failed"
python3 --version

step "install (wheels: ${wheels:-none, from the network})"
tests/gpu/install_venv.sh .venv-gpu "$wheels"
if [ -n "$wheels" ]; then
  tarballs=("$wheels"/collections/*.tar.gz)
else
  rm -rf build/gpu-wheels && tests/gpu/build_wheelhouse.sh build/gpu-wheels >/dev/null
  tarballs=(build/gpu-wheels/collections/*.tar.gz)
fi
rm -rf "$collections"
# The collections gpulab.mps depends on from the tarballs; gpulab.mps itself is this checkout (a link), so that the
# lane tests the working tree, never a tarball built earlier.
deps=()
for t in "${tarballs[@]}"; do [[ $(basename "$t") == gpulab-mps-* ]] || deps+=("$t"); done
ansible-galaxy collection install --offline --force -p "$collections" "${deps[@]}"
mkdir -p "$collections/ansible_collections/gpulab"
ln -sfn "$PWD" "$collections/ansible_collections/gpulab/mps"
export ANSIBLE_COLLECTIONS_PATH="$collections"
ansible --version | head -1
ansible-galaxy collection list -p "$collections" 2>/dev/null | grep -E "gpulab|kubernetes|docker"
for m in driver_check gpu_info mps_daemon mps_info mps_client_probe; do
  ansible-doc "gpulab.mps.$m" | head -1
done

step "lane: the modules against the real driver and MPS"
ansible-playbook tests/gpu/lane.yml -e "ansible_python_interpreter=$PWD/.venv-gpu/bin/python"

step "site.yml host stages, cold"
site=(ansible-playbook site.yml -i inventories/lab --tags host)
start=$(date +%s%N); "${site[@]}" | tee "$out/site-cold.log"; cold=$(( ($(date +%s%N) - start) / 1000000 ))
step "site.yml host stages, warm (must change nothing)"
start=$(date +%s%N); "${site[@]}" | tee "$out/site-warm.log"; warm=$(( ($(date +%s%N) - start) / 1000000 ))
recap=$(recap_of "$out/site-warm.log")
step "site.yml: the seeds' experiment under the lab's daemon (--tags host,workload), its table last"
rm -rf build/workload
ansible-playbook site.yml -i inventories/lab --tags host,workload \
  | tee "$out/site-workload.log" || true  # judged by its recap below
workload_recap=$(recap_of "$out/site-workload.log")
cp -r build/workload "$out/workload" 2>/dev/null || echo "no table written (build/workload)"

step "site.yml with new defaults (50 %, 8G, idle servers restarted): must change, then must not"
defaults=(-e mps_host_default_active_thread_percentage=50 -e mps_host_default_pinned_memory_limit=8G
          -e mps_host_apply_to_running=restart)
ansible-playbook site.yml -i inventories/lab --tags host "${defaults[@]}" | tee "$out/site-defaults.log" || true
ansible-playbook site.yml -i inventories/lab --tags host "${defaults[@]}" | tee "$out/site-defaults-again.log" || true
defaults_recap=$(recap_of "$out/site-defaults.log")
defaults_again_recap=$(recap_of "$out/site-defaults-again.log")
# Ad hoc output, as JSON: the module's result, indented (ansible.cfg asks for YAML elsewhere).
ANSIBLE_CALLBACK_RESULT_FORMAT=json ansible localhost -i inventories/lab -m gpulab.mps.mps_info -a pipe_directory=/tmp/nvidia-mps \
  | tee "$out/info-defaults.log" || true

step "fleet.yml with this host as the fleet (settings already in place: must change nothing)"
ansible-playbook playbooks/fleet.yml -i inventories/lab -e fleet_hosts=gpu_hosts \
  -e "fleet_summary_file=$out/fleet-summary.json" | tee "$out/fleet.log" || true
fleet_recap=$(recap_of "$out/fleet.log")

step "teardown.yml: the lab's daemon goes"
ansible-playbook playbooks/teardown.yml -i inventories/lab | tee "$out/teardown.log" || true
teardown_recap=$(recap_of "$out/teardown.log")
after_teardown=$(echo get_server_list | CUDA_MPS_PIPE_DIRECTORY=/tmp/nvidia-mps nvidia-cuda-mps-control 2>&1 || true)
echo "after teardown, get_server_list on /tmp/nvidia-mps: $after_teardown"

step "stop the lab's daemon (a safety net: teardown should have done it)"
# All of it: cutting the output short (head) kills ansible with a broken pipe.
ansible localhost -i inventories/lab -m gpulab.mps.mps_daemon -a "state=stopped force=true timeout=5"

# LANE_SKIP_BENCHMARK=1 leaves it out when device time is short (tests/unit/benchmarks runs the same playbook
# against fakes; the summary says it was skipped).
if [ "${LANE_SKIP_BENCHMARK:-0}" = 1 ]; then
  bench_recap="skipped (LANE_SKIP_BENCHMARK=1) failed=0"
else
  step "the benchmark playbook, quick (make benchmark ANSIBLE_ARGS=...)"
  ansible-playbook playbooks/benchmark.yml -i inventories/lab \
    -e '{"benchmark_args": ["--quick"]}' -e "benchmark_fetch_to=$out/benchmark" \
    | tee "$out/benchmark-playbook.log" || true
  bench_recap=$(recap_of "$out/benchmark-playbook.log")
fi

step "summary"
echo "lane: passed (tests/gpu/lane.yml)"
printf 'site.yml --tags host: cold %d.%03d s, warm %d.%03d s\n' $((cold / 1000)) $((cold % 1000)) $((warm / 1000)) $((warm % 1000))
echo "warm run recap: $recap"
echo "workload run recap: $workload_recap"
echo "benchmark playbook recap: $bench_recap"
echo "new defaults recap: $defaults_recap"
echo "new defaults again recap: $defaults_again_recap"
echo "fleet recap: $fleet_recap"
echo "teardown recap: $teardown_recap"
fail=0
for r in "$workload_recap" "$bench_recap" "$defaults_recap" "$fleet_recap" "$teardown_recap"; do
  grep -qE 'failed=0' <<<"$r" || { echo "FAIL: a playbook failed: $r"; fail=1; }
done
grep -qE 'changed=[1-9]' <<<"$defaults_recap" || { echo "FAIL: new defaults changed nothing"; fail=1; }
if ! grep -q '"active_thread_percentage": 50.0' "$out/info-defaults.log" || ! grep -q '"0": "8G"' "$out/info-defaults.log"; then
  echo "FAIL: mps_info does not read back 50 % and 8G"; fail=1
fi
grep -qE 'changed=0 .*failed=0' <<<"$defaults_again_recap" || { echo "FAIL: the new defaults were not idempotent"; fail=1; }
grep -q "Cannot find MPS control daemon" <<<"$after_teardown" || { echo "FAIL: a daemon still answers after teardown"; fail=1; }
[ "$fail" = 0 ] || exit 1
if ! grep -qE 'changed=0 .*failed=0' <<<"$recap"; then
  echo "FAIL: the second site.yml run changed something or failed"; exit 1
fi
echo "GPU lane passed"
