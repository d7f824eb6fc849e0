# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""Every external command of the collection: argv only, an environment built here, bounded in time and output.

This is a private module_utils of gpulab.mps: its API may change without notice. STANDARD LIBRARY ONLY, and it needs
no Ansible: the modules, the metrics collector, the unit's entry point, the workload runner and the benchmarks all
call run_bounded().

Why not AnsibleModule.run_command: it has no timeout, no bound on output, and it starts the child in the module's own
process group with the module's environment. A control binary that hangs, or whose child keeps the output pipe open
(a forked daemon, or a binary another user placed), hung the module and the metrics collector past every timeout; a
binary that floods its output put tens of MiB into a task result; a CUDA_VISIBLE_DEVICES in the controller's
environment reached the MPS daemon and moved the planned limits to another GPU. So here:
- the child runs in a session of its own (start_new_session), with the environment the caller built (base_environment
  and what the plan says), never this process's;
- at the deadline the child's whole process group is killed, whatever holds its pipes, and CommandTimeout says what
  it printed until then;
- when the child exits, its process group goes with it (a child it left holding the pipes is ours: it came from our
  call), unless the command is one that starts a daemon (daemon=True: its daemon may stay in the group);
- each stream keeps at most max_output bytes; the rest is read and dropped, and the text says it was cut.
"""

from __future__ import annotations

import errno
import os
import selectors
import signal
import subprocess
import time

# No external call of the collection may wait longer than this, whatever a user asks.
MAX_TIMEOUT = 3600
# What one call may keep of each stream: every answer of the CLI is a few KiB.
MAX_OUTPUT = 1 << 20
# The commands' PATH: root's system directories only (never the caller's PATH, which another user may have set).
SAFE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Seconds the pipes are read after the child exited (a fast child's last lines may still be in them).
DRAIN = 0.5
CUT = "\n[gpulab.mps: output cut after %d bytes; the command printed %d]"


class CommandTimeout(Exception):
    """A command ran past its bound and was killed with its whole process group."""

    def __init__(self, argv, timeout, stdout="", stderr=""):
        super(CommandTimeout, self).__init__("%s did not finish within %s s and was killed" % (
            " ".join(str(a) for a in argv), timeout))
        self.cmd = list(argv)
        self.timeout = timeout
        self.stdout = stdout
        self.stderr = stderr

    def details(self):
        return {"cmd": self.cmd, "rc": None, "stdout": self.stdout, "stderr": self.stderr, "timeout": self.timeout}


class CommandError(Exception):
    """A command could not be started at all (no such file, not executable)."""

    def __init__(self, argv, error):
        super(CommandError, self).__init__("cannot run %s: %s" % (argv[0], error))
        self.cmd = list(argv)

    def details(self):
        return {"cmd": self.cmd, "rc": None, "stdout": "", "stderr": ""}


def base_environment(extra=None):
    """The environment of every command: a fixed PATH and the C locale, plus `extra` (str values only)."""
    env = {"PATH": SAFE_PATH, "LANG": "C", "LC_ALL": "C"}
    for key, value in (extra or {}).items():
        env[str(key)] = str(value)
    return env


class _Stream(object):
    """What one output stream of the child said, kept up to a cap."""

    def __init__(self, cap):
        self.cap = cap
        self.kept = []
        self.size = 0
        self.seen = 0

    def add(self, chunk):
        self.seen += len(chunk)
        room = self.cap - self.size
        if room > 0:
            self.kept.append(chunk[:room])
            self.size += min(room, len(chunk))

    def text(self):
        text = b"".join(self.kept).decode("utf-8", "replace")
        return text + (CUT % (self.cap, self.seen) if self.seen > self.cap else "")


def _exited(pid):
    """Whether the child exited, without reaping it: a zombie keeps its PID and process group id reserved, so the
    group can still be signalled without reaching a stranger that was given the same number since."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def _kill_group(pgid):
    try:
        os.killpg(pgid, signal.SIGKILL)
    except OSError as error:
        if error.errno not in (errno.ESRCH, errno.EPERM):
            raise


def run_bounded(argv, timeout, data=None, env=None, max_output=MAX_OUTPUT, daemon=False):
    """(rc, stdout, stderr) of argv, run with `env` (default base_environment()) and stdin `data` (a str; a newline
    is added), killed with its process group after `timeout` seconds (CommandTimeout, with what it printed).

    daemon: the command starts a daemon that may stay in the child's process group: the group is then left alone
    when the child exits (the pipes are read for DRAIN seconds more, and no longer). Raises CommandError when the
    binary cannot be run. A child that exits without reading its stdin (the control CLI does, when no daemon
    listens) is not an error: its answer is read as usual.
    """
    argv = [str(a) for a in argv]
    timeout = float(timeout)
    deadline = time.monotonic() + timeout
    stdin = None
    if data is not None:
        stdin = (data if data.endswith("\n") else data + "\n").encode("utf-8")
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env or base_environment(),
                                close_fds=True, start_new_session=True, cwd="/")
    except OSError as error:
        raise CommandError(argv, os.strerror(error.errno) if error.errno else error)
    streams = {proc.stdout: _Stream(max_output), proc.stderr: _Stream(max_output)}
    selector = selectors.DefaultSelector()
    for pipe in streams:
        os.set_blocking(pipe.fileno(), False)
        selector.register(pipe, selectors.EVENT_READ)
    pending = stdin
    if pending is not None:
        os.set_blocking(proc.stdin.fileno(), False)
        selector.register(proc.stdin, selectors.EVENT_WRITE)
    drain_until = None
    timed_out = False
    try:
        while True:
            now = time.monotonic()
            if now >= deadline:
                timed_out = not _exited(proc.pid)
                break
            if drain_until is None and _exited(proc.pid):
                drain_until = now + DRAIN
            if drain_until is not None and (not selector.get_map() or now >= drain_until):
                break
            if not selector.get_map():
                time.sleep(min(0.02, deadline - now))  # pipes closed, the child still running: wait for its exit
                continue
            limit = min(deadline, drain_until or deadline) - now
            for key, _mask in selector.select(min(0.2, max(0.0, limit))):
                if key.fileobj is proc.stdin:
                    try:
                        written = os.write(proc.stdin.fileno(), pending)
                    except OSError as error:
                        if error.errno not in (errno.EPIPE, errno.EAGAIN):
                            raise
                        written = len(pending) if error.errno == errno.EPIPE else 0
                    pending = pending[written:]
                    if not pending:
                        selector.unregister(proc.stdin)
                        proc.stdin.close()
                    continue
                try:
                    chunk = os.read(key.fileobj.fileno(), 65536)
                except BlockingIOError:
                    continue
                if chunk:
                    streams[key.fileobj].add(chunk)
                else:
                    selector.unregister(key.fileobj)
        # The child's group: at the deadline always; after a normal exit unless it started a daemon.
        if timed_out or not daemon:
            _kill_group(proc.pid)
        if timed_out:
            proc.kill()
    finally:
        selector.close()
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            if pipe is not None and not pipe.closed:
                pipe.close()
        rc = proc.wait()
    out, err = streams[proc.stdout].text(), streams[proc.stderr].text()
    if timed_out:
        raise CommandTimeout(argv, timeout, out, err)
    return rc, out, err
