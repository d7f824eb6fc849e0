# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""Every output of the NVIDIA MPS control CLI (nvidia-cuda-mps-control), read in one place.

This is a private module_utils of gpulab.mps: its API may change without notice.

STANDARD LIBRARY ONLY, and it imports nothing of the collection: the modules import it as
ansible_collections.gpulab.mps.plugins.module_utils._mps_output, and the role cuda_workload and the
benchmarks ship this very file beside their scripts (and into pods) and import it as `_mps_output`.
A change to what the CLI prints is made here, once.

Every parser is written against output recorded on an H100 with driver 580
(tests/unit/fixtures/h100-transcripts) and re-checked on an H200 with the same driver. Two facts
shape the code:
- the CLI never reports a bad command through its exit code (an unknown command, an out-of-range
  percentage or an unreadable size all exit 0), so callers validate first and read back after;
- the only exit code it does use is 1 with "Cannot find MPS control daemon process" when no daemon
  listens on CUDA_MPS_PIPE_DIRECTORY.
"""

from __future__ import annotations

import re

CONTROL_BINARY = "nvidia-cuda-mps-control"
# Where NVIDIA's packages and container images put the binaries, after PATH.
BINARY_DIRECTORIES = ("/usr/local/nvidia/bin", "/usr/bin", "/usr/local/bin", "/usr/local/cuda/bin", "/usr/sbin")

NO_DAEMON = "Cannot find MPS control daemon process"
ALREADY_RUNNING = "An instance of this daemon is already running"
SERVER_NOT_FOUND = "Server not found"
TRANSPORT_NOT_CONNECTED = "Transport endpoint is not connected"
CONNECTION_REFUSED = "Connection refused"
_UNKNOWN_COMMAND_RE = re.compile(r'^Unknown command "(?P<command>.*)"$', re.MULTILINE)

# What the daemon keeps in its pipe directory (seen on driver 580). After `quit` the pid file and the
# log fifo go; the sockets and control_lock stay behind.
PID_FILE = "nvidia-cuda-mps-control.pid"
LOG_FIFO = "log"
SOCKET_FILES = ("control", "control_privileged", "control_lock")
# What each of those is, as the daemon makes them (03_pipe_dir_listing.txt): control_lock is a plain empty file.
DAEMON_FILES = {"control": "socket", "control_privileged": "socket", "control_lock": "file", LOG_FIFO: "fifo",
                PID_FILE: "file"}

PS_COLUMNS = ("pid", "id", "server", "device", "namespace", "command")
# The inode of the initial PID namespace (PROC_PID_INIT_INO): every process of a host that runs no
# containers shows it in ps's NAMESPACE column.
INIT_PID_NAMESPACE = "4026531836"


class OutputError(ValueError):
    """The CLI printed something this parser does not know: the message says what and where."""


def _lines(text):
    return [line.strip() for line in (text or "").splitlines() if line.strip()]


def no_daemon(rc, text):
    """Whether an answer means "no daemon listens on this pipe directory" (exit 1 and the message)."""
    return rc == 1 and NO_DAEMON in (text or "")


def unknown_command(text):
    """The command the CLI did not know, from 'Unknown command "frobnicate"' (exit 0), else None."""
    match = _UNKNOWN_COMMAND_RE.search(text or "")
    return match.group("command") if match else None


def parse_pid_list(text):
    """`get_server_list` / `get_client_list <srv>`: one PID a line, nothing when there is none."""
    pids = []
    for line in _lines(text):
        if not line.isdigit():
            raise OutputError("expected one PID a line, got %r" % line)
        pids.append(int(line))
    return pids


def parse_ps(text, clients=None):
    """`ps`: the client table (PID ID SERVER DEVICE NAMESPACE COMMAND) as a list of dicts.

    "Server not found" (no server) and nothing at all (a server without clients, exit 0) are both [].
    DEVICE is the GPU UUID truncated by the CLI ("GPU-058fcf08-fc4a-49f5"); COMMAND is the last
    column and may hold spaces.
    """
    lines = _lines(text)
    if not lines or lines == [SERVER_NOT_FOUND]:
        return []
    header = lines[0].split()
    if [h.lower() for h in header[:len(PS_COLUMNS)]] != list(PS_COLUMNS):
        raise OutputError("unexpected ps header %r" % lines[0])
    rows = []
    for line in lines[1:]:
        fields = line.split(None, len(PS_COLUMNS) - 1)
        if len(fields) < len(PS_COLUMNS) - 1 or not all(f.isdigit() for f in fields[:3]):
            raise OutputError("unexpected ps row %r" % line)
        row = dict(zip(PS_COLUMNS, fields + [""] * (len(PS_COLUMNS) - len(fields))))
        for key in ("pid", "id", "server"):
            row[key] = int(row[key])
        rows.append(row)
    if clients is not None:
        rows = [r for r in rows if r["pid"] in (clients.get(r["server"]) or ())]
    return rows


def ps_lists(text, pid):
    """Whether the `ps` output lists this PID (False for output this parser cannot read)."""
    try:
        return any(row["pid"] == pid for row in parse_ps(text))
    except OutputError:
        return False


def parse_server_status(text):
    """`get_server_status <srv>`: a single word such as ACTIVE."""
    lines = _lines(text)
    if len(lines) != 1 or len(lines[0].split()) != 1:
        raise OutputError("expected one status word, got %r" % text)
    return lines[0]


def parse_percentage(text):
    """`get_default_active_thread_percentage` and its `set_` twin print the value in force, "50.0"."""
    lines = _lines(text)
    try:
        if len(lines) != 1:
            raise ValueError
        return float(lines[0])
    except ValueError:
        raise OutputError("expected one percentage, got %r" % text)


def parse_client_priority(text):
    """`get_default_client_priority`: the priority new clients get, "0" (normal) or "1" (below normal)."""
    lines = _lines(text)
    if len(lines) != 1 or not lines[0].isdigit():
        raise OutputError("expected one client priority such as 0, got %r" % text)
    return int(lines[0])


_SIZE_SHOWN_RE = re.compile(r"^\d+[KMGT]?$")


def parse_pinned_limit(text):
    """`get_default_device_pinned_mem_limit <dev>`: "4G", or nothing when no limit is set (None).

    The CLI shows whole units rounded down (1536M reads "1G"): compare with
    _sizes.readback_matches, not for equality.
    """
    lines = _lines(text)
    if not lines:
        return None
    if len(lines) != 1 or not _SIZE_SHOWN_RE.match(lines[0]):
        raise OutputError("expected one size such as 4G, got %r" % text)
    return lines[0]


_LOG_LINE_RE = re.compile(r"^\[(?P<time>[0-9-]+ [0-9:.]+) (?P<source>\w+)\s+(?P<pid>\d+)\] (?P<message>.*)$")
_ATP_RE = re.compile(r"^Active Threads Percentage set to (?P<value>[0-9.]+)$")
_PINNED_RE = re.compile(r"^Device pinned memory limit for device (?P<device>\d+) set to (?P<value>0x[0-9a-fA-F]+|\d+) bytes$")
_UNABLE_RE = re.compile(r"^Server was unable to shutdown due to (?P<count>\d+) active clients?$")
_PRIORITY_RE = re.compile(r"^Server Priority set to (?P<value>\d+)$")
# How server.log names a client: "Client {PID: 465, Context ID: 1} connected" (a negative PID in "Received new client
# request for {PID: -1333654781, ...}" is not a process).
_CLIENT_RE = re.compile(r"\{PID: (?P<pid>-?\d+), Context ID: (?P<context>\d+)\}")
# A fatal GPU error in server.log (H200, driver 580: docs/evidence/2026-12-04-h200/fault/). The client named first is
# the first one that NOTICED the error, not always the one that caused it; the sticky list names every client hit.
_FATAL_CLIENT_RE = re.compile(r"^Client \{PID: (?P<pid>\d+), Context: \d+\} encountered a fatal GPU error\.$")
_REFUSED_RE = re.compile(r"^Server teardown in progress\. Refusing to accept new client \{PID: (?P<pid>\d+),")
FATAL_ERROR = "Server is handling a fatal GPU error."
STICKY_LIST = "The following client process have a sticky error set:"
SERVER_CONTEXT_CREATED = re.compile(r"^Creating server context on device \d+")
# control.log: which servers started and exited, and which exits were asked for.
_SERVER_START_RE = re.compile(r"^Starting new server (?P<pid>\d+) for user (?P<uid>\d+)$")
_SERVER_EXIT_RE = re.compile(r"^Server (?P<pid>\d+) exited with status (?P<status>-?\d+)$")
_SHUTDOWN_RE = re.compile(r"^Try shutting down server (?P<pid>\d+)")
_CMD_RE = re.compile(r"^Cmd:(?P<command>.*)$")
DAEMON_START = "Starting control daemon using socket "


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
    "started": bool, "unable_to_shutdown_clients": N, "priority": 0}}. A server logs its values once, at start:
    this is the exact read-back (the CLI's get_default_* rounds sizes to whole G).
    """
    servers = {}
    sticky_of = None
    for entry in parse_log_lines(text):
        server = servers.setdefault(entry["pid"], {
            "active_thread_percentage": None, "pinned_memory_limit": {}, "started": False,
            "unable_to_shutdown_clients": None, "priority": None, "faults": []})
        message = entry["message"]
        if _fault_line(server, entry, sticky_of is server):
            sticky_of = server if message == STICKY_LIST else sticky_of
            continue
        sticky_of = None
        atp = _ATP_RE.match(message)
        pinned = _PINNED_RE.match(message)
        unable = _UNABLE_RE.match(message)
        priority = _PRIORITY_RE.match(message)
        if atp:
            server["active_thread_percentage"] = float(atp.group("value"))
        elif pinned:
            server["pinned_memory_limit"][int(pinned.group("device"))] = int(pinned.group("value"), 0)
        elif message == "Server has started":
            server["started"] = True
        elif unable:
            server["unable_to_shutdown_clients"] = int(unable.group("count"))
        elif priority:
            server["priority"] = int(priority.group("value"))
    # Keep only processes that were MPS servers (server.log also holds "Other" start-up lines).
    return dict((pid, s) for pid, s in servers.items()
                if s["started"] or s["active_thread_percentage"] is not None or s["pinned_memory_limit"])


