# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""Client for the NVIDIA MPS control daemon (nvidia-cuda-mps-control), and parsers of its output.

This is a private module_utils of gpulab.mps: its API may change without notice.

Every parser here is written against output recorded on an H100 with driver 580
(tests/unit/fixtures/h100-transcripts). Two facts shape the code:
- the CLI never reports a bad command through its exit code (an unknown command, an
  out-of-range percentage or an unreadable size all exit 0), so callers validate first and
  read back after;
- the only exit code it does use is 1 with "Cannot find MPS control daemon process" when no
  daemon listens on CUDA_MPS_PIPE_DIRECTORY.
"""

from __future__ import annotations

import json
import os
import re
import time

from ansible_collections.gpulab.mps.plugins.module_utils._sizes import mps_size, readback_matches

DEFAULT_PIPE_DIRECTORY = "/tmp/nvidia-mps"
DEFAULT_LOG_DIRECTORY = "/var/log/nvidia-mps"
CONTROL_BINARY = "nvidia-cuda-mps-control"
# Where NVIDIA's packages and container images put the binaries, besides PATH.
EXTRA_BINARY_PATHS = ["/usr/local/nvidia/bin", "/usr/bin", "/usr/local/bin", "/usr/local/cuda/bin"]

PID_FILE = "nvidia-cuda-mps-control.pid"
LOG_FIFO = "log"
# What a `quit` leaves behind in the pipe directory (seen on driver 580: the pid file and fifo
# go, these stay).
SOCKET_FILES = ("control", "control_privileged", "control_lock")

NO_DAEMON = "Cannot find MPS control daemon process"
ALREADY_RUNNING = "An instance of this daemon is already running"
SERVER_NOT_FOUND = "Server not found"
UNKNOWN_COMMAND_RE = re.compile(r'^Unknown command "(?P<command>.*)"$', re.MULTILINE)

PS_COLUMNS = ("pid", "id", "server", "device", "namespace", "command")
# The exact pinned limits gpulab.mps set on a daemon (the CLI reads them back rounded down).
RECORD_FILE = "gpulab-mps-defaults.json"


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


# --- parsers --------------------------------------------------------------------------------------

def _lines(text):
    return [line.strip() for line in (text or "").splitlines() if line.strip()]


def parse_pid_list(text):
    """`get_server_list` / `get_client_list <srv>`: one PID a line, nothing when there is none."""
    pids = []
    for line in _lines(text):
        if not line.isdigit():
            raise ValueError("expected one PID a line, got %r" % line)
        pids.append(int(line))
    return pids


def parse_ps(text):
    """`ps`: the client table (PID ID SERVER DEVICE NAMESPACE COMMAND), or [] for "Server not found".

    DEVICE is the GPU UUID truncated by the CLI ("GPU-058fcf08-fc4a-49f5"); COMMAND is the
    last column and may hold spaces.
    """
    lines = _lines(text)
    if not lines or lines == [SERVER_NOT_FOUND]:
        return []
    header = lines[0].split()
    if [h.lower() for h in header[:len(PS_COLUMNS)]] != list(PS_COLUMNS):
        raise ValueError("unexpected ps header %r" % lines[0])
    rows = []
    for line in lines[1:]:
        fields = line.split(None, len(PS_COLUMNS) - 1)
        if len(fields) < len(PS_COLUMNS) - 1:
            raise ValueError("unexpected ps row %r" % line)
        row = dict(zip(PS_COLUMNS, fields + [""] * (len(PS_COLUMNS) - len(fields))))
        for key in ("pid", "id", "server"):
            row[key] = int(row[key])
        rows.append(row)
    return rows


def parse_server_status(text):
    """`get_server_status <srv>`: a single word such as ACTIVE."""
    lines = _lines(text)
    if len(lines) != 1:
        raise ValueError("expected one status line, got %r" % text)
    return lines[0]


_DEVICE_LINE_RE = re.compile(r"^\[(?P<index>\d+)\]\s+(?P<pci>[0-9a-fA-F:.]+),\s*(?P<name>.+)$")
_CONTEXT_LINE_RE = re.compile(r"^(?P<pid>\d+)\.(?P<context>\d+)$")


def parse_device_client_list(text):
    """`get_device_client_list`: "[0] 00:00.0, NVIDIA H100 80GB HBM3" then "PID.context" lines."""
    devices = []
    for line in _lines(text):
        device = _DEVICE_LINE_RE.match(line)
        if device:
            devices.append({"index": int(device.group("index")), "pci": device.group("pci"),
                            "name": device.group("name"), "clients": []})
            continue
        context = _CONTEXT_LINE_RE.match(line)
        if context and devices:
            devices[-1]["clients"].append({"pid": int(context.group("pid")), "context": int(context.group("context"))})
            continue
        raise ValueError("unexpected get_device_client_list line %r" % line)
    return devices


def parse_percentage(text):
    """`get_default_active_thread_percentage` and its `set_` twin print the value in force, "50.0"."""
    lines = _lines(text)
    if len(lines) != 1:
        raise ValueError("expected one percentage, got %r" % text)
    return float(lines[0])


def parse_pinned_limit(text):
    """`get_default_device_pinned_mem_limit <dev>`: "4G", or nothing when no limit is set (None).

    The CLI shows whole units rounded down (1536M reads "1G"): compare with
    _sizes.readback_matches, not for equality.
    """
    lines = _lines(text)
    if not lines:
        return None
    if len(lines) != 1:
        raise ValueError("expected one size, got %r" % text)
    return lines[0]


def unknown_command(text):
    """The command the CLI did not know, from 'Unknown command "frobnicate"' (exit 0), else None."""
    match = UNKNOWN_COMMAND_RE.search(text or "")
    return match.group("command") if match else None


_LOG_LINE_RE = re.compile(r"^\[(?P<time>[0-9-]+ [0-9:.]+) (?P<source>\w+)\s+(?P<pid>\d+)\] (?P<message>.*)$")
_ATP_RE = re.compile(r"^Active Threads Percentage set to (?P<value>[0-9.]+)$")
_PINNED_RE = re.compile(r"^Device pinned memory limit for device (?P<device>\d+) set to (?P<value>0x[0-9a-fA-F]+|\d+) bytes$")
_UNABLE_RE = re.compile(r"^Server was unable to shutdown due to (?P<count>\d+) active clients?$")


def parse_log_lines(text):
    """Split control.log / server.log lines into time, source (Control, Server, Other), pid, message."""
    entries = []
    for line in (text or "").splitlines():
        match = _LOG_LINE_RE.match(line.rstrip())
        if match:
            entry = match.groupdict()
            entry["pid"] = int(entry["pid"])
            entries.append(entry)
    return entries


def parse_server_log(text):
    """What each MPS server took when it started, from server.log.

    Returns {server_pid: {"active_thread_percentage": 50.0, "pinned_memory_limit": {0: 2147483648},
    "started": bool, "unable_to_shutdown_clients": N}}. A server logs its values once, at start:
    this is the exact read-back (the CLI's get_default_* rounds sizes to whole G).
    """
    servers = {}
    for entry in parse_log_lines(text):
        server = servers.setdefault(entry["pid"], {
            "active_thread_percentage": None, "pinned_memory_limit": {}, "started": False,
            "unable_to_shutdown_clients": None})
        message = entry["message"]
        atp = _ATP_RE.match(message)
        pinned = _PINNED_RE.match(message)
        unable = _UNABLE_RE.match(message)
        if atp:
            server["active_thread_percentage"] = float(atp.group("value"))
        elif pinned:
            server["pinned_memory_limit"][int(pinned.group("device"))] = int(pinned.group("value"), 0)
        elif message == "Server has started":
            server["started"] = True
        elif unable:
            server["unable_to_shutdown_clients"] = int(unable.group("count"))
    # Keep only processes that were MPS servers (server.log also holds "Other" start-up lines).
    return dict((pid, s) for pid, s in servers.items()
                if s["started"] or s["active_thread_percentage"] is not None or s["pinned_memory_limit"])


def with_exact_limits(defaults, recorded):
    """Defaults with each rounded read-back replaced by the exact value recorded for that device."""
    limits = dict(defaults.get("pinned_memory_limit") or {})
    for ordinal, size_bytes in recorded.items():
        if readback_matches(size_bytes, limits.get(str(ordinal))):
            limits[str(ordinal)] = mps_size(size_bytes)
    return dict(defaults, pinned_memory_limit=limits)


def parse_pipe_directory(names):
    """Classify the entries of a pipe directory: daemon markers (pid file, log fifo) and sockets."""
    names = set(names)
    return {
        "pid_file": PID_FILE in names,
        "log_fifo": LOG_FIFO in names,
        "sockets": sorted(n for n in SOCKET_FILES if n in names),
    }


# --- the client -----------------------------------------------------------------------------------

def find_control_binary(module, binary=None):
    """Path of nvidia-cuda-mps-control: the given path, else PATH plus NVIDIA's usual places."""
    if binary:
        if not (os.path.isfile(binary) and os.access(binary, os.X_OK)):
            module.fail_json(msg="MPS control binary %s is not an executable file" % binary)
        return binary
    return module.get_bin_path(CONTROL_BINARY, required=True, opt_dirs=EXTRA_BINARY_PATHS)


class MpsControl(object):
    """Talks to one MPS control daemon, chosen by its pipe directory.

    Commands go to the CLI on stdin (`echo ps | nvidia-cuda-mps-control`), with argv [binary]
    and the pipe and log directories in the environment; nothing goes through a shell.
    """

    def __init__(self, module, binary, pipe_directory=DEFAULT_PIPE_DIRECTORY, log_directory=DEFAULT_LOG_DIRECTORY,
                 extra_env=None):
        self.module = module
        self.binary = binary
        self.pipe_directory = pipe_directory
        self.log_directory = log_directory
        self.extra_env = dict(extra_env or {})

    def environment(self):
        env = {"CUDA_MPS_PIPE_DIRECTORY": self.pipe_directory, "CUDA_MPS_LOG_DIRECTORY": self.log_directory}
        env.update(self.extra_env)
        return env

    def run(self, command):
        """Send one command; return stdout. Raises DaemonNotRunning or MpsControlError."""
        argv = [self.binary]
        rc, out, err = self.module.run_command(argv, data=command, environ_update=self.environment())
        if rc == 1 and NO_DAEMON in (out + err):
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

    # Queries -------------------------------------------------------------------------------------
    def is_running(self):
        try:
            self.run("get_server_list")
        except DaemonNotRunning:
            return False
        return True

    def server_list(self):
        return parse_pid_list(self.run("get_server_list"))

    def client_list(self, server_pid):
        return parse_pid_list(self.run("get_client_list %d" % server_pid))

    def server_status(self, server_pid):
        return parse_server_status(self.run("get_server_status %d" % server_pid))

    def ps(self):
        return parse_ps(self.run("ps"))

    def device_client_list(self):
        return parse_device_client_list(self.run("get_device_client_list"))

    def active_thread_percentage(self, server_pid):
        return parse_percentage(self.run("get_active_thread_percentage %d" % server_pid))

    def default_active_thread_percentage(self):
        return parse_percentage(self.run("get_default_active_thread_percentage"))

    def default_pinned_limit(self, device):
        return parse_pinned_limit(self.run("get_default_device_pinned_mem_limit %d" % device))

    # Changes -------------------------------------------------------------------------------------
    def set_default_active_thread_percentage(self, value):
        """Set, then return what the daemon now holds (the CLI echoes the value in force)."""
        return parse_percentage(self.run("set_default_active_thread_percentage %s" % _format_percentage(value)))

    def set_default_pinned_limit(self, device, size):
        """`size` must already be in MPS form ("2G", "1536M"): the CLI drops what it cannot read."""
        self.run("set_default_device_pinned_mem_limit %d %s" % (device, size))

    def shutdown_server(self, server_pid):
        self.run("shutdown_server %d" % server_pid)

    def quit(self):
        self.run("quit")

    def start_daemon(self):
        """`nvidia-cuda-mps-control -d`: returns (rc, stdout, stderr) for the caller to judge."""
        return self.module.run_command([self.binary, "-d"], environ_update=self.environment())

    # State of the pipe directory -----------------------------------------------------------------
    def daemon_pid(self):
        """PID from the pid file the daemon keeps in the pipe directory, if that process lives."""
        path = os.path.join(self.pipe_directory, PID_FILE)
        try:
            with open(path) as handle:
                pid = int(handle.read().strip())
        except (IOError, OSError, ValueError):
            return None
        return pid if pid_alive(pid) else None

    def pipe_entries(self):
        try:
            return parse_pipe_directory(os.listdir(self.pipe_directory))
        except OSError:
            return parse_pipe_directory([])

    def recorded_limits(self, daemon_pid):
        """{ordinal: bytes} that gpulab.mps set on this very daemon (the record names its PID)."""
        try:
            with open(os.path.join(self.pipe_directory, RECORD_FILE)) as handle:
                record = json.load(handle)
        except (IOError, OSError, ValueError):
            return {}
        if not daemon_pid or record.get("daemon_pid") != daemon_pid:
            return {}
        return dict((int(k), v) for k, v in record.get("pinned_memory_limit", {}).items())

    def record_limits(self, daemon_pid, limits):
        path = os.path.join(self.pipe_directory, RECORD_FILE)
        with open(path + ".tmp", "w") as handle:
            json.dump({"daemon_pid": daemon_pid,
                       "pinned_memory_limit": dict((str(k), v) for k, v in sorted(limits.items()))}, handle)
        os.chmod(path + ".tmp", 0o644)
        os.rename(path + ".tmp", path)

    def wait(self, predicate, timeout, interval=0.2):
        """Poll predicate() until it is true or timeout seconds pass; return its last value."""
        deadline = time.time() + timeout
        while True:
            value = predicate()
            if value or time.time() >= deadline:
                return value
            time.sleep(interval)

    def log_tail(self, name="control.log", lines=20):
        try:
            with open(os.path.join(self.log_directory, name)) as handle:
                return "".join(handle.readlines()[-lines:])
        except (IOError, OSError):
            return ""

    def read_log(self, name, max_bytes=4 << 20):
        """The last max_bytes of a log file (server.log grows for the daemon's whole life)."""
        try:
            with open(os.path.join(self.log_directory, name), "rb") as handle:
                handle.seek(0, os.SEEK_END)
                handle.seek(max(0, handle.tell() - max_bytes))
                return handle.read().decode("utf-8", "replace")
        except (IOError, OSError):
            return ""

    def snapshot(self, devices=(0,)):
        """Everything a user asks of a daemon: running, pid, servers, clients, defaults, stale sockets.

        `devices` are the MPS device ordinals whose default pinned limits are read.
        """
        state = {"running": False, "pid": None, "pipe_directory": self.pipe_directory,
                 "log_directory": self.log_directory, "servers": [], "clients": [],
                 "defaults": {"active_thread_percentage": None, "pinned_memory_limit": {}},
                 "stale_sockets": []}
        try:
            server_pids = self.server_list()
        except DaemonNotRunning:
            entries = self.pipe_entries()
            if not entries["pid_file"]:
                state["stale_sockets"] = entries["sockets"]
            return state
        state["running"] = True
        state["pid"] = self.daemon_pid()
        state["clients"] = self.ps()
        state["defaults"]["active_thread_percentage"] = self.default_active_thread_percentage()
        for device in devices:
            state["defaults"]["pinned_memory_limit"][str(device)] = self.default_pinned_limit(device)
        state["defaults"] = with_exact_limits(state["defaults"], self.recorded_limits(state["pid"]))
        logged = parse_server_log(self.read_log("server.log"))
        for pid in server_pids:
            state["servers"].append(self.server_snapshot(pid, devices, logged.get(pid)))
        return state

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
                server["pinned_memory_limit"][str(device)] = parse_pinned_limit(
                    self.run("get_device_pinned_mem_limit %d %d" % (pid, device)))
        except (MpsControlError, ValueError):
            # The server exited between get_server_list and these queries.
            server["status"] = server["status"] or "GONE"
        return server


def _format_percentage(value):
    value = float(value)
    return ("%d" % value) if value == int(value) else ("%g" % value)


def pid_alive(pid):
    """Whether a process with this PID exists (zombies count as gone)."""
    try:
        with open("/proc/%d/stat" % pid) as handle:
            state = handle.read().rsplit(")", 1)[1].split()[0]
    except (IOError, OSError, IndexError):
        return False
    return state != "Z"
