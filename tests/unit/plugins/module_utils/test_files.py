# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""_files against real files, links and directories: what root makes, writes and removes, and what it refuses.

Another user's directories are made here as root with os.chown (uid 65534, nobody): these tests need root, as CI
runs them. tests/hostile plays the same with a real user who plants the paths himself."""

from __future__ import annotations

import json
import os
import stat

import pytest

from ansible_collections.gpulab.mps.plugins.module_utils import _files
from ansible_collections.gpulab.mps.plugins.module_utils._files import FilesError, Record

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="makes directories of another user with os.chown: root only")

OTHER = 65534


def owner_and_mode(path):
    st = os.lstat(str(path))
    return st.st_uid, stat.S_IMODE(st.st_mode)


@pytest.fixture
def base(tmp_path):
    """A directory of root's, 0755, on a trusted way (pytest's tmp_path is root's)."""
    os.chmod(str(tmp_path), 0o755)
    return tmp_path


@pytest.fixture
def secret(base):
    """What a planted link aims at: a directory of root's that only root may enter, with a file in it."""
    path = base / "private"
    path.mkdir(mode=0o700)
    (path / "secret").write_text("root's\n")
    os.chmod(str(path / "secret"), 0o600)
    return path


def theirs(path, mode=0o755):
    """A directory of another user's, as he would have made it first."""
    os.mkdir(str(path), mode)
    os.chown(str(path), OTHER, OTHER)
    os.chmod(str(path), mode)
    return path


def leftovers(directory):
    return [n for n in os.listdir(str(directory)) if ".gpulab-" in n]


# --- directories ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("check_mode", [False, True])
def test_a_missing_directory_is_made_one_component_at_a_time(base, check_mode):
    target = base / "a" / "b" / "lib"
    result = _files.ensure_directory(str(target), 0o750, check_mode=check_mode)
    assert result["changed"] and result["created"] == [str(base / "a"), str(base / "a" / "b"), str(target)]
    if check_mode:
        assert not (base / "a").exists()
        return
    assert owner_and_mode(base / "a") == (0, 0o755) and owner_and_mode(target) == (0, 0o750)
    again = _files.ensure_directory(str(target), 0o750)
    assert not again["changed"] and again["created"] == []


def test_an_existing_trusted_directory_keeps_its_mode(base):
    """The collection never changes the mode of a directory it did not make (this one asks 0755, it is 0700)."""
    (base / "lib").mkdir(mode=0o700)
    assert not _files.ensure_directory(str(base / "lib"), 0o755)["changed"]
    assert owner_and_mode(base / "lib") == (0, 0o700)


@pytest.mark.parametrize("check_mode", [False, True])
def test_a_directory_another_user_made_is_refused_and_left_as_it_is(base, check_mode):
    path = theirs(base / "textfile")
    with pytest.raises(FilesError) as error:
        _files.ensure_directory(str(path), check_mode=check_mode)
    assert str(path) in str(error.value) and "uid %d" % OTHER in str(error.value)
    assert "never changes the owner or mode" in str(error.value)
    assert owner_and_mode(path) == (OTHER, 0o755)
    assert _files.directory_problem(str(path)) == str(error.value)


def test_a_directory_of_roots_that_others_can_write_is_refused_and_not_chmodded(base):
    path = base / "open"
    path.mkdir()
    os.chmod(str(path), 0o777)
    with pytest.raises(FilesError, match="writable by group or others"):
        _files.ensure_directory(str(path))
    assert owner_and_mode(path) == (0, 0o777)


@pytest.mark.parametrize("check_mode", [False, True])
def test_a_link_planted_in_place_of_a_directory_is_refused_and_its_target_untouched(base, secret, check_mode):
    link = base / "node-exporter"
    os.symlink(str(secret), str(link))
    os.lchown(str(link), OTHER, OTHER)
    with pytest.raises(FilesError, match="symbolic link"):
        _files.ensure_directory(str(link), check_mode=check_mode)
    with pytest.raises(FilesError, match="symbolic link"):
        _files.write_file(str(link / "gpulab_mps.prom"), b"x\n", check_mode=check_mode)
    assert owner_and_mode(secret) == (0, 0o700) and os.listdir(str(secret)) == ["secret"]


def test_a_directory_below_another_users_directory_is_refused_unless_that_user_is_named(base):
    """Debian's /var/lib/prometheus is the prometheus user's, node-exporter below it root's: only when the caller
    names that user (ancestor_owners) is the way through his directory accepted; the directory itself must still be
    root's."""
    parent = theirs(base / "prometheus")
    textfile = parent / "node-exporter"
    textfile.mkdir()
    with pytest.raises(FilesError, match="another user could replace what is in it"):
        _files.ensure_directory(str(textfile))
    assert not _files.ensure_directory(str(textfile), ancestor_owners=[OTHER])["changed"]
    assert _files.write_file(str(textfile / "x.prom"), b"x 1\n", ancestor_owners=[OTHER])["changed"]
    his = theirs(parent / "his-own")
    with pytest.raises(FilesError, match="uid %d" % OTHER):
        _files.ensure_directory(str(his), ancestor_owners=[OTHER])
    made = _files.ensure_directory(str(parent / "made"), ancestor_owners=[OTHER])
    assert made["changed"] and owner_and_mode(parent / "made") == (0, 0o755)


