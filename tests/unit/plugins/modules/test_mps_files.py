# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""mps_files: the roles' directories and files, made and written under the pipe directory's rules, everything checked
before anything changes, and removed only when the collection made them (its record, or a file's marker). Real files
in a temporary directory; another user's directories are made with os.chown (uid 65534): root only, as CI runs."""

from __future__ import annotations

import json
import os
import stat

import pytest

from ansible_collections.gpulab.mps.plugins.modules import mps_files

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="another user's directories are made with os.chown")
OTHER = 65534


@pytest.fixture
def base(tmp_path):
    os.chmod(str(tmp_path), 0o755)
    return tmp_path


def tree(path):
    found = {}
    for folder, dirs, files in os.walk(str(path)):
        for name in dirs + files:
            full = os.path.join(folder, name)
            st = os.lstat(full)
            found[full] = (st.st_uid, stat.S_IMODE(st.st_mode),
                           open(full, "rb").read() if stat.S_ISREG(st.st_mode) else os.path.islink(full))
    return found


def owner_and_mode(path):
    st = os.lstat(str(path))
    return st.st_uid, stat.S_IMODE(st.st_mode)


def client(base, **extra):
    """What the role mps_client asks: the lib tree, the config directory, the entry point and the plan."""
    lib = str(base / "lib")
    return dict({
        "record": str(base / "state" / "files.json"),
        "directories": [{"path": lib}, {"path": lib + "/ansible_collections/gpulab/mps/plugins/module_utils"},
                        {"path": str(base / "etc"), "mode": "0755"}],
        "files": [{"path": lib + "/gpulab_mps.py", "content": "import sys\n"},
                  {"path": lib + "/ansible_collections/gpulab/mps/plugins/module_utils/_formats.py",
                   "content": "# -*- coding: utf-8 -*-\n"},
                  {"path": str(base / "etc" / "plan.json"), "content": '{"version": 2}\n', "mode": 420}]}, **extra)


@pytest.mark.parametrize("check_mode", [False, True])
def test_the_directories_and_files_are_made_then_left_alone(run_module, base, check_mode):
    result, failed = run_module(mps_files, client(base), check_mode=check_mode, diff=True)
    assert not failed and result["changed"], result
    assert [f["path"] for f in result["files"]] == [f["path"] for f in client(base)["files"]]
    assert all(f["changed"] for f in result["files"]) and len(result["diff"]) == 3
    if check_mode:
        assert sorted(os.listdir(str(base))) == []
        return
    assert owner_and_mode(base / "lib") == (0, 0o755) and owner_and_mode(base / "etc" / "plan.json") == (0, 0o644)
    assert (base / "lib" / "gpulab_mps.py").read_text() == "import sys\n"
    record = json.loads((base / "state" / "files.json").read_text())
    assert owner_and_mode(base / "state" / "files.json") == (0, 0o600)
    assert sorted(record["files"]) == sorted(f["path"] for f in client(base)["files"])
    assert str(base / "lib" / "ansible_collections") in record["directories"]
    before = tree(base)
    again, failed = run_module(mps_files, client(base))
    assert not failed and not again["changed"] and tree(base) == before


@pytest.mark.parametrize("check_mode", [False, True])
@pytest.mark.parametrize("planted", ["his-directory", "link-to-roots-directory", "world-writable",
                                     "his-parent-directory", "link-at-a-file"])
def test_nothing_changes_where_another_user_planted_a_path(run_module, base, planted, check_mode):
    """Issue 20: the mps_metrics role's file tasks followed a link planted in place of its textfile directory and
    changed the target's owner and mode. Every path is checked first: one planted path, and nothing is changed."""
    private = base / "private"
    private.mkdir(mode=0o700)
    (private / "secret").write_text("root's\n")
    args = client(base)
    if planted == "his-directory":
        os.mkdir(str(base / "etc"), 0o755)
        os.chown(str(base / "etc"), OTHER, OTHER)
    elif planted == "link-to-roots-directory":
        os.symlink(str(private), str(base / "etc"))
        os.lchown(str(base / "etc"), OTHER, OTHER)
    elif planted == "world-writable":
        os.mkdir(str(base / "etc"), 0o777)
        os.chmod(str(base / "etc"), 0o777)
    elif planted == "his-parent-directory":
        os.mkdir(str(base / "prometheus"), 0o755)
        os.chown(str(base / "prometheus"), OTHER, OTHER)
        args["directories"].append({"path": str(base / "prometheus" / "node-exporter")})
    else:
        os.mkdir(str(base / "etc"), 0o755)
        os.symlink(str(private / "secret"), str(base / "etc" / "plan.json"))
    before = tree(base)
    result, failed = run_module(mps_files, args, check_mode=check_mode)
    assert failed and "nothing was changed" in result["msg"], result
    assert str(base / ("prometheus" if planted == "his-parent-directory" else "etc")) in result["msg"]
    if "link" in planted:
        assert "symbolic link" in result["msg"]
    assert tree(base) == before and (private / "secret").read_text() == "root's\n"
    assert owner_and_mode(private) == (0, 0o700)


