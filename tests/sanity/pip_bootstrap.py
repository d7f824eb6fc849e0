"""Offline stand-in for ansible-test's get-pip.py download (ansible/ansible#77304).

ansible-test bootstraps pip in each sanity venv with a get-pip script fetched from
ci-files.testing.ansible.com, which air-gapped and proxied machines cannot reach. It first
looks in ~/.ansible/test/cache/get_pip_<version>.py; `make sanity` installs this file there.
It does the same job: bootstrap pip with ensurepip, then install what ansible-test asked for
from the configured package index.
"""
import ensurepip
import os
import subprocess
import sys

ensurepip.bootstrap(upgrade=True)
# ensurepip points PIP_CONFIG_FILE at os.devnull, which hides the machine's pip configuration
# (index URL, certificate bundle); drop it before calling pip.
os.environ.pop("PIP_CONFIG_FILE", None)
args = [a for a in sys.argv[1:] if a not in ("--no-setuptools", "--no-wheel")]
sys.exit(subprocess.call([sys.executable, "-m", "pip", "install", "--disable-pip-version-check"] + args))
