# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""The one client of the NVIDIA MPS control daemon (nvidia-cuda-mps-control): the only code that starts, asks and
stops it and reads its files.

This is a private module_utils of gpulab.mps: its API may change without notice. STANDARD LIBRARY ONLY: the modules,
the unit's entry point (_mps_cli), the metrics collector, the workload runner and the benchmarks all use it, with or
without Ansible.

A client is made from the host's plan (MpsControl.from_plan): its binary (found once, by find_control_binary, and
trusted), its pipe, log and state directories, and the environment the daemon gets (the plan's, never the caller's).
Every call goes through _command.run_bounded (bounded in time and output, its process group ended); every answer is
read by _mps_output (the one parser). What another user controls is never trusted:
- the `control` socket is talked to only when it is a socket of the daemon's user;
- the pid file (mode 0666) is a hint: its PID counts when it is a live nvidia-cuda-mps-control of this very pipe
  directory;
- `ps` prints each client's argv[0] raw, so its rows are read against get_client_list (no user's text in it): a row
  inside someone's process name is not a client;
- control.log records any user's commands verbatim: they never decide anything; what this collection asked of a
  daemon (the exact limits, the servers it shut down) is kept in its own state directory (StateRecord).
"""

from __future__ import annotations

import hashlib
import os
import stat
import time

from ansible_collections.gpulab.mps.plugins.module_utils import _command
from ansible_collections.gpulab.mps.plugins.module_utils._command import (
    CommandError, CommandTimeout, SAFE_PATH, base_environment)
from ansible_collections.gpulab.mps.plugins.module_utils._mps_health import FAULT, assess
from ansible_collections.gpulab.mps.plugins.module_utils._mps_output import (
    BINARY_DIRECTORIES, CONTROL_BINARY, PID_FILE, OutputError, no_daemon, parse_control_log, parse_percentage,
    parse_pid_list, parse_pinned_limit, parse_pipe_directory, parse_ps, parse_server_log, parse_server_status,
    unknown_command)
from ansible_collections.gpulab.mps.plugins.module_utils._sizes import mps_size, readback_matches
from ansible_collections.gpulab.mps.plugins.module_utils._trust import (
    executable_problem, inspect_directory, process_argv, process_environment, process_start, read_json,
    read_small_file, socket_problem, write_json)

DEFAULT_PIPE_DIRECTORY = "/tmp/nvidia-mps"
DEFAULT_LOG_DIRECTORY = "/var/log/nvidia-mps"
# Seconds one CLI command may take (the daemon answers in milliseconds; a hung one must not hang the play).
COMMAND_TIMEOUT = 30
# The variables of the daemon's environment that the plan may set; every other one is dropped.
DAEMON_VARIABLES = ("CUDA_MPS_PIPE_DIRECTORY", "CUDA_MPS_LOG_DIRECTORY", "CUDA_VISIBLE_DEVICES", "LD_LIBRARY_PATH")


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


def find_control_binary(given=None, directories=BINARY_DIRECTORIES):
    """(path, None) of the MPS control binary, or (None, why not): the one place it is looked for.

    given: a path, whatever its file name. Else nvidia-cuda-mps-control in root's system directories and NVIDIA's
    usual places (never the caller's PATH, which another user may have set). Either way it must be a file that
    nobody but root (or this user) could have placed or replaced."""
    if given:
        if not os.path.isabs(given):
            return None, "control_binary must be an absolute path, got %r" % (given,)
        problem = executable_problem(given, (0, os.geteuid()))
        return (None, "control_binary %s will not be run: %s" % (given, problem)) if problem else (given, None)
    looked = list(dict.fromkeys(list(directories or ()) + SAFE_PATH.split(":")))
    for directory in looked:
        path = os.path.join(directory, CONTROL_BINARY)
        if os.path.lexists(path):
            problem = executable_problem(path, (0, os.geteuid()))
            if problem:
                return None, "%s will not be run: %s" % (path, problem)
            return path, None
    return None, ("%s was not found in %s. Install the NVIDIA compute utilities that match the driver (for example "
                  "nvidia-compute-utils-<branch>-server), or set control_binary" % (CONTROL_BINARY, ", ".join(looked)))


def daemon_environment(pipe_directory, log_directory, visible_devices=None, library_path=None):
    """The environment the daemon and every CLI call get (without PATH and locale, which base_environment adds)."""
    env = {"CUDA_MPS_PIPE_DIRECTORY": pipe_directory, "CUDA_MPS_LOG_DIRECTORY": log_directory}
    if visible_devices:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(visible_devices)
    if library_path:
        env["LD_LIBRARY_PATH"] = library_path
    return env


class StateRecord(object):
    """What gpulab.mps asked of a daemon, kept where no other user can write (the state directory, never the pipe
    directory, which MPS opens to every user): one JSON file per pipe directory, written atomically.

    - the exact pinned limits it set (the CLI reads them back rounded down to whole G); they count for the daemon the
      record names (PID and start time), and, when the daemon's service applies the same limits at every start
      (mps_host's unit), for a daemon that service restarted too;
    - the servers it shut down (so that their exit is not taken for a crash; control.log cannot tell, since it logs
      every user's commands alike).
    """

    def __init__(self, state_directory, pipe_directory):
        self.directory = state_directory
        digest = hashlib.sha256(pipe_directory.encode("utf-8")).hexdigest()[:16]
        self.name = "limits-%s.json" % digest
        self.lock_name = "lock-%s" % digest
        self.pipe_directory = pipe_directory

    def trusted(self):
        if not self.directory:
            return False
        missing, reason = inspect_directory(self.directory, (0, os.geteuid()))
        return not missing and not reason

    def read(self):
        record = read_json(self.directory, self.name) if self.trusted() else None
        if not isinstance(record, dict) or record.get("pipe_directory") != self.pipe_directory:
            return {}
        return record

    def exact(self, identity, requested=None):
        """{ordinal: bytes} known to be in force on the daemon `identity` ([pid, start])."""
        record = self.read()
        try:
            limits = dict((int(k), int(v)) for k, v in (record.get("pinned_memory_limit") or {}).items())
        except (TypeError, ValueError):
            return {}
        if identity and record.get("daemon") == identity:
            return limits
        if record.get("applied_at_start") and (requested is None or requested == limits):
            return limits
        return {}

    def shutdowns(self, identity):
        """The server PIDs this collection shut down on the daemon `identity`."""
        record = self.read()
        if not identity or record.get("shutdowns_of") != identity:
            return set()
        return set(p for p in record.get("shutdowns") or [] if isinstance(p, int))

    def write(self, identity, limits, applied_at_start):
        record = self.read()
        record.update({"pipe_directory": self.pipe_directory, "daemon": identity,
                       "applied_at_start": bool(applied_at_start),
                       "pinned_memory_limit": dict((str(k), v) for k, v in sorted(limits.items()))})
        write_json(self.directory, self.name, record)

    def note_shutdown(self, identity, server_pid):
        record = self.read() or {"pipe_directory": self.pipe_directory}
        known = sorted(self.shutdowns(identity) | set([server_pid]))[-256:]
        record.update({"pipe_directory": self.pipe_directory, "shutdowns_of": identity, "shutdowns": known})
        write_json(self.directory, self.name, record)


def with_exact_limits(defaults, recorded):
    """Defaults with each rounded read-back replaced by the exact value recorded for that device."""
    limits = dict(defaults.get("pinned_memory_limit") or {})
    for ordinal, size_bytes in recorded.items():
        if readback_matches(size_bytes, limits.get(str(ordinal))):
            limits[str(ordinal)] = mps_size(size_bytes)
    return dict(defaults, pinned_memory_limit=limits)


# --- the client -----------------------------------------------------------------------------------

class MpsControl(object):
    """Talks to one MPS control daemon, chosen by its pipe directory.

    Commands go to the CLI on stdin (`echo ps | nvidia-cuda-mps-control`), with argv [binary] and the environment
    built from the plan; nothing goes through a shell."""

    def __init__(self, binary, pipe_directory=DEFAULT_PIPE_DIRECTORY, log_directory=DEFAULT_LOG_DIRECTORY,
                 environment=None, timeout=COMMAND_TIMEOUT, trusted_uids=None, state_directory=None,
                 applied_at_start=False, requested_limits=None):
        self.binary = binary
        self.pipe_directory = pipe_directory
        self.log_directory = log_directory
        env = daemon_environment(pipe_directory, log_directory)
        env.update(dict((k, v) for k, v in (environment or {}).items() if k in DAEMON_VARIABLES and v))
        self.daemon_env = env
        self.timeout = timeout
        # Whose daemon this may be: root's or this user's (mps_daemon narrows it to this user).
        self.trusted_uids = set(trusted_uids if trusted_uids is not None else (0, os.geteuid()))
        self.record = StateRecord(state_directory, pipe_directory) if state_directory else None
        # How the exact limits of the record count (see StateRecord): the unit re-applies them at each start.
        self.applied_at_start = applied_at_start
        self.requested_limits = requested_limits

    @classmethod
    def from_plan(cls, plan, timeout=None, trusted_uids=None):
        """The client of the daemon a plan describes (preflight_mps_plan, or _plan.local_plan)."""
        daemon = plan.get("daemon") or {}
        limits = dict((int(o), int(b)) for o, b in (daemon.get("pinned_memory_limit") or {}).items())
        return cls(plan["control_binary"], plan["pipe_directory"], plan["log_directory"],
                   environment=daemon.get("environment"), timeout=timeout or COMMAND_TIMEOUT,
                   trusted_uids=trusted_uids, state_directory=plan.get("state_directory"),
                   applied_at_start=daemon.get("service_manager") == "systemd", requested_limits=limits)

    def environment(self):
        """The whole environment of a call: root's PATH and the C locale, and the plan's variables."""
        env = base_environment(self.daemon_env)
        env["PATH"] = os.path.dirname(self.binary) + ":" + env["PATH"]
        return env

    def _call(self, argv, data=None, timeout=None, daemon=False):
        """(rc, stdout, stderr) of one bounded call of the binary; a hung binary raises ControlHangs."""
        try:
            return _command.run_bounded(argv, timeout or self.timeout, data=data, env=self.environment(), daemon=daemon)
        except CommandTimeout as error:
            raise ControlHangs(
                "%s (command %r): the MPS control binary hangs; check that %s is NVIDIA's nvidia-cuda-mps-control "
                "and that the daemon of %s is not stuck (control.log in %s; on driver 580 a daemon answered nothing "
                "after terminate_client on a server in FAULT, until that server's clients exited)" % (
                    error, data, self.binary, self.pipe_directory, self.log_directory),
                cmd=error.cmd, rc=None, stdout=error.stdout, stderr=error.stderr)
        except CommandError as error:
            raise MpsControlError("%s; is %s the MPS control binary?" % (error, self.binary), **error.details())

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

    def query(self, command, parser, **kwargs):
        """run(command), read by parser; output the parser does not know is an MpsControlError, not a traceback."""
        out = self.run(command)
        try:
            return parser(out, **kwargs)
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

    def client_lists(self, servers=None):
        """{server pid: [client pids]} of every server (or of `servers`): what `ps` rows are read against."""
        lists = {}
        for pid in self.server_list() if servers is None else servers:
            try:
                lists[pid] = self.client_list(pid)
            except MpsControlError:
                lists[pid] = []  # the server exited meanwhile
        return lists

    def server_status(self, server_pid):
        return self.query("get_server_status %d" % server_pid, parse_server_status)

    def ps(self, clients=None):
        """The clients as `ps` lists them, each row confirmed by get_client_list (`clients`, read here when not
        given): a row that someone's process name printed is not a client."""
        if clients is None:
            clients = self.client_lists()
        return self.query("ps", parse_ps, clients=clients)

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
        """Shut a server down, recorded first: its exit is then known to be asked for (control.log cannot say)."""
        identity = self.daemon_identity(self.daemon_pid())
        if self.record is not None and identity and self.record.trusted():
            try:
                self.record.note_shutdown(identity, server_pid)
            except OSError:
                pass  # without the note its exit is reported as unasked: a finding, not a failure
        self.run("shutdown_server %d" % server_pid)

    def start_server(self, uid):
        self.run("start_server -uid %d" % uid)

    def quit(self, force_after=None):
        """`quit`, or `quit -t N` (force the servers down after N s); the call then waits N s more than others."""
        if force_after is None:
            self.run("quit")
        else:
            self.run("quit -t %d" % force_after, timeout=force_after + COMMAND_TIMEOUT)

    def start_argv(self, multiuser=False):
        """How the daemon is started: `-d`, and `-M` for the multi-user server (clients of every user, one server)."""
        return [self.binary, "-d"] + (["-M"] if multiuser else [])

    def start_daemon(self, multiuser=False):
        """`nvidia-cuda-mps-control -d [-M]` with the plan's environment: (rc, stdout, stderr) for the caller."""
        return self._call(self.start_argv(multiuser), daemon=True)

    # State of the pipe directory -----------------------------------------------------------------
    def daemon_pid(self):
        """PID of the control daemon of this pipe directory, from its pid file, or None.

        MPS makes the pid file writable by everyone, so its PID is only a hint: it counts when it is a live
        nvidia-cuda-mps-control of one of the trusted users serving this very pipe directory.
        """
        text = read_small_file(os.path.join(self.pipe_directory, PID_FILE), limit=64) or ""
        text = text.strip(" \t\r\n")
        if not (text.isascii() and text.isdigit() and len(text) <= 10):
            return None
        pid = int(text)
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

    def daemon_options(self, pid):
        """What a running daemon was started with, from its own process (root's; no user writes it):
        {"multiuser": bool, "visible_devices": str or None}."""
        argv = process_argv(pid) or []
        env = process_environment(pid) or {}
        visible = env.get(b"CUDA_VISIBLE_DEVICES")
        return {"multiuser": b"-M" in argv[1:] or b"--multiuser-server" in argv[1:],
                "visible_devices": visible.decode("utf-8", "replace") if visible is not None else None}

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

    def control_log(self, daemon_pid=None):
        """parse_control_log of control.log's tail, read as the lines of `daemon_pid` (the daemon_pid() proven from
        /proc): a line that names another PID, or a command any user sent, decides nothing. control.log is evidence
        for a report, never the basis for an action (the daemon logs `ps` answers, client names and all)."""
        return parse_control_log(self.read_log("control.log", 1 << 20), daemon_pid=daemon_pid)

    def log_tail(self, name="control.log", lines=20):
        return "\n".join(self.read_log(name, 64 << 10).split("\n")[-lines - 1:]).strip()

    def empty_state(self, running=False, pid=None):
        """The snapshot of a daemon that has nothing to show: not running, or (running None) not answering."""
        return {"running": running, "pid": pid, "identity": None, "pipe_directory": self.pipe_directory,
                "log_directory": self.log_directory, "servers": [], "clients": [],
                "defaults": {"active_thread_percentage": None, "pinned_memory_limit": {}},
                "stale_sockets": []}

    def recorded_limits(self, identity):
        """The exact limits this collection recorded for the daemon `identity` ({} without a record)."""
        if self.record is None:
            return {}
        return self.record.exact(identity, self.requested_limits if self.applied_at_start else None)

    def snapshot(self, devices=(0,)):
        """Everything a user asks of a daemon: running, pid, identity, servers, clients, defaults, stale sockets.

        `devices` are the MPS device ordinals whose default pinned limits are read; a rounded read-back is replaced
        by the exact value this collection recorded setting on this very daemon."""
        return self._read(devices)[0]

    def _read(self, devices):
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
        state["identity"] = self.daemon_identity(state["pid"])
        logged = parse_server_log(self.read_log("server.log"))
        for pid in server_pids:
            state["servers"].append(self.server_snapshot(pid, devices, logged.get(pid)))
        state["clients"] = self.ps(dict((s["pid"], s["clients"]) for s in state["servers"]))
        state["defaults"]["active_thread_percentage"] = self.default_active_thread_percentage()
        for device in devices:
            state["defaults"]["pinned_memory_limit"][str(device)] = self.default_pinned_limit(device)
        recorded = self.recorded_limits(state["identity"])
        if recorded:
            state["defaults"] = with_exact_limits(state["defaults"], recorded)
        return state, logged

    def health(self, devices=(0,), expect_running=True, tolerate_timeout=True, control_log=None):
        """(snapshot, health): the snapshot, and _mps_health.assess of it with what control.log and server.log say.

        With tolerate_timeout, a daemon that does not answer within the timeout is a finding, not an error (for the
        metrics): the snapshot is then only what could be read (running unknown, no servers) and health says
        "unresponsive"; without it (a module), ControlHangs is raised as every bounded call's is.
        control_log: parse_control_log of control.log, for a caller that has read it already."""
        try:
            state, server_log = self._read(devices)
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

        A log not given is read here; server.log only where a server is in FAULT (what its faults are read for).
        The servers this collection shut down count as asked for (its record), whatever control.log says."""
        # The tails are enough: a fault and an unasked exit are the last things a log says about a server.
        if control_log is None:
            control_log = self.control_log(state.get("pid"))
        if server_log is None and any(s.get("status") == FAULT for s in state.get("servers") or []):
            server_log = parse_server_log(self.read_log("server.log", 1 << 20))
        identity = state.get("identity") or self.daemon_identity(state.get("pid"))
        if control_log and control_log.get("waiting"):
            # A queued client that is gone (it gave up) waits for nothing.
            live = dict((pid, c) for pid, c in control_log["waiting"].items() if pid_alive(pid))
            control_log = dict(control_log, waiting=live)
        asked = self.record.shutdowns(identity) if self.record is not None and identity else set()
        if asked and control_log:
            servers = dict((pid, dict(s, requested=True) if pid in asked and s.get("exited") else s)
                           for pid, s in (control_log.get("servers") or {}).items())
            control_log = dict(control_log, servers=servers)
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
        except (DaemonNotRunning, UntrustedPipe, ControlHangs):
            raise
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