@pytest.mark.parametrize("owners", [[OTHER], ["nobody"], [str(OTHER)]])
def test_a_named_users_directory_may_hold_the_directory_which_stays_roots(run_module, base, owners):
    """Debian: /var/lib/prometheus is the prometheus user's and holds node_exporter's textfile directory."""
    parent = base / "prometheus"
    parent.mkdir()
    os.chown(str(parent), OTHER, OTHER)
    textfile = {"path": str(parent / "node-exporter"), "ancestor_owners": owners}
    result, failed = run_module(mps_files, {"directories": [textfile], "record": str(base / "state" / "r.json")})
    assert not failed and result["changed"] and owner_and_mode(parent / "node-exporter") == (0, 0o755)
    assert owner_and_mode(parent) == (OTHER, 0o755)
    os.rmdir(str(parent / "node-exporter"))
    os.mkdir(str(parent / "node-exporter"), 0o755)
    os.chown(str(parent / "node-exporter"), OTHER, OTHER)
    result, failed = run_module(mps_files, {"directories": [textfile], "record": str(base / "state" / "r.json")})
    assert failed and "uid %d" % OTHER in result["msg"] and owner_and_mode(parent / "node-exporter") == (OTHER, 0o755)


@pytest.mark.parametrize("item, message", [
    ({"directories": [{"path": "relative/lib"}]}, "must be an absolute path"),
    ({"directories": [{"path": "/tmp/x y"}]}, "holds characters"),
    ({"directories": [{"path": "/opt/lib", "mode": "0777"}]}, "lets group or others write"),
    ({"files": [{"path": "/opt/x", "content": "x", "mode": "0666"}]}, "lets group or others write"),
    ({"files": [{"path": "/opt/x"}]}, "content is required"),
    ({"files": [{"path": "/opt/x", "content": "a"}, {"path": "/opt/x", "content": "b"}]}, "given twice"),
    ({"directories": [{"path": "/opt/lib", "ancestor_owners": [True]}]}, "is not a user"),
])
def test_bad_items_are_named_before_anything_changes(run_module, base, item, message):
    result, failed = run_module(mps_files, dict(item, record=str(base / "state" / "r.json")))
    assert failed and message in result["msg"] and "nothing was changed" in result["msg"]
    assert not (base / "state").exists()


@pytest.mark.parametrize("check_mode", [False, True])
def test_absent_removes_what_the_collection_made_and_nothing_else(run_module, base, check_mode):
    assert not run_module(mps_files, client(base))[1]
    (base / "lib" / "venv" / "bin").mkdir(parents=True)  # not made by the collection
    (base / "etc" / "mine.conf").write_text("mine\n")
    (base / "lib" / "gpulab_mps.py").write_text("edited by hand\n")
    args = client(base, state="absent")
    args["directories"].append({"path": str(base / "lib" / "venv"), "recurse": True})
    result, failed = run_module(mps_files, args, check_mode=check_mode)
    assert not failed and result["changed"], result
    kept = dict((f["path"], f["kept"]) for f in result["files"] + result["directories"] if f["kept"])
    assert "was not written by the collection" in kept[str(base / "lib" / "gpulab_mps.py")]
    assert "was not made by the collection" in kept[str(base / "lib" / "venv")]
    assert "not empty" in kept[str(base / "etc")]
    assert any("gpulab_mps.py was not written by the collection" in w for w in result["warnings"])
    if check_mode:
        assert (base / "etc" / "plan.json").exists()
        return
    assert sorted(os.listdir(str(base / "etc"))) == ["mine.conf"]
    assert sorted(os.listdir(str(base / "lib"))) == ["gpulab_mps.py", "venv"]  # the emptied tree went too
    record = json.loads((base / "state" / "files.json").read_text())
    assert list(record["files"]) == [str(base / "lib" / "gpulab_mps.py")]


def test_a_venv_the_collection_made_is_removed_whole_without_following_a_link(run_module, base):
    private = base / "private"
    private.mkdir(mode=0o700)
    venv = {"path": str(base / "lib" / "venv"), "recurse": True}
    record = str(base / "state" / "files.json")
    assert not run_module(mps_files, {"directories": [venv], "record": record})[1]
    (base / "lib" / "venv" / "bin").mkdir()
    os.symlink(str(private), str(base / "lib" / "venv" / "bin" / "python"))
    result, failed = run_module(mps_files, {"directories": [venv], "record": record, "state": "absent"})
    assert not failed and result["changed"] and not (base / "lib" / "venv").exists() and private.is_dir()


def test_a_file_with_its_marker_goes_without_a_record(run_module, base):
    (base / "system").mkdir()
    (base / "system" / "x.timer").write_text("# gpulab.mps: x.timer\n[Timer]\n")
    result, failed = run_module(mps_files, {"state": "absent", "record": str(base / "state" / "r.json"), "files": [
        {"path": str(base / "system" / "x.timer"), "marker": "# gpulab.mps: "}]})
    assert not failed and result["changed"] and not (base / "system" / "x.timer").exists()
