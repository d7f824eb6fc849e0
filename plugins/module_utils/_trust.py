# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""Paths on a host with other users on it: what the collection may trust, create, write and remove.

This is a private module_utils of gpulab.mps: its API may change without notice. Standard library only.

A GPU lab is a multi-user machine, and MPS's default pipe directory lives in /tmp. The rules:
- a pipe or log directory is used only when it is trusted: every component of its path checked with
  lstat from / down (a symlink is followed only when it sits in a trusted directory and belongs to
  root or to the daemon's user; the directory itself must not be a symlink), owned by the daemon's
  user, and writable by nobody else. A missing one is created one component at a time with mkdir (which
  fails rather than follows), then checked again and given its mode through a descriptor opened with
  O_NOFOLLOW.
- what the collection writes (the record of exact limits, the lock) lives in its own state directory,
  written to a temporary file made with O_EXCL in that directory and moved into place (os.replace).
- the daemon's files are the daemon's: a `control` socket is talked to only when it is a socket owned
  by the daemon's user; cleanup removes only sockets owned by the daemon's user, never regular files,
  never through a symlink; a pid from the pid file (MPS makes it 0666) is acted on only when it is a
  live nvidia-cuda-mps-control of this very pipe directory.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import stat
import tempfile
import time

# Characters a path may hold to be written into a systemd unit (Environment=, ExecStartPre=, PIDFile=)
# and into the daemon's environment without quoting or escaping.
_SAFE_PATH_RE = re.compile(r"^/[A-Za-z0-9._/@+-]*\Z")
_MAX_LINKS = 16


class TrustError(Exception):
    """A path the collection must not use: the message says why and how to fix it."""


def normalize_path(option, value):
    """(absolute normalised path, None) or (None, error) for a path option."""
    if not isinstance(value, str) or not value:
        return None, "%s must be an absolute path, got %r" % (option, value)
    if not value.startswith("/"):
        return None, ("%s must be an absolute path, got %r (a relative one would depend on the directory the "
                      "module runs in)" % (option, value))
    path = os.path.normpath(value)
    if path.startswith("//"):
        path = "/" + path.lstrip("/")
    if not _SAFE_PATH_RE.match(path):
        return None, ("%s %r holds characters that a systemd unit and the daemon's environment cannot carry "
                      "safely (spaces, quotes, ';', '$', '%%', '\\\\'...): use letters, digits and . _ - + @ /"
                      % (option, value))
    return path, None


def parse_mode(value):
    """A directory mode as ansible.builtin.file reads it: an int is the mode, a string is octal.

    `directory_mode: 0711` unquoted in YAML arrives as the integer 457, which is 0o711. Returns the
    mode, or raises ValueError.
    """
    if isinstance(value, bool):
        raise ValueError("%r is not a mode" % (value,))
    if isinstance(value, int):
        mode = value
    else:
        text = str(value).strip()
        if not re.match(r"^0?[0-7]{3,4}\Z", text):
            raise ValueError("%r is not an octal mode such as 0755" % (value,))
        mode = int(text, 8)
    if not 0 <= mode <= 0o7777:
        raise ValueError("%r is not a mode" % (value,))
    return mode


def _describe(st):
    return "owned by uid %d, mode %04o" % (st.st_uid, stat.S_IMODE(st.st_mode))


def _owners(owners):
    return set([owners]) if isinstance(owners, int) else set(owners)


def _safe_ancestor(st, owners):
    """Whether a directory on the way may hold the path: nobody but root or an owner can rename what is in it."""
    if st.st_uid != 0 and st.st_uid not in owners:
        return False
    mode = st.st_mode
    if mode & stat.S_ISVTX:
        return True
    if mode & stat.S_IWOTH:
        return False
    return not (mode & stat.S_IWGRP and st.st_gid != 0)


def inspect_directory(path, owners, follow_last=False, ancestor_owners=None):
    """Walk `path` (absolute) with lstat: (missing, reason).

    owners: the uid (or uids) the directory itself may belong to. follow_last: the last component may be a link
    (made by root or an owner, in a directory nobody else can write), as /bin is on Debian; a pipe directory may not.
    ancestor_owners: the uids (besides root) whose directories and links may lie on the way (default: owners), as
    Debian's /var/lib/prometheus is the prometheus user's. missing: the first component that does not exist (None
    when the whole path exists). reason: why the path must not be used, or None.
    Nothing is changed and no symlink is followed blindly.
    """
    owners = _owners(owners)
    on_the_way = owners if ancestor_owners is None else _owners(ancestor_owners)
    pending = [p for p in path.split("/") if p]
    current = "/"
    links = 0
    try:
        st = os.lstat(current)
    except OSError as error:
        return None, "cannot read /: %s" % error
    while pending:
        if not _safe_ancestor(st, on_the_way):
            return None, ("%s (on the way to %s) is %s: another user could replace what is in it"
                          % (current, path, _describe(st)))
        name = pending.pop(0)
        if name == ".":
            continue
        if name == "..":
            current = os.path.dirname(current)
            st = os.lstat(current)
            continue
        candidate = os.path.join(current, name)
        try:
            st = os.lstat(candidate)
        except OSError as error:
            if error.errno == errno.ENOENT:
                return candidate if not pending else os.path.join(candidate, *pending), None
            return None, "cannot read %s: %s" % (candidate, error)
        if stat.S_ISLNK(st.st_mode):
            if not pending and not follow_last:
                return None, ("%s is a symbolic link (to %s): the collection does not follow a link it did not make; "
                              "point the option at the real directory" % (candidate, os.readlink(candidate)))
            if st.st_uid != 0 and st.st_uid not in on_the_way:
                return None, "%s is a symbolic link %s: not followed" % (candidate, _describe(st))
            links += 1
            if links > _MAX_LINKS:
                return None, "too many symbolic links on the way to %s" % path
            target = os.readlink(candidate)
            if target.startswith("/"):
                current = "/"
                st = os.lstat("/")
            else:
                st = os.lstat(current)
            pending = [p for p in target.split("/") if p] + pending
            continue
        if not stat.S_ISDIR(st.st_mode):
            return None, "%s is not a directory" % candidate
        current = candidate
    if st.st_uid not in owners:
        return None, ("%s is %s, not the daemon's user (uid %s): another user made it and could plant files "
                      "or sockets in it. Remove it (as root) so that it is made again, or choose another "
                      "directory" % (path, _describe(st), "/".join(str(o) for o in sorted(owners))))
    if stat.S_IMODE(st.st_mode) & 0o022:
        return None, ("%s is %s: writable by group or others, who could replace the daemon's sockets in it. "
                      "Make it 0755 (chmod go-w), or choose another directory" % (path, _describe(st)))
    return None, None


def directory_problem(path, owners, creatable=True):
    """Why `path` cannot be used as (or created as) a trusted directory, or None. Reads only."""
    missing, reason = inspect_directory(path, owners)
    if reason:
        return reason
    if missing and not creatable:
        return "%s does not exist" % path
    if missing:
        parent = os.path.dirname(_first_missing(path))
        if not os.access(parent, os.W_OK | os.X_OK):
            return "%s cannot be created: no write permission in %s" % (path, parent)
        try:
            if os.statvfs(parent).f_flag & os.ST_RDONLY:
                return "%s cannot be created: %s is on a read-only file system" % (path, parent)
        except OSError as error:
            return "%s cannot be created: %s" % (path, error)
    return None


def _first_missing(path):
    """The first component of `path` that does not exist (lexically, for messages and creation)."""
    current = "/"
    for name in [p for p in path.split("/") if p]:
        current = os.path.join(current, name)
        if not os.path.lexists(current):
            return current
    return path


def ensure_directory(path, uid, mode):
    """Create the missing components of `path` (the last with `mode`, others 0755), race-free; check it.

    Returns True when something was created. Raises TrustError when the path is not trusted, before
    or after creation.
    """
    created = False
    for _attempt in range(_MAX_LINKS + 2):
        missing, reason = inspect_directory(path, uid)
        if reason:
            raise TrustError(reason)
        if not missing:
            break
        first = _first_missing(path)
        try:
            os.mkdir(first, 0o700)  # mkdir never follows: if someone made it meanwhile, EEXIST, and we look again
        except OSError as error:
            if error.errno != errno.EEXIST:
                raise TrustError("%s cannot be created: %s" % (first, error))
            continue
        created = True
        _chmod_nofollow(first, mode if first == path else 0o755)
    else:
        raise TrustError("%s could not be created" % path)
    missing, reason = inspect_directory(path, uid)
    if reason or missing:
        raise TrustError(reason or "%s vanished after it was created" % path)
    return created


def _chmod_nofollow(path, mode):
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        os.fchmod(fd, mode)
    finally:
        os.close(fd)


def socket_problem(path, owners):
    """Why the daemon's socket at `path` must not be talked to, or None (a socket of one of the owners)."""
    owners = _owners(owners)
    try:
        st = os.lstat(path)
    except OSError:
        return None  # no socket: the CLI says there is no daemon
    if not stat.S_ISSOCK(st.st_mode):
        return "%s is not a socket (%s): it was not made by the MPS daemon" % (path, _describe(st))
    if st.st_uid not in owners:
        return "%s is a socket %s, not of the daemon's user: another user's program" % (path, _describe(st))
    return None


def remove_owned(directory, kinds, uid):
    """Remove the entries of `directory` named in `kinds` ({name: "socket" | "fifo" | "file"}) that are of that
    kind and uid's own; returns the names removed. Nothing else is touched, and no link is followed."""
    tests = {"socket": stat.S_ISSOCK, "fifo": stat.S_ISFIFO, "file": stat.S_ISREG}
    removed = []
    for name, kind in sorted(kinds.items()):
        path = os.path.join(directory, name)
        try:
            st = os.lstat(path)
        except OSError:
            continue
        if tests[kind](st.st_mode) and st.st_uid == uid:
            os.unlink(path)
            removed.append(name)
    return removed


def read_small_file(path, limit=4096):
    """Content of a regular file, read without following a symlink; None when there is none."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return os.read(fd, limit).decode("utf-8", "replace")
    finally:
        os.close(fd)


def process_environment(pid):
    """The environment of a process (root reads any) as {bytes: bytes}, or None."""
    raw = _proc_bytes(pid, "environ")
    if raw is None:
        return None
    return dict(item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item)


def _proc_bytes(pid, name, limit=1 << 20):
    try:
        with open("/proc/%d/%s" % (int(pid), name), "rb") as handle:
            return handle.read(limit)
    except (IOError, OSError, ValueError, OverflowError):
        return None


def process_start(pid):
    """(state, start time in clock ticks, uid) of a live process, or None.

    /proc/PID/stat is read as bytes: its second field is the process's name, which its owner chooses (any bytes
    but NUL, a ')' included): the fields are taken after the LAST ')'."""
    raw = _proc_bytes(pid, "stat", 4096)
    try:
        fields = raw.rsplit(b")", 1)[1].split()
        uid = os.stat("/proc/%d" % int(pid)).st_uid
        return fields[0].decode("ascii", "replace"), int(fields[19]), uid
    except (AttributeError, IOError, OSError, IndexError, ValueError):
        return None


def process_argv(pid):
    """A process's argv as a list of bytes (its owner chooses every byte of it), or None."""
    raw = _proc_bytes(pid, "cmdline")
    return None if raw is None else raw.rstrip(b"\0").split(b"\0")


