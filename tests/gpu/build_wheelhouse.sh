#!/usr/bin/env bash
# Build a folder that installs gpulab.mps and what it needs on an air-gapped GPU host:
#   wheels for tests/gpu/requirements.txt (ansible-core, nvidia-ml-py and their dependencies) for the
#   GPU host's Python, and collections/*.tar.gz for the collections gpulab.mps depends on, taken from the
#   `ansible` package installed in .venv (Galaxy need not be reachable).
# Usage: tests/gpu/build_wheelhouse.sh DIR [PYTHON_VERSION]   (make wheelhouse)
set -euo pipefail
dir=${1:?usage: build_wheelhouse.sh DIR [PYTHON_VERSION]}
pyver=${2:-3.12}
here=$(cd "$(dirname "$0")/../.." && pwd)
venv_python=${VENV_PYTHON:-$here/.venv/bin/python}
mkdir -p "$dir/collections"
dir=$(cd "$dir" && pwd)

platforms=()
for n in 17 24 27 28 31 34; do platforms+=(--platform "manylinux_2_${n}_x86_64"); done
"$venv_python" -m pip download --quiet --disable-pip-version-check --only-binary=:all: \
  --python-version "$pyver" --implementation cp "${platforms[@]}" --platform manylinux2014_x86_64 \
  -d "$dir" -r "$here/tests/gpu/requirements.txt"

# The collections gpulab.mps depends on (galaxy.yml), as installable artifacts made from the ones the
# `ansible` package installed (pack_collection.py says why it rewrites FILES.json).
site=$("$venv_python" -c 'import ansible_collections, os; print(os.path.dirname(ansible_collections.__path__[0]))')
deps=$("$venv_python" -c 'import sys, yaml; print(" ".join(yaml.safe_load(open(sys.argv[1]))["dependencies"]))' "$here/galaxy.yml")
# ansible.posix too: its profile_tasks callback times the lab (benchmarks/lab_speed.sh).
# shellcheck disable=SC2086  # one argument per collection
"$venv_python" "$here/tests/gpu/pack_collection.py" "$site" "$dir/collections" $deps ansible.posix
# gpulab.mps itself, built from this checkout.
"$here/.venv/bin/ansible-galaxy" collection build --force --output-path "$dir/collections" "$here" >/dev/null
ls -la "$dir" "$dir/collections"
du -sh "$dir"