def _fault_line(server, entry, in_sticky_list):
    """Read one server.log line into server["faults"] if it is about a fatal GPU error; True when it was.

    A fault: {"time": when the server began handling it, "noticed_by": the first client PID named, "sticky_clients":
    the PIDs listed under STICKY_LIST, "refused_clients": new clients refused meanwhile, "recovered": the time the
    server made a new context (all its clients had gone), or None while it has not}.
    """
    message = entry["message"]
    fault = server["faults"][-1] if server["faults"] else None
    if fault is not None and fault["recovered"] is not None:
        fault = None  # that fault is over: a new one starts with its own lines
    noticed = _FATAL_CLIENT_RE.match(message)
    if noticed or message == FATAL_ERROR:
        if fault is None:
            noticed_by = int(noticed.group("pid")) if noticed else None
            server["faults"].append({"time": entry["time"], "noticed_by": noticed_by, "sticky_clients": [],
                                     "refused_clients": [], "recovered": None})
        elif not noticed:
            fault["time"] = entry["time"]
        return True
    if fault is None:
        return False
    if message == STICKY_LIST:
        return True
    if in_sticky_list and message.isdigit():
        fault["sticky_clients"].append(int(message))
        return True
    refused = _REFUSED_RE.match(message)
    if refused:
        fault["refused_clients"].append(int(refused.group("pid")))
        return True
    if SERVER_CONTEXT_CREATED.match(message):
        fault["recovered"] = entry["time"]
        return True
    return False


