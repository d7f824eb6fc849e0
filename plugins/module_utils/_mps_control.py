# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""Client for the NVIDIA MPS control daemon (nvidia-cuda-mps-control).

This is a private module_utils of gpulab.mps: its API may change without notice.

What the CLI prints is read by _mps_output (the one parser of every CLI output); this module sends the
commands, each bounded by a timeout, with argv [binary] and the pipe and log directories in the
environment, and nothing through a shell.
"""

from __future__ import annotations

import hashlib
import os
import stat
import time

from ansible_collections.gpulab.mps.plugins.module_utils._command import CommandTimeout, run_bounded
from ansible_collections.gpulab.mps.plugins.module_utils._mps_output import (
    BINARY_DIRECTORIES, CONTROL_BINARY, PID_FILE, OutputError, no_daemon, parse_percentage, parse_pid_list,
    parse_control_log, parse_pinned_limit, parse_pipe_directory, parse_ps, parse_server_log, parse_server_status,
    unknown_command)
from ansible_collections.gpulab.mps.plugins.module_utils._mps_health import FAULT, assess
from ansible_collections.gpulab.mps.plugins.module_utils._sizes import mps_size, readback_matches
from ansible_collections.gpulab.mps.plugins.module_utils._trust import (
    inspect_directory, process_environment, process_start, read_json, read_small_file, socket_problem, write_json)

DEFAULT_PIPE_DIRECTORY = "/tmp/nvidia-mps"
DEFAULT_LOG_DIRECTORY = "/var/log/nvidia-mps"
# Seconds one CLI command may take (the daemon answers in milliseconds; a hung one must not hang the play).
COMMAND_TIMEOUT = 30


class MpsControlError(Exception):
    """The control CLI answered something other than what the command should give."""

    def __init__(self, message, cmd=None, rc=None, stdout=None, stderr=None):
        super(MpsControlError, self).__init__(message)
        self.cmd = cmd
        self.rc = rc
        self.stdout = stdout
        self.stderr = stderr

    def details(self):
        """The fields a module returns with a failure (as docker's _common_cli does)."""
        return {"cmd": self.cmd, "rc": self.rc, "stdout": self.stdout, "stderr": self.stderr}


class DaemonNotRunning(MpsControlError):
    """No MPS control daemon answers on the pipe directory."""


class UntrustedPipe(MpsControlError):
    """The pipe directory's control socket is not the daemon's: nothing is sent to it."""


class ControlHangs(MpsControlError):
    """A call of the control binary ran past its bound and was killed (a hung binary, or a daemon that answers
    nothing)."""


def default_state_directory():
    """Where the collection keeps what it writes about a daemon: root's own directory, or the user's."""
    if os.geteuid() == 0:
        return "/var/lib/gpulab-mps"
    return os.path.join(os.path.expanduser("~"), ".local", "state", "gpulab-mps")


class LimitRecord(object):
    """The exact pinned limits gpulab.mps set on a daemon (the CLI reads them back rounded down to whole G).

    Kept in the state directory (not in the pipe directory, which the daemon shares with every user), one
    file per pipe directory, written atomically. A record counts for the daemon it names (PID and start
    time), and, when the daemon's service applies the same limits at every start (mps_host's drop-in), for
    a daemon that service restarted too.
    """

    def __init__(self, state_directory, pipe_directory):
        self.directory = state_directory
        digest = hashlib.sha256(pipe_directory.encode("utf-8")).hexdigest()[:16]
        self.name = "limits-%s.json" % digest
        self.lock_name = "lock-%s" % digest
        self.pipe_directory = pipe_directory

    def trusted(self):
        missing, reason = inspect_directory(self.directory, (0, os.geteuid()))
        return not missing and not reason

    def exact(self, identity, requested=None):
        """{ordinal: bytes} known to be in force on the daemon `identity` ([pid, start])."""
        record = read_json(self.directory, self.name) if self.trusted() else None
        if not isinstance(record, dict) or record.get("pipe_directory") != self.pipe_directory:
            return {}
        try:
            limits = dict((int(k), int(v)) for k, v in (record.get("pinned_memory_limit") or {}).items())
        except (TypeError, ValueError):
            return {}
        if identity and record.get("daemon") == identity:
            return limits
        if record.get("applied_at_start") and (requested is None or requested == limits):
            return limits
        return {}

    def write(self, identity, limits, applied_at_start):
        write_json(self.directory, self.name, {
            "pipe_directory": self.pipe_directory, "daemon": identity, "applied_at_start": bool(applied_at_start),
            "pinned_memory_limit": dict((str(k), v) for k, v in sorted(limits.items()))})


def with_exact_limits(defaults, recorded):
    """Defaults with each rounded read-back replaced by the exact value recorded for that device."""
    limits = dict(defaults.get("pinned_memory_limit") or {})
    for ordinal, size_bytes in recorded.items():
        if readback_matches(size_bytes, limits.get(str(ordinal))):
            limits[str(ordinal)] = mps_size(size_bytes)
    return dict(defaults, pinned_memory_limit=limits)


# --- the client -----------------------------------------------------------------------------------

def find_control_binary(module, binary=None):
    """Path of nvidia-cuda-mps-control: the given path, else PATH plus NVIDIA's usual places."""
    if binary:
        if not (os.path.isfile(binary) and os.access(binary, os.X_OK)):
            module.fail_json(msg="MPS control binary %s is not an executable file" % binary)
        return binary
    return module.get_bin_path(CONTROL_BINARY, required=True, opt_dirs=list(BINARY_DIRECTORIES))


class MpsControl(object):
    """Talks to one MPS control daemon, chosen by its pipe directory.

    Commands go to the CLI on stdin (`echo ps | nvidia-cuda-mps-control`), with argv [binary]
    and the pipe and log directories in the environment; nothing goes through a shell.
    """

    def __init__(self, module, binary, pipe_directory=DEFAULT_PIPE_DIRECTORY, log_directory=DEFAULT_LOG_DIRECTORY,
                 extra_env=None, timeout=COMMAND_TIMEOUT, trusted_uids=None):
        self.module = module
        self.binary = binary
        self.pipe_directory = pipe_directory
        self.log_directory = log_directory
        self.extra_env = dict(extra_env or {})
        self.timeout = timeout
        # Whose daemon this may be: root's or this user's (mps_daemon narrows it to this user).
        self.trusted_uids = set(trusted_uids if trusted_uids is not None else (0, os.geteuid()))

    def environment(self):
        env = {"CUDA_MPS_PIPE_DIRECTORY": self.pipe_directory, "CUDA_MPS_LOG_DIRECTORY": self.log_directory}
        env.update(self.extra_env)
        return env

    def _call(self, argv, data=None, timeout=None):
        """(rc, stdout, stderr) of one bounded call of the binary; a hung binary raises MpsControlError."""
        try:
            return run_bounded(self.module, argv, timeout or self.timeout, data=data, environ_update=self.environment())
        except CommandTimeout as error:
            raise ControlHangs(
                "%s (command %r): the MPS control binary hangs; check that %s is NVIDIA's nvidia-cuda-mps-control "
                "and that the daemon of %s is not stuck (control.log in %s; on driver 580 a daemon answered nothing "
                "after terminate_client on a server in FAULT, until that server's clients exited)" % (
                    error, data, self.binary, self.pipe_directory, self.log_directory),
                cmd=error.cmd, rc=None, stdout=error.stdout, stderr=error.stderr)

    def run(self, command, timeout=None):
        """Send one command; return stdout. Raises DaemonNotRunning, UntrustedPipe or MpsControlError.

        timeout: the bound of this call, for a command that waits by design (`quit -t N`), else the client's."""
        argv = [self.binary]
        problem = socket_problem(os.path.join(self.pipe_directory, "control"), self.trusted_uids)
        if problem:
            raise UntrustedPipe("refusing to talk to %s: %s. Remove it (as root) and restart the daemon"
                                % (self.pipe_directory, problem), cmd=argv)
        rc, out, err = self._call(argv, data=command, timeout=timeout)
        if no_daemon(rc, out + err):
            raise DaemonNotRunning("no MPS control daemon answers in %s" % self.pipe_directory,
                                   cmd=argv, rc=rc, stdout=out, stderr=err)
        if rc != 0:
            raise MpsControlError("MPS control command %r failed (rc=%d)" % (command, rc),
                                  cmd=argv, rc=rc, stdout=out, stderr=err)
        unknown = unknown_command(out)
        if unknown is not None:
            raise MpsControlError("this MPS control daemon does not know the command %r" % unknown,
                                  cmd=argv, rc=rc, stdout=out, stderr=err)
        return out

    def query(self, command, parser):
        """run(command), read by parser; output the parser does not know is an MpsControlError, not a traceback."""
        out = self.run(command)
        try:
            return parser(out)
        except OutputError as error:
            raise MpsControlError("unexpected answer of nvidia-cuda-mps-control to %r: %s" % (command, error),
                                  cmd=[self.binary], rc=0, stdout=out, stderr="")

    # Queries -------------------------------------------------------------------------------------
    def is_running(self):
        try:
            self.run("get_server_list")
        except DaemonNotRunning:
            return False
        return True

    def server_list(self):
        return self.query("get_server_list", parse_pid_list)

    def client_list(self, server_pid):
        return self.query("get_client_list %d" % server_pid, parse_pid_list)

    def server_status(self, server_pid):
        return self.query("get_server_status %d" % server_pid, parse_server_status)

    def ps(self):
        return self.query("ps", parse_ps)

    def active_thread_percentage(self, server_pid):
        return self.query("get_active_thread_percentage %d" % server_pid, parse_percentage)

    def default_active_thread_percentage(self):
        return self.query("get_default_active_thread_percentage", parse_percentage)

    def default_pinned_limit(self, device):
        return self.query("get_default_device_pinned_mem_limit %d" % device, parse_pinned_limit)

    def server_pinned_limit(self, server_pid, device):
        return self.query("get_device_pinned_mem_limit %d %d" % (server_pid, device), parse_pinned_limit)

    # Changes -------------------------------------------------------------------------------------
    def set_default_active_thread_percentage(self, value):
        """Set, then return what the daemon now holds (the CLI echoes the value in force)."""
        return self.query("set_default_active_thread_percentage %s" % _format_percentage(value), parse_percentage)

    def set_default_pinned_limit(self, device, size):
        """`size` must already be in MPS form ("2G", "1536M"): the CLI drops what it cannot read."""
        self.run("set_default_device_pinned_mem_limit %d %s" % (device, size))

    def shutdown_server(self, server_pid):
        self.run("shutdown_server %d" % server_pid)

    def quit(self):
        self.run("quit")

    def start_argv(self, multiuser=False):
        """How the daemon is started: `-d`, and `-M` for the multi-user server (clients of every user, one server)."""
        return [self.binary, "-d"] + (["-M"] if multiuser else [])

    def start_daemon(self, multiuser=False):
        """`nvidia-cuda-mps-control -d [-M]`: returns (rc, stdout, stderr) for the caller to judge."""
        return self._call(self.start_argv(multiuser))

    # State of the pipe directory -----------------------------------------------------------------
    def daemon_pid(self):
        """PID of the control daemon of this pipe directory, from its pid file, or None.

        MPS makes the pid file writable by everyone, so its PID is only a hint: it counts when it is a live
        nvidia-cuda-mps-control of one of the trusted users serving this very pipe directory.
        """
        text = read_small_file(os.path.join(self.pipe_directory, PID_FILE), limit=64)
        try:
            pid = int((text or "").strip())
        except ValueError:
            return None
        return pid if pid > 1 and self.is_daemon_process(pid) else None

    def is_daemon_process(self, pid):
        seen = process_start(pid)
        if not seen or seen[0] == "Z" or seen[2] not in self.trusted_uids:
            return False
        comm = read_small_file("/proc/%d/comm" % pid, limit=64) or ""
        if not comm.strip().startswith(CONTROL_BINARY[:15]):
            return False
        env = process_environment(pid)
        if env is None:  # another user's daemon: its environment is not ours to read
            return os.geteuid() != 0
        return env.get(b"CUDA_MPS_PIPE_DIRECTORY", DEFAULT_PIPE_DIRECTORY.encode()).decode("utf-8", "replace") \
            .rstrip("/") == self.pipe_directory.rstrip("/")

    def daemon_identity(self, pid):
        """(pid, start time): what tells this daemon from a later one with the same PID."""
        seen = process_start(pid) if pid else None
        return [pid, seen[1]] if seen else None

    def pipe_entries(self):
        try:
            return parse_pipe_directory(os.listdir(self.pipe_directory))
        except OSError:
            return parse_pipe_directory([])

    def wait(self, predicate, timeout, interval=0.2):
        """Poll predicate() until it is true or timeout seconds pass; return its last value."""
        deadline = time.time() + timeout
        while True:
            value = predicate()
            if value or time.time() >= deadline:
                return value
            time.sleep(interval)

    def read_log(self, name, max_bytes=4 << 20):
        """The last max_bytes of a log file (server.log grows for the daemon's whole life); no link followed."""
        try:
            fd = os.open(os.path.join(self.log_directory, name), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            return ""
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return ""
            size = os.lseek(fd, 0, os.SEEK_END)
            os.lseek(fd, max(0, size - max_bytes), os.SEEK_SET)
            chunks = []
            while True:
                chunk = os.read(fd, 1 << 20)
                if not chunk:
                    break
                chunks.append(chunk)
            return b"".join(chunks).decode("utf-8", "replace")
        finally:
            os.close(fd)

    def log_tail(self, name="control.log", lines=20):
        return "".join(self.read_log(name, 64 << 10).splitlines(True)[-lines:])

    def empty_state(self, running=False, pid=None):
        """The snapshot of a daemon that has nothing to show: not running, or (running None) not answering."""
        return {"running": running, "pid": pid, "pipe_directory": self.pipe_directory,
                "log_directory": self.log_directory, "servers": [], "clients": [],
                "defaults": {"active_thread_percentage": None, "pinned_memory_limit": {}},
                "stale_sockets": []}

    def snapshot(self, devices=(0,), recorded=None):
        """Everything a user asks of a daemon: running, pid, servers, clients, defaults, stale sockets.

        `devices` are the MPS device ordinals whose default pinned limits are read; `recorded`
        ({ordinal: bytes}) the exact limits known to be in force, which replace rounded read-backs.
        """
        return self._read(devices, recorded)[0]

    def _read(self, devices, recorded):
        """(snapshot, server.log parsed): the log read for the snapshot's exact limits also serves the health."""
        state = self.empty_state()
        try:
            server_pids = self.server_list()
        except DaemonNotRunning:
            if self.daemon_pid() is None:
                entries = self.pipe_entries()
                state["stale_sockets"] = entries["sockets"]
                # What a daemon that did not stop on purpose leaves behind (quit removes both).
                state["leftovers"] = {"pid_file": entries["pid_file"], "log_fifo": entries["log_fifo"]}
            return state, {}
        state["running"] = True
        state["pid"] = self.daemon_pid()
        state["clients"] = self.ps()
        state["defaults"]["active_thread_percentage"] = self.default_active_thread_percentage()
        for device in devices:
            state["defaults"]["pinned_memory_limit"][str(device)] = self.default_pinned_limit(device)
        if recorded:
            state["defaults"] = with_exact_limits(state["defaults"], recorded)
        logged = parse_server_log(self.read_log("server.log"))
        for pid in server_pids:
            state["servers"].append(self.server_snapshot(pid, devices, logged.get(pid)))
        return state, logged

    def health(self, devices=(0,), recorded=None, expect_running=True, tolerate_timeout=True, control_log=None):
        """(snapshot, health): the snapshot, and _mps_health.assess of it with what control.log and server.log say.

        With tolerate_timeout, a daemon that does not answer within the timeout is a finding, not an error (for the
        metrics): the snapshot is then only what could be read (running unknown, no servers) and health says
        "unresponsive"; without it (a module), ControlHangs is raised as every bounded call's is.
        control_log: parse_control_log of control.log, for a caller that has read it already."""
        try:
            state, server_log = self._read(devices, recorded)
            unresponsive = None
        except ControlHangs as error:
            if not tolerate_timeout:
                raise
            state, server_log = self.empty_state(running=None, pid=self.daemon_pid()), None
            unresponsive = str(error)
        return state, self.assess(state, expect_running=expect_running, unresponsive=unresponsive,
                                  control_log=control_log, server_log=server_log)

    def assess(self, state, expect_running=True, unresponsive=None, control_log=None, server_log=None):
        """_mps_health.assess of a snapshot just read, with what control.log and server.log say (no CLI call).

        A log not given is read here; server.log only where a server is in FAULT (what its faults are read for)."""
        # The tails are enough: a fault and an unasked exit are the last things a log says about a server.
        if control_log is None:
            control_log = parse_control_log(self.read_log("control.log", 1 << 20))
        if server_log is None and any(s.get("status") == FAULT for s in state.get("servers") or []):
            server_log = parse_server_log(self.read_log("server.log", 1 << 20))
        return assess(state, control_log, server_log, expect_running=expect_running, unresponsive=unresponsive)

    def server_snapshot(self, pid, devices, logged=None):
        """One server: status, clients, what it holds now, and what it logged at start (exact bytes)."""
        if logged:
            logged = {"active_thread_percentage": logged["active_thread_percentage"],
                      "pinned_memory_limit": dict((str(d), v) for d, v in logged["pinned_memory_limit"].items())}
        server = {"pid": pid, "status": None, "clients": [], "active_thread_percentage": None,
                  "pinned_memory_limit": {}, "logged": logged}
        try:
            server["status"] = self.server_status(pid)
            server["clients"] = self.client_list(pid)
            server["active_thread_percentage"] = self.active_thread_percentage(pid)
            for device in devices:
                server["pinned_memory_limit"][str(device)] = self.server_pinned_limit(pid, device)
        except MpsControlError:
            # The server exited between get_server_list and these queries.
            server["status"] = server["status"] or "GONE"
        return server


def _format_percentage(value):
    value = float(value)
    return ("%d" % value) if value == int(value) else ("%g" % value)


def pid_alive(pid):
    """Whether a process with this PID exists (zombies count as gone)."""
    seen = process_start(pid)
    return bool(seen) and seen[0] != "Z"
