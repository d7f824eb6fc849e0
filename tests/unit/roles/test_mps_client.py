# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The role mps_client: the collection's client (the import closure of _mps_cli.py and _mps_metrics.py, one list in
roles/mps_client/vars/main.yml), its entry point and the host's plan, installed through ansible-playbook on this
machine in temporary directories, then run as the unit runs it (python3 -I, from another directory)."""

from __future__ import annotations

import ast
import json
import os
import stat
import subprocess
import sys

import pytest
import yaml

from test_site_host import ROOT, recap, site

ROLE = os.path.join(ROOT, "roles", "mps_client")
MODULE_UTILS = os.path.join(ROOT, "plugins", "module_utils")
PACKAGE = "ansible_collections.gpulab.mps.plugins.module_utils"


def role_list():
    with open(os.path.join(ROLE, "vars", "main.yml")) as handle:
        return yaml.safe_load(handle)["__mps_client_module_utils"]


def imports_of(name):
    """The collection's module_utils that module_utils/<name> imports (any form of import)."""
    with open(os.path.join(MODULE_UTILS, name)) as handle:
        tree = ast.parse(handle.read())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == PACKAGE:
            found.update(alias.name + ".py" for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith(PACKAGE + "."):
            found.add(node.module.split(".")[-1] + ".py")
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[-1] + ".py" for a in node.names if a.name.startswith(PACKAGE + "."))
    return found


def closure(*roots):
    seen, todo = set(), list(roots)
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(imports_of(name))
    return seen


def test_the_role_installs_exactly_the_import_closure_of_the_entry_point_and_the_collector():
    assert sorted(role_list()) == sorted(closure("_mps_cli.py", "_mps_metrics.py"))
    assert role_list() == sorted(role_list())


def test_the_metrics_role_keeps_no_list_of_its_own():
    with open(os.path.join(ROOT, "roles", "mps_metrics", "vars", "main.yml")) as handle:
        assert "__mps_metrics_module_utils" not in yaml.safe_load(handle)


@pytest.fixture
def lab(tmp_path):
    """The lab of test_site_host, with the collection's files in temporary directories (root's: tmp_path is)."""
    os.chmod(str(tmp_path), 0o755)
    from test_site_host import CONTROL
    pipe, log, state = str(tmp_path / "mps" / "pipe"), str(tmp_path / "mps" / "log"), str(tmp_path / "state")
    inventory = tmp_path / "hosts.yml"
    inventory.write_text("gpu_hosts:\n  hosts:\n    localhost:\n")
    play = tmp_path / "client.yml"
    play.write_text(yaml.safe_dump([{"name": "The plan, then the client", "hosts": "gpu_hosts", "gather_facts": False,
                                     "roles": ["gpulab.mps.preflight", "gpulab.mps.mps_client"]}]))
    return {"pipe": pipe, "log": log, "inventory": str(inventory), "play": [str(play)], "base": tmp_path,
            "lib": str(tmp_path / "lib"), "etc": str(tmp_path / "etc"), "vars": {
                "ansible_connection": "local", "ansible_python_interpreter": sys.executable,
                "preflight_control_binary": CONTROL, "mps_host_pipe_directory": pipe, "mps_host_log_directory": log,
                "mps_host_state_directory": state, "mps_host_service_manager": "direct",
                "gpulab_mps_lib_directory": str(tmp_path / "lib"), "gpulab_mps_config_directory": str(tmp_path / "etc"),
                "gpulab_mps_qos_directory": str(tmp_path / "qos")}}


def entry(lab, *argv):
    """The entry point as the unit runs it: python3 -I, from / (nothing of the checkout on the path)."""
    return subprocess.run([sys.executable, "-I", os.path.join(lab["lib"], "gpulab_mps.py"), "--plan",
                           os.path.join(lab["etc"], "plan.json")] + list(argv), capture_output=True, text=True,
                          cwd="/", timeout=60, check=False)


@pytest.mark.skipif(os.geteuid() != 0, reason="installs root's files: root only, as CI runs it")
def test_the_client_is_installed_once_runs_as_the_unit_runs_it_and_goes(lab):
    check = site(lab, check=True, playbook=lab["play"])
    assert check.returncode == 0, check.stdout[-4000:]
    assert recap(check)["changed"] == 1 and not os.path.exists(lab["lib"])
    first = site(lab, playbook=lab["play"])
    assert first.returncode == 0, first.stdout[-4000:]
    assert recap(first)["changed"] == 1
    module_utils = os.path.join(lab["lib"], "ansible_collections", "gpulab", "mps", "plugins", "module_utils")
    assert sorted(os.listdir(module_utils)) == role_list()
    for name in role_list():
        with open(os.path.join(MODULE_UTILS, name), "rb") as original, open(os.path.join(module_utils, name), "rb") as copy:
            assert original.read() == copy.read(), name  # whole, final newline and braces included
    plan_file = os.path.join(lab["etc"], "plan.json")
    st = os.stat(plan_file)
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o644)
    plan = json.load(open(plan_file))
    assert plan["pipe_directory"] == lab["pipe"] and plan["files"]["lib_directory"] == lab["lib"]
    assert "memory_used_bytes" not in plan["gpus"][0]
    # The daemon's directories do not exist yet: the entry point says so, and exits 1.
    done = entry(lab, "check-directories")
    assert done.returncode == 1 and "does not exist" in done.stderr, done.stderr
    os.makedirs(lab["pipe"], 0o755)
    os.makedirs(lab["log"], 0o755)
    done = entry(lab, "check-directories")
    assert done.returncode == 0 and "pipe and log directories trusted" in done.stdout, done.stderr
    assert not [entry[0] for entry in os.walk(lab["lib"]) if entry[0].endswith("__pycache__")]
    again = site(lab, playbook=lab["play"])
    assert again.returncode == 0 and recap(again)["changed"] == 0, again.stdout[-4000:]
    gone = site(lab, playbook=lab["play"], mps_client_state="absent")
    assert gone.returncode == 0 and recap(gone)["changed"] == 1, gone.stdout[-4000:]
    assert not os.path.exists(lab["lib"]) and not os.path.exists(plan_file)


@pytest.mark.skipif(os.geteuid() != 0, reason="makes another user's directory with os.chown")
def test_the_client_is_not_installed_in_a_directory_another_user_made(lab):
    os.mkdir(lab["lib"], 0o755)
    os.chown(lab["lib"], 65534, 65534)
    done = site(lab, playbook=lab["play"])
    out = " ".join(done.stdout.split())
    assert done.returncode != 0 and lab["lib"] in out and "nothing was changed" in out, out[-3000:]
    assert os.listdir(lab["lib"]) == [] and not os.path.exists(lab["etc"])
