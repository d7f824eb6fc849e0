# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""Root's files on a host with other users on it: the one place that makes the collection's directories and writes
and removes its files, under the pipe directory's rules (_trust).

This is a private module_utils of gpulab.mps: its API may change without notice. STANDARD LIBRARY ONLY.

The modules that write root's files (mps_files for the roles, mps_unit, mps_qos_files) all come here; nothing else
of the collection writes a file as root. The rules:
- a directory that exists is used only when it is trusted: every component of its path checked with lstat from /
  down (_trust.inspect_directory: a link only where root made it, in a directory nobody else can write), the
  directory itself a real directory (never a link), root's (or this user's), writable by nobody else. One that is
  not is REFUSED, with the reason and the way out; its owner and mode are never changed. The collection never
  changes the owner or mode of what it did not make.
- a missing directory is made one component at a time with mkdir (which never follows a link: a name someone made
  meanwhile fails with EEXIST and is looked at again), opened with O_NOFOLLOW, checked through its descriptor to be
  this user's, given its mode with fchmod, and the whole path checked again.
- a file is written through a descriptor of its trusted directory: a temporary file made there with
  O_CREAT | O_EXCL | O_NOFOLLOW, written, fchmod'ed and fsync'ed, then renamed over the name (a rename replaces a
  name, it never follows it). An existing path that is a link or not a regular file is refused, not replaced.