def parse_control_log(text):
    """What control.log says of the servers of the LAST control daemon that started in it.

    Returns {"daemon_pid": pid or None, "started": time or None, "servers": {pid: {"uid", "started", "exited",
    "status", "requested"}}}. `requested` is False for a server that exited without a `quit`, `shutdown_server` or a
    "Try shutting down" of the daemon before it: it crashed or was killed (on the H200 a server killed with SIGKILL
    was logged "Server N exited with status 0", exactly as one shut down).
    """
    result = {"daemon_pid": None, "started": None, "servers": {}}
    asked = set()
    for entry in parse_log_lines(text):
        message = entry["message"]
        if message.startswith(DAEMON_START):
            result = {"daemon_pid": entry["pid"], "started": entry["time"], "servers": {}}
            asked = set()
            continue
        start = _SERVER_START_RE.match(message)
        if start:
            result["servers"][int(start.group("pid"))] = {
                "uid": int(start.group("uid")), "started": entry["time"], "exited": None, "status": None,
                "requested": None}
            continue
        shutdown = _SHUTDOWN_RE.match(message)
        command = _CMD_RE.match(message)
        if shutdown:
            asked.add(int(shutdown.group("pid")))
        elif command and command.group("command").split()[:1] == ["shutdown_server"]:
            words = command.group("command").split()
            if len(words) > 1 and words[1].isdigit():
                asked.add(int(words[1]))
        exited = _SERVER_EXIT_RE.match(message)
        if exited:
            pid = int(exited.group("pid"))
            server = result["servers"].setdefault(pid, {"uid": None, "started": None, "exited": None,
                                                        "status": None, "requested": None})
            server.update(exited=entry["time"], status=int(exited.group("status")), requested=pid in asked)
    return result


def client_log_entries(text, pids):
    """The server.log lines about these client PIDs: {pid: [{"time", "server", "context", "message"}]}.

    server.log names a client as "{PID: 465, Context ID: 1}"; what a server logs about a client (connected,
    its status, its exit, and whatever this driver says of its limits) is kept as written, for a report to show.
    """
    wanted = set(int(p) for p in pids)
    found = dict((pid, []) for pid in sorted(wanted))
    for entry in parse_log_lines(text):
        for match in _CLIENT_RE.finditer(entry["message"]):
            pid = int(match.group("pid"))
            if pid in wanted:
                found[pid].append({"time": entry["time"], "server": entry["pid"],
                                   "context": int(match.group("context")), "message": entry["message"]})
                break
    return found


def parse_pipe_directory(names):
    """Classify the entries of a pipe directory: daemon markers (pid file, log fifo) and sockets."""
    names = set(names)
    return {
        "pid_file": PID_FILE in names,
        "log_fifo": LOG_FIFO in names,
        "sockets": sorted(n for n in SOCKET_FILES if n in names),
    }
