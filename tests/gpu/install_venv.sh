#!/usr/bin/env bash
# Make VENV and install tests/gpu/requirements.txt (ansible-core, nvidia-ml-py) into it: offline from the
# wheel folder WHEELS (made by `make wheelhouse`) when given, else from the package index.
# Used by tests/gpu/run.sh and by `make lab WHEELS=dir`. Offline it installs with --no-compile: Python compiles what
# ansible imports when it first runs, instead of every file of ansible-core up front (a cold `make lab` is shorter).
#
#   tests/gpu/install_venv.sh VENV [WHEELS]        (PYTHON: the Python to make it with, default python3)
set -euo pipefail
venv=${1:?usage: install_venv.sh VENV [WHEELS]}
wheels=${2:-}
python=${PYTHON:-python3}
requirements="$(cd "$(dirname "$0")" && pwd)/requirements.txt"
# Some Pythons ship without ensurepip: then the host's pip installs into a venv made without one.
if "$python" -m venv "$venv" 2>/dev/null && "$venv/bin/python" -m pip --version >/dev/null 2>&1; then
  pip=("$venv/bin/python" -m pip)
else
  rm -rf "$venv"
  "$python" -m venv --without-pip "$venv"
  pip=("$python" -m pip --python "$venv/bin/python")
fi
if [ -n "$wheels" ]; then
  "${pip[@]}" install --quiet --disable-pip-version-check --no-compile --no-index --find-links "$wheels" -r "$requirements"
else
  "${pip[@]}" install --quiet --disable-pip-version-check -r "$requirements"
fi