- a file is removed only when it is a regular file that the collection wrote - its first bytes are the caller's
  marker, or the record (Record: what the collection wrote, path and SHA-256, kept in root's state directory) holds
  its very content - and never through a link. Anything else there stays, and the caller is told why.
- everything is first checked without a change (directory_problem, file_problem), so a module refuses before it
  changes anything; check mode asks the same questions and changes nothing.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import secrets
import shutil
import stat

from ansible_collections.gpulab.mps.plugins.module_utils._trust import inspect_directory

# A file the collection writes is small (a unit, an env file, a module_utils, the plan): read at most this much.
READ_LIMIT = 16 << 20
RECORD_VERSION = 1


class FilesError(Exception):
    """A path the collection must not write or remove: the message says which, why, and what to do."""


def trusted_owners(extra=()):
    """The uids a directory the collection uses may belong to: root, this user, and `extra`."""
    return sorted(set([0, os.geteuid()]) | set(int(uid) for uid in extra))


def _check_path(path):
    if not isinstance(path, str) or not path.startswith("/") or os.path.normpath(path) != path or "\0" in path \
            or path.startswith("//"):
        raise FilesError("%r is not an absolute, normalised path" % (path,))
    return path


def _refusal(path, reason):
    return ("refusing %s: %s. The collection never changes the owner or mode of a directory it did not make, and "
            "never follows a link it did not make" % (path, reason))


def directory_problem(path, ancestor_owners=()):
    """Why the directory `path` cannot be used or made by this user (a sentence naming the path and the way out), or
    None: missing with a trusted way to it, or trusted. Changes nothing."""
    _check_path(path)
    owners = trusted_owners()
    _missing, reason = inspect_directory(path, owners, ancestor_owners=trusted_owners(ancestor_owners))
    return _refusal(path, reason) if reason else None


def _missing_components(path, ancestor_owners):
    """The components of `path` that do not exist, top down ([] when it exists); FilesError when not trusted."""
    missing, reason = inspect_directory(path, trusted_owners(), ancestor_owners=trusted_owners(ancestor_owners))
    if reason:
        raise FilesError(_refusal(path, reason))
    if not missing:
        return []
    parts, current = [], "/"
    for name in [p for p in path.split("/") if p]:
        current = os.path.join(current, name)
        if parts or not os.path.lexists(current):
            parts.append(current)
    return parts


def ensure_directory(path, mode=0o755, ancestor_owners=(), check_mode=False):
    """Make `path` (and its missing parents, 0755) or prove it trusted: {"path", "changed", "created": [...]}.

    An existing directory keeps its owner and mode (whatever `mode` asks): it is only checked. Raises FilesError when
    the path is not trusted, before or after making it."""
    _check_path(path)
    todo = _missing_components(path, ancestor_owners)
    if not todo or check_mode:
        return {"path": path, "changed": bool(todo), "created": todo}
    created = []
    for _attempt in range(len(todo) + 16):
        todo = _missing_components(path, ancestor_owners)
        if not todo:
            break
        component = todo[0]
        try:
            os.mkdir(component, 0o700)
        except OSError as error:
            if error.errno == errno.EEXIST:
                continue  # someone made it meanwhile: looked at again, as any existing one
            raise FilesError("cannot make %s: %s" % (component, error.strerror))
        _chmod_own_directory(component, mode if component == path else 0o755)
        created.append(component)
    missing, reason = inspect_directory(path, trusted_owners(), ancestor_owners=trusted_owners(ancestor_owners))
    if reason or missing:
        raise FilesError(_refusal(path, reason or "it vanished after it was made"))
    return {"path": path, "changed": bool(created), "created": created}


def _chmod_own_directory(path, mode):
    """fchmod a directory this call just made, through a descriptor opened without following a link, once its
    descriptor shows it is this user's (one swapped in meanwhile is refused, not changed)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        st = os.fstat(fd)
        if st.st_uid != os.geteuid():
            raise FilesError(_refusal(path, "it was replaced by a directory of uid %d while it was being made"
                                      % st.st_uid))
        os.fchmod(fd, mode)
    finally:
        os.close(fd)


class _Directory(object):
    """A trusted directory, opened once without following a link and checked through its descriptor: every entry
    is then read, written and removed relative to it."""

    def __init__(self, path, ancestor_owners=()):
        self.path = path
        missing, reason = inspect_directory(path, trusted_owners(), ancestor_owners=trusted_owners(ancestor_owners))
        if reason:
            raise FilesError(_refusal(path, reason))
        if missing:
            raise FilesError("%s does not exist" % path)
        try:
            self.fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        except OSError as error:
            raise FilesError(_refusal(path, "it cannot be opened as a directory without following a link (%s)"
                                      % error.strerror))
        st = os.fstat(self.fd)
        if st.st_uid not in trusted_owners() or stat.S_IMODE(st.st_mode) & 0o022:
            os.close(self.fd)
            raise FilesError(_refusal(path, "it changed while it was checked (now uid %d, mode %04o)"
                                      % (st.st_uid, stat.S_IMODE(st.st_mode))))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        os.close(self.fd)
        return False

    def entry(self, name):
        """(lstat, content bytes or None) of an entry; None when there is none. Content only for a regular file."""
        try:
            st = os.stat(name, dir_fd=self.fd, follow_symlinks=False)
        except FileNotFoundError:
            return None
        if not stat.S_ISREG(st.st_mode):
            return st, None
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=self.fd)
        except OSError as error:
            raise FilesError("cannot read %s: %s" % (os.path.join(self.path, name), error.strerror))
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                return st, None
            chunks, size = [], 0
            while size <= READ_LIMIT:
                chunk = os.read(fd, 1 << 20)
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
            return st, b"".join(chunks)
        finally:
            os.close(fd)

    def replace(self, name, content, mode):
        """Write `content` to a new file made here with O_EXCL | O_NOFOLLOW, then rename it over `name`."""
        replace_file(self.fd, name, content, mode)

    def unlink(self, name):
        os.unlink(name, dir_fd=self.fd)


def replace_file(dir_fd, name, content, mode):
    """Write `content` (bytes) as `name` in the directory open as `dir_fd`: to a new file made there with
    O_EXCL | O_NOFOLLOW, then renamed over `name`, so that a link or file planted at `name` is replaced, never
    followed or written through. The one way root's files are written (Directory.replace, the metrics collector)."""
    temp = ".%s.gpulab-%s" % (name[:64], secrets.token_hex(8))
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600, dir_fd=dir_fd)
    try:
        try:
            view = memoryview(content)
            while view:
                view = view[os.write(fd, view):]
            os.fchmod(fd, mode)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        try:
            os.unlink(temp, dir_fd=dir_fd)
        except OSError:
            pass
        raise