def pid_namespace(pid="self"):
    """The inode of a process's PID namespace, as `ps` prints it in NAMESPACE ("4026531836"), or None: read from
    /proc (the kernel's word), never from what a client could print."""
    try:
        link = os.readlink("/proc/%s/ns/pid" % pid)  # "pid:[4026531836]"
        inode = link.split("[", 1)[1].rstrip("]")
        return inode if inode.isascii() and inode.isdigit() else None
    except (OSError, IndexError):
        return None


def executable_problem(path, owners=(0,)):
    """Why `path` must not be executed by this process, or None: it must be a regular file, owned by root (or an
    owner), writable by nobody else, reached through directories nobody else can write (links only where root or an
    owner made them). A binary another user could have placed or replaced is never run."""
    owners = _owners(owners)
    if not isinstance(path, str) or not path.startswith("/"):
        return "%r is not an absolute path" % (path,)
    # Every directory on the way, links included, must be root's (or an owner's) and writable by nobody else.
    missing, reason = inspect_directory(os.path.dirname(path) or "/", owners | {0}, follow_last=True)
    if missing or reason:
        return reason or "%s does not exist" % missing
    real = os.path.realpath(path)
    if real != path:
        try:
            link = os.lstat(path)
        except OSError as error:
            return "cannot read %s: %s" % (path, error)
        if stat.S_ISLNK(link.st_mode) and link.st_uid not in owners | {0}:
            return "%s is a symbolic link %s: not followed" % (path, _describe(link))
        missing, reason = inspect_directory(os.path.dirname(real) or "/", owners | {0})
        if missing or reason:
            return reason or "%s does not exist" % missing
    try:
        st = os.lstat(real)
    except OSError as error:
        return "cannot read %s: %s" % (real, error)
    if not stat.S_ISREG(st.st_mode):
        return "%s is not a regular file" % real
    if st.st_uid not in owners | {0}:
        return "%s is %s: another user's file is never run" % (real, _describe(st))
    if stat.S_IMODE(st.st_mode) & 0o022:
        return "%s is %s: writable by group or others, who could replace what runs" % (real, _describe(st))
    if not os.access(real, os.X_OK):
        return "%s is not executable" % real
    return None


