# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""mps_qos_files: one env file per class of the plan, written through _files, every line through _formats; what is
not a plain class name or a line of the format is refused before anything is written. Real files in a temporary
directory; another user's directory is made with os.chown (root only, as CI runs)."""

from __future__ import annotations

import copy
import os
import stat
import subprocess

import pytest

from ansible_collections.gpulab.mps.plugins.module_utils import _qos
from ansible_collections.gpulab.mps.plugins.modules import mps_qos_files

ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="another user's directory is made with os.chown")


@pytest.fixture
def qos(tmp_path):
    os.chmod(str(tmp_path), 0o755)
    planned, errors, _warnings = _qos.qos_plan(_qos.DEFAULT_CLASSES, str(tmp_path / "qos"), None, None,
                                               "/run/nvidia-mps")
    assert errors == []
    return planned


def tree(path):
    found = {}
    for folder, dirs, files in os.walk(str(path)):
        for name in dirs + files:
            full = os.path.join(folder, name)
            st = os.lstat(full)
            found[full] = (st.st_uid, stat.S_IMODE(st.st_mode), open(full).read() if stat.S_ISREG(st.st_mode) else None)
    return found


@pytest.mark.parametrize("check_mode", [False, True])
def test_the_class_files_are_written_once(run_module, qos, check_mode):
    result, failed = run_module(mps_qos_files, {"qos": qos}, check_mode=check_mode, diff=True)
    directory = qos["directory"]
    assert not failed and result["changed"]
    assert result["written"] == [directory + "/batch.env", directory + "/latency.env"]
    assert [d["after_header"] for d in result["diff"]] == result["written"]
    if check_mode:
        assert not os.path.exists(directory)
        return
    st = os.stat(directory + "/batch.env")
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (os.geteuid(), 0o644)
    env = subprocess.run(["sh", "-c", "set -a; . %s/batch.env; set +a; env" % directory], capture_output=True,
                         text=True, env={"PATH": "/usr/bin:/bin"}, check=True).stdout.splitlines()
    assert sorted(v for v in env if v.startswith("CUDA_MPS_")) == [
        "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=12", "CUDA_MPS_CLIENT_PRIORITY=1", "CUDA_MPS_PIPE_DIRECTORY=/run/nvidia-mps"]
    again, failed = run_module(mps_qos_files, {"qos": qos})
    assert not failed and not again["changed"] and again["written"] == []


@pytest.mark.parametrize("check_mode", [False, True])
def test_only_the_collections_files_of_classes_no_longer_planned_go(run_module, qos, tmp_path, check_mode):
    assert not run_module(mps_qos_files, {"qos": qos})[1]
    directory = qos["directory"]
    with open(directory + "/mine.env", "w") as handle:
        handle.write("FOO=1\n")
    os.symlink(directory + "/batch.env", directory + "/linked.env")
    fewer = dict(qos, classes={"latency": qos["classes"]["latency"]})
    result, failed = run_module(mps_qos_files, {"qos": fewer}, check_mode=check_mode)
    assert not failed and result["removed"] == [directory + "/batch.env"]
    assert sorted(os.listdir(directory)) == (["batch.env", "latency.env", "linked.env", "mine.env"] if check_mode
                                             else ["latency.env", "linked.env", "mine.env"])
    gone, failed = run_module(mps_qos_files, {"qos": qos, "state": "absent"}, check_mode=check_mode)
    assert not failed and directory + "/latency.env" in gone["removed"]
    if not check_mode:
        assert sorted(os.listdir(directory)) == ["linked.env", "mine.env"]


NAMES = ["../escape", "../../escape", "sub/../../escape", "..", "batch\nLD_PRELOAD=x", "/abs", ".hidden", "batch\n"]


@pytest.mark.parametrize("check_mode", [False, True])
@pytest.mark.parametrize("name", NAMES)
def test_a_class_name_that_is_no_plain_file_name_is_refused_before_anything_is_written(
        run_module, qos, tmp_path, name, check_mode):
    """Issue 20: a class name with ../ crashed the module (and could name a file outside the directory)."""
    changed = copy.deepcopy(qos)
    changed["classes"][name] = changed["classes"].pop("batch")
    before = tree(tmp_path)
    result, failed = run_module(mps_qos_files, {"qos": changed}, check_mode=check_mode)
    assert failed and repr(name) in result["msg"] and "name" in result["msg"]
    assert "nothing was changed" in result["msg"] and tree(tmp_path) == before


@pytest.mark.parametrize("check_mode", [False, True])
@pytest.mark.parametrize("description", ["bulk\ntouch /tmp/x\nLD_PRELOAD=/tmp/evil.so", "bulk\rLD_PRELOAD=x",
                                         "ends in\\", "a\u2028b"])
def test_a_description_that_is_not_one_comment_line_is_refused(run_module, qos, tmp_path, description, check_mode):
    """Issue 20: a newline in a description became a shell command in the class's env file. The plan refuses it; a
    plan changed on its way here is refused again, before anything is written."""
    changed = copy.deepcopy(qos)
    changed["classes"]["batch"]["description"] = description
    result, failed = run_module(mps_qos_files, {"qos": changed}, check_mode=check_mode)
    assert failed and "description" in result["msg"] and not os.path.exists(qos["directory"])


@pytest.mark.parametrize("value", ["12\nLD_PRELOAD=/tmp/evil.so", "$(id)", "a b"])
def test_a_value_the_env_file_cannot_carry_is_refused(run_module, qos, value):
    changed = copy.deepcopy(qos)
    changed["classes"]["batch"]["env_file_environment"]["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] = value
    result, failed = run_module(mps_qos_files, {"qos": changed})
    assert failed and "cannot go into an env file" in result["msg"] and not os.path.exists(qos["directory"])


def test_a_link_at_a_class_files_path_is_refused_before_any_file_is_written(run_module, qos, tmp_path):
    os.makedirs(qos["directory"])
    target = tmp_path / "target"
    target.write_text("root's\n")
    os.symlink(str(target), qos["directory"] + "/latency.env")
    result, failed = run_module(mps_qos_files, {"qos": qos})
    assert failed and "symbolic link" in result["msg"] and "nothing was changed" in result["msg"]
    assert sorted(os.listdir(qos["directory"])) == ["latency.env"] and target.read_text() == "root's\n"


@ROOT_ONLY
@pytest.mark.parametrize("check_mode", [False, True])
@pytest.mark.parametrize("planted", ["link", "his-own-directory"])
def test_no_file_is_written_where_another_user_planted_the_directory(run_module, qos, tmp_path, planted, check_mode):
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    if planted == "link":
        os.symlink(str(private), qos["directory"])
    else:
        os.mkdir(qos["directory"], 0o755)
        os.chown(qos["directory"], 65534, 65534)
    before = tree(tmp_path)
    result, failed = run_module(mps_qos_files, {"qos": qos}, check_mode=check_mode)
    assert failed and qos["directory"] in result["msg"] and tree(tmp_path) == before