def _entry_problem(path, st):
    if stat.S_ISLNK(st.st_mode):
        return ("%s is a symbolic link (to %s): the collection neither follows nor replaces a link it did not make; "
                "remove it (a masked unit links to /dev/null: systemctl unmask)" % (path, _readlink(path)))
    if not stat.S_ISREG(st.st_mode):
        return "%s exists and is not a regular file: remove it or choose another path" % path
    return None


def _readlink(path):
    try:
        return os.readlink(path)
    except OSError:
        return "?"


def file_problem(path, ancestor_owners=()):
    """Why the file `path` cannot be written (its directory not trusted, the path a link or not a regular file), or
    None. Changes nothing."""
    _check_path(path)
    directory = os.path.dirname(path)
    problem = directory_problem(directory, ancestor_owners)
    if problem:
        return problem
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as error:
        return "cannot read %s: %s" % (path, error.strerror)
    return _entry_problem(path, st)


def _text(content):
    return None if content is None else content.decode("utf-8", "replace")


def write_file(path, content, mode=0o644, ancestor_owners=(), check_mode=False):
    """Make `path` hold exactly `content` (bytes), this user's, with `mode`: {"path", "changed", "before", "after"}.

    The missing parents are made (ensure_directory, 0755). Raises FilesError when the directory is not trusted or
    the path is a link or not a regular file."""
    _check_path(path)
    if isinstance(content, str):
        content = content.encode("utf-8")
    directory, name = os.path.split(path)
    if not name or name in (".", ".."):
        raise FilesError("%s names no file" % path)
    made = ensure_directory(directory, 0o755, ancestor_owners, check_mode=check_mode)
    if made["changed"] and check_mode:
        return {"path": path, "changed": True, "before": None, "after": _text(content), "created": made["created"]}
    with _Directory(directory, ancestor_owners) as folder:
        found = folder.entry(name)
        if found is not None:
            problem = _entry_problem(path, found[0])
            if problem:
                raise FilesError(problem)
        before = found[1] if found else None
        changed = found is None or before != content or stat.S_IMODE(found[0].st_mode) != mode \
            or found[0].st_uid != os.geteuid()
        if changed and not check_mode:
            folder.replace(name, content, mode)
    return {"path": path, "changed": changed, "before": _text(before), "after": _text(content),
            "created": made["created"]}


def remove_file(path, marker=None, record=None, ancestor_owners=(), check_mode=False):
    """Remove `path` when it is a regular file the collection wrote: its content starts with `marker` (bytes), or
    `record` (a Record) holds its very content. {"path", "changed", "kept": why it stayed, or None, "before"}.

    A link, a directory, a file of someone else's stays (kept says why); FilesError when its directory is a link or
    not trusted."""
    _check_path(path)
    if isinstance(marker, str):
        marker = marker.encode("utf-8")
    directory, name = os.path.split(path)
    missing, reason = inspect_directory(directory, trusted_owners(), ancestor_owners=trusted_owners(ancestor_owners))
    if reason:
        raise FilesError(_refusal(directory, reason))
    if missing:
        return {"path": path, "changed": False, "kept": None, "before": None}
    with _Directory(directory, ancestor_owners) as folder:
        found = folder.entry(name)
        if found is None:
            if record is not None:
                record.forget(path)
            return {"path": path, "changed": False, "kept": None, "before": None}
        problem = _entry_problem(path, found[0])
        if problem:
            return {"path": path, "changed": False, "kept": problem, "before": None}
        content = found[1]
        by_marker = marker is not None and content.startswith(marker)
        ours = by_marker or (record is not None and record.holds(path, content))
        if not ours:
            return {"path": path, "changed": False, "before": _text(content), "kept": (
                "%s was not written by the collection (%s): it stays" % (
                    path, "it does not start with its marker" if marker is not None else "no record of it"))}
        if not check_mode:
            folder.unlink(name)
            if record is not None:
                record.forget(path)
    return {"path": path, "changed": True, "kept": None, "before": _text(content)}