def test_a_directory_someone_makes_between_the_check_and_mkdir_is_looked_at_again(base, monkeypatch):
    """mkdir never follows: a name another user made meanwhile fails with EEXIST, and the path is checked again."""
    target = base / "lib"
    real_mkdir = os.mkdir

    def raced(path, mode=0o777):
        if path == str(target) and not os.path.lexists(path):
            real_mkdir(path, 0o755)  # he is first
            os.chown(path, OTHER, OTHER)
        return real_mkdir(path, mode)

    monkeypatch.setattr(os, "mkdir", raced)
    with pytest.raises(FilesError, match="uid %d" % OTHER):
        _files.ensure_directory(str(target))
    assert owner_and_mode(target) == (OTHER, 0o755)


@pytest.mark.parametrize("path", ["relative/x", "/a/../b", "/a//b", "/a/", "", None])
def test_paths_that_are_not_absolute_and_normalised_are_refused(path):
    with pytest.raises(FilesError, match="not an absolute, normalised path"):
        _files.ensure_directory(path)


# --- files ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("check_mode", [False, True])
def test_a_file_is_written_with_its_parents_then_left_alone(base, check_mode):
    path = base / "etc" / "gpulab-mps" / "plan.json"
    result = _files.write_file(str(path), b'{"version": 2}\n', 0o644, check_mode=check_mode)
    assert result == {"path": str(path), "changed": True, "before": None, "after": '{"version": 2}\n',
                      "created": [str(base / "etc"), str(base / "etc" / "gpulab-mps")]}
    if check_mode:
        assert not (base / "etc").exists()
        return
    assert path.read_bytes() == b'{"version": 2}\n' and owner_and_mode(path) == (0, 0o644)
    assert owner_and_mode(path.parent) == (0, 0o755) and leftovers(path.parent) == []
    assert not _files.write_file(str(path), b'{"version": 2}\n', 0o644)["changed"]


@pytest.mark.parametrize("check_mode", [False, True])
def test_a_file_with_other_content_or_mode_is_replaced(base, check_mode):
    path = base / "unit.service"
    path.write_text("old\n")
    os.chmod(str(path), 0o666)
    result = _files.write_file(str(path), b"new\n", 0o644, check_mode=check_mode)
    assert result["changed"] and (result["before"], result["after"]) == ("old\n", "new\n")
    assert (path.read_text(), owner_and_mode(path)) == (("old\n", (0, 0o666)) if check_mode else ("new\n", (0, 0o644)))
    assert leftovers(base) == []


def test_the_mode_alone_is_a_change(base):
    path = base / "x"
    path.write_text("same\n")
    os.chmod(str(path), 0o600)
    assert _files.write_file(str(path), b"same\n", 0o644)["changed"] and owner_and_mode(path) == (0, 0o644)


def test_a_file_of_another_user_is_replaced_by_roots(base):
    path = base / "x"
    path.write_text("same\n")
    os.chown(str(path), OTHER, OTHER)
    assert _files.write_file(str(path), b"same\n", 0o644)["changed"]
    assert owner_and_mode(path) == (0, 0o644)


@pytest.mark.parametrize("check_mode", [False, True])
def test_a_link_at_the_files_path_is_refused_and_its_target_untouched(base, secret, check_mode):
    link = base / "nvidia-mps.service"
    os.symlink(str(secret / "secret"), str(link))
    assert "symbolic link" in _files.file_problem(str(link))
    with pytest.raises(FilesError, match="symbolic link"):
        _files.write_file(str(link), b"[Unit]\n", check_mode=check_mode)
    assert os.readlink(str(link)) == str(secret / "secret")
    assert (secret / "secret").read_text() == "root's\n" and owner_and_mode(secret / "secret") == (0, 0o600)


def test_a_directory_at_the_files_path_is_refused(base):
    (base / "x").mkdir()
    with pytest.raises(FilesError, match="not a regular file"):
        _files.write_file(str(base / "x"), b"x")


@pytest.mark.parametrize("check_mode", [False, True])
def test_no_file_is_written_in_another_users_directory(base, check_mode):
    folder = theirs(base / "qos")
    with pytest.raises(FilesError, match="uid %d" % OTHER):
        _files.write_file(str(folder / "batch.env"), b"X=1\n", check_mode=check_mode)
    assert os.listdir(str(folder)) == [] and owner_and_mode(folder) == (OTHER, 0o755)
    sub = folder / "sub"
    with pytest.raises(FilesError, match="another user could replace"):
        _files.write_file(str(sub / "batch.env"), b"X=1\n", check_mode=check_mode)
    assert not sub.exists()