class Lock(object):
    """An exclusive lock file in a trusted directory, held for the duration of a `with` block."""

    def __init__(self, directory, name, timeout):
        self.path = os.path.join(directory, name)
        self.timeout = timeout
        self.fd = None

    def __enter__(self):
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        deadline = time.time() + self.timeout
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return self
            except OSError as error:
                if error.errno not in (errno.EAGAIN, errno.EACCES) or time.time() >= deadline:
                    os.close(self.fd)
                    self.fd = None
                    raise TrustError("another gpulab.mps task holds %s for more than %s s: runs on one pipe "
                                     "directory are serialised; wait for it, or look for a hung task" % (
                                         self.path, self.timeout))
                time.sleep(0.1)

    def __exit__(self, *exc):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        return False


def read_json(directory, name):
    text = read_small_file(os.path.join(directory, name), limit=1 << 20)
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None


def write_json(directory, name, data):
    """Write `data` as JSON to directory/name atomically: a new file made with O_EXCL, then os.replace."""
    fd, temp = tempfile.mkstemp(prefix="." + name + ".", dir=directory)
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(data, handle, sort_keys=True)
            os.fchmod(handle.fileno(), 0o644)
        os.replace(temp, os.path.join(directory, name))
    except BaseException:
        try:
            os.unlink(temp)
        except OSError:
            pass
        raise