def remove_directory(path, recurse=False, ancestor_owners=(), check_mode=False):
    """Remove the directory `path`: when empty, or with everything in it (recurse). {"path", "changed", "kept"}.

    Only a trusted directory is removed (a link in its place is refused, never followed); recursion walks through
    descriptors and never follows a link (shutil.rmtree's fd-based walk). A directory that is not empty stays
    without recurse."""
    _check_path(path)
    if path == "/":
        raise FilesError("refusing to remove /")
    missing, reason = inspect_directory(path, trusted_owners(), ancestor_owners=trusted_owners(ancestor_owners))
    if reason:
        raise FilesError(_refusal(path, reason))
    if missing:
        return {"path": path, "changed": False, "kept": None}
    if recurse:
        if not shutil.rmtree.avoids_symlink_attacks:
            raise FilesError("cannot remove %s safely on this platform (no fd-based rmtree)" % path)
        if not check_mode:
            shutil.rmtree(path)
        return {"path": path, "changed": True, "kept": None}
    if os.listdir(path):
        return {"path": path, "changed": False, "kept": "%s is not empty: it stays" % path}
    if not check_mode:
        try:
            os.rmdir(path)
        except OSError as error:
            if error.errno in (errno.ENOTEMPTY, errno.EEXIST):
                return {"path": path, "changed": False, "kept": "%s is not empty: it stays" % path}
            raise FilesError("cannot remove %s: %s" % (path, error.strerror))
    return {"path": path, "changed": True, "kept": None}


class Record(object):
    """What the collection wrote and made: {path: SHA-256 of the content it wrote} and the directories it made, kept
    as JSON (0600) in root's state directory, written like every file here. A file without a marker of its own (a
    module_utils, the plan) is removed only when the record holds its very content; a directory only when the record
    says the collection made it."""

    def __init__(self, path, ancestor_owners=()):
        self.path = _check_path(path)
        self.ancestor_owners = ancestor_owners
        self.files = {}
        self.directories = set()
        self.dirty = False
        directory, name = os.path.split(path)
        missing, reason = inspect_directory(directory, trusted_owners(),
                                            ancestor_owners=trusted_owners(ancestor_owners))
        if reason:
            raise FilesError("the record of the collection's files: " + _refusal(directory, reason))
        if missing:
            return
        with _Directory(directory, ancestor_owners) as folder:
            found = folder.entry(name)
        if found is None:
            return
        problem = _entry_problem(path, found[0])
        if problem:
            raise FilesError("the record of the collection's files: " + problem)
        try:
            data = json.loads(found[1].decode("utf-8"))
            files, directories = data["files"], data.get("directories", [])
            if data.get("version") != RECORD_VERSION or not isinstance(files, dict) or not isinstance(directories,
                                                                                                      list):
                raise ValueError("not a record of version %d" % RECORD_VERSION)
        except (ValueError, KeyError, TypeError) as error:
            raise FilesError("the record of the collection's files %s cannot be read (%s): move it away; files the "
                             "collection wrote then stay when they are removed" % (path, error))
        self.files = dict((str(k), str(v)) for k, v in files.items())
        self.directories = set(str(d) for d in directories)

    @staticmethod
    def digest(content):
        return hashlib.sha256(content).hexdigest()

    def holds(self, path, content):
        return self.files.get(path) == self.digest(content)

    def note(self, path, content):
        if isinstance(content, str):
            content = content.encode("utf-8")
        if self.files.get(path) != self.digest(content):
            self.files[path] = self.digest(content)
            self.dirty = True

    def forget(self, path):
        if self.files.pop(path, None) is not None:
            self.dirty = True

    def note_directory(self, path):
        if path not in self.directories:
            self.directories.add(path)
            self.dirty = True

    def made(self, path):
        return path in self.directories

    def forget_directory(self, path):
        """A directory removed: it, and every record below it (a tree removed whole), are forgotten."""
        below = path.rstrip("/") + "/"
        for directory in [d for d in self.directories if d == path or d.startswith(below)]:
            self.directories.discard(directory)
            self.dirty = True
        for name in [f for f in self.files if f.startswith(below)]:
            self.forget(name)

    def save(self, check_mode=False):
        if not self.dirty or check_mode:
            return False
        text = json.dumps({"version": RECORD_VERSION, "files": self.files, "directories": sorted(self.directories)},
                          indent=1, sort_keys=True) + "\n"
        write_file(self.path, text.encode("utf-8"), 0o600, self.ancestor_owners)
        self.dirty = False
        return True