def test_no_file_is_written_in_a_sticky_directory_everyone_writes(base):
    """/tmp is root's and sticky, but writable by everyone: a place for no file of root's."""
    tmp = base / "tmp"
    tmp.mkdir()
    os.chmod(str(tmp), 0o1777)
    with pytest.raises(FilesError, match="writable by group or others"):
        _files.write_file(str(tmp / "x"), b"x")
    made = _files.write_file(str(tmp / "mine" / "x"), b"x")  # a directory of its own in it is fine
    assert made["changed"] and owner_and_mode(tmp / "mine") == (0, 0o755)


# --- removal -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("check_mode", [False, True])
def test_a_file_with_the_collections_marker_is_removed(base, check_mode):
    path = base / "batch.env"
    path.write_text("# gpulab.mps QoS class batch\nX=1\n")
    result = _files.remove_file(str(path), marker="# gpulab.mps QoS class ", check_mode=check_mode)
    assert result["changed"] and result["kept"] is None and path.exists() == check_mode


def test_a_file_without_the_marker_stays(base):
    path = base / "mine.env"
    path.write_text("FOO=1\n")
    result = _files.remove_file(str(path), marker="# gpulab.mps")
    assert not result["changed"] and "was not written by the collection" in result["kept"] and path.exists()


def test_a_link_is_never_removed_through(base, secret):
    link = base / "batch.env"
    os.symlink(str(secret / "secret"), str(link))
    result = _files.remove_file(str(link), marker="root")
    assert not result["changed"] and "symbolic link" in result["kept"]
    assert os.path.islink(str(link)) and (secret / "secret").read_text() == "root's\n"


def test_nothing_is_removed_from_another_users_directory(base):
    folder = theirs(base / "qos")
    with pytest.raises(FilesError, match="uid %d" % OTHER):
        _files.remove_file(str(folder / "batch.env"), marker="#")


def test_a_missing_file_or_directory_is_no_change(base):
    assert not _files.remove_file(str(base / "none" / "x"), marker="#")["changed"]
    assert not _files.remove_file(str(base / "x"), marker="#")["changed"]
    assert not _files.remove_directory(str(base / "none"))["changed"]


@pytest.mark.parametrize("check_mode", [False, True])
def test_the_record_proves_a_file_the_collection_wrote(base, check_mode):
    record = Record(str(base / "state" / "files.json"))
    path = base / "lib" / "_formats.py"
    _files.write_file(str(path), b"print(1)\n")
    record.note(str(path), b"print(1)\n")
    assert record.save()
    assert owner_and_mode(base / "state" / "files.json") == (0, 0o600)
    loaded = Record(str(base / "state" / "files.json"))
    assert loaded.holds(str(path), b"print(1)\n")
    result = _files.remove_file(str(path), record=loaded, check_mode=check_mode)
    assert result["changed"] and path.exists() == check_mode
    assert loaded.save(check_mode=check_mode) != check_mode
    assert (str(path) in json.loads((base / "state" / "files.json").read_text())["files"]) == check_mode


def test_a_file_changed_since_the_collection_wrote_it_stays(base):
    record = Record(str(base / "files.json"))
    path = base / "plan.json"
    record.note(str(path), b"{}\n")
    path.write_text('{"edited": true}\n')
    result = _files.remove_file(str(path), record=record)
    assert not result["changed"] and "no record of it" in result["kept"] and path.exists()


def test_a_record_that_is_not_the_collections_is_an_error(base):
    (base / "files.json").write_text("[1, 2]")
    with pytest.raises(FilesError, match="cannot be read"):
        Record(str(base / "files.json"))


def test_a_record_in_another_users_directory_is_refused(base):
    folder = theirs(base / "state")
    with pytest.raises(FilesError, match="uid %d" % OTHER):
        Record(str(folder / "files.json"))


@pytest.mark.parametrize("check_mode", [False, True])
def test_directories_are_removed_when_empty_or_as_a_whole_without_following_a_link(base, secret, check_mode):
    empty, full = base / "empty", base / "venv"
    empty.mkdir()
    (full / "bin").mkdir(parents=True)
    os.symlink(str(secret), str(full / "bin" / "link"))
    assert _files.remove_directory(str(empty), check_mode=check_mode)["changed"]
    kept = _files.remove_directory(str(full), check_mode=check_mode)
    assert not kept["changed"] and "not empty" in kept["kept"]
    assert _files.remove_directory(str(full), recurse=True, check_mode=check_mode)["changed"]
    assert (empty.exists(), full.exists()) == (check_mode, check_mode)
    assert os.listdir(str(secret)) == ["secret"] and owner_and_mode(secret) == (0, 0o700)


def test_a_link_in_place_of_a_directory_is_not_removed(base, secret):
    os.symlink(str(secret), str(base / "venv"))
    with pytest.raises(FilesError, match="symbolic link"):
        _files.remove_directory(str(base / "venv"), recurse=True)
    assert os.path.islink(str(base / "venv")) and os.listdir(str(secret)) == ["secret"]
