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

Other users write part of what is read here (tests/unit/fixtures/h200-hostile, H200, driver 580): `ps` prints each
client's argv[0] raw (a newline, \\x1e, bytes that are not UTF-8, lines shaped like rows), and control.log records
every command any local user sends, verbatim, and every `ps` answer, client names included. So every parser is TOTAL:
for any str or bytes (bytes are read as UTF-8 with replacement, None as nothing) it returns a result or raises
OutputError, never another exception. Records are split on "\\n" only (str.splitlines() also splits on \\r, \\x1c-\\x1e,
\\x85, \\u2028...), and only a trailing "\\r" and ASCII blanks are cut (str.strip() also cuts \\x1c-\\x1f and \\x85).
Numbers are ASCII digits of a bounded length (str.isdigit() and re's \\d take "\\u00b2" and "\\u0663"). A client's
COMMAND is opaque text, never needed to decide anything. _lines and _number are the only ways text becomes lines and
numbers.
"""

from __future__ import annotations

import operator
import re

CONTROL_BINARY = "nvidia-cuda-mps-control"
# Where NVIDIA's packages and container images put the binaries, after PATH.
BINARY_DIRECTORIES = ("/usr/local/nvidia/bin", "/usr/bin", "/usr/local/bin", "/usr/local/cuda/bin", "/usr/sbin")

NO_DAEMON = "Cannot find MPS control daemon process"
ALREADY_RUNNING = "An instance of this daemon is already running"
SERVER_NOT_FOUND = "Server not found"
TRANSPORT_NOT_CONNECTED = "Transport endpoint is not connected"
CONNECTION_REFUSED = "Connection refused"

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

# How much of a text an error message quotes: an answer can be megabytes, and a message goes into a task's result.
SHOWN_CHARACTERS = 200
# How many control.log lines that looked like events but were not the daemon's a result lists.
IGNORED_EVENTS_KEPT = 20


class OutputError(ValueError):
    """The CLI printed something this parser does not know: the message says what and where."""


def _shown(text):
    """repr() of text for a message, cut to SHOWN_CHARACTERS."""
    return repr(text[:SHOWN_CHARACTERS]) + ("... (%d characters)" % len(text) if len(text) > SHOWN_CHARACTERS else "")


def _lines(text):
    """The lines of an answer or a log, the one way this module splits text: on "\\n" only.

    str or bytes (bytes read as UTF-8, what is not UTF-8 replaced by U+FFFD); None is no text. Each line loses a
    trailing "\\r" and its ASCII blanks (spaces, tabs) at both ends, nothing else: \\x1c-\\x1f, \\x85 and \\u2028 are
    text a client or a user chose, kept as they are. Blank lines are kept, for the caller to judge.
    """
    if text is None:
        return []
    if isinstance(text, (bytes, bytearray, memoryview)):
        text = bytes(text).decode("utf-8", "replace")
    elif not isinstance(text, str):
        raise OutputError("expected the CLI's output as text or bytes, got %s" % type(text).__name__)
    return [line.rstrip(" \t\r").lstrip(" \t") for line in text.split("\n")]


# The shapes of the numbers the CLI and its logs print: ASCII digits, at most what the value can need. "integer" is a
# PID (the kernel's limit is 2**22, 7 digits), a client ID, a uid, a device ordinal, a count, a namespace inode (32
# bits); "signed" an exit status or the negative PID of a request; "bytes" a size in bytes, in hex or decimal (64 bits);
# "percentage" a thread percentage (100.0, 12.5).
_NUMBER_SHAPES = {
    "integer": "[0-9]{1,10}",
    "signed": "-?[0-9]{1,10}",
    "bytes": "0x[0-9a-fA-F]{1,16}|[0-9]{1,20}",
    "percentage": "[0-9]{1,3}(?:\\.[0-9]{1,6})?",
}
_NUMBER_RES = dict((shape, re.compile("(?:%s)" % pattern)) for shape, pattern in _NUMBER_SHAPES.items())
_INTEGER = _NUMBER_SHAPES["integer"]
_SIGNED = _NUMBER_SHAPES["signed"]


def _number(text, shape="integer"):
    """The number text holds, of one of _NUMBER_SHAPES (float for "percentage"), else OutputError.

    The one way this module turns text into a number: int() and float() alone take "\\u0663", " 5", "1_0", "nan", and
    int() raises ValueError on a string of more than 4300 digits (Python 3.11+).
    """
    if not isinstance(text, str) or not _NUMBER_RES[shape].fullmatch(text):
        raise OutputError("expected a number (%s: ASCII digits %s), got %s" % (
            shape, _NUMBER_SHAPES[shape], _shown(text) if isinstance(text, str) else type(text).__name__))
    if shape == "percentage":
        return float(text)
    if text.startswith("0x"):
        return int(text[2:], 16)
    return int(text, 10)


def _blank_free(text):
    return [line for line in _lines(text) if line]


def no_daemon(rc, text):
    """Whether an answer means "no daemon listens on this pipe directory" (exit 1 and the message)."""
    return rc == 1 and any(NO_DAEMON in line for line in _lines(text))


_UNKNOWN_COMMAND_RE = re.compile(r'Unknown command "(?P<command>.*)"')


def unknown_command(text):
    """The command the CLI did not know, from 'Unknown command "frobnicate"' (exit 0), else None.

    Only when that is the whole answer: a `ps` answer prints every client's argv[0], and a client named
    'x\nUnknown command "ps"' must not make the answer of a known command look like an unknown one."""
    lines = list(_blank_free(text))
    match = _UNKNOWN_COMMAND_RE.fullmatch(lines[0]) if len(lines) == 1 else None
    return match.group("command") if match else None


def parse_pid_list(text):
    """`get_server_list` / `get_client_list <srv>`: one PID a line, nothing when there is none."""
    return [_number(line) for line in _blank_free(text)]


# A ps row as the CLI prints it (22_ps_busy.txt, h200-fault/sticky-cli.json, h200-hostile/ps.raw): PID, ID and SERVER
# in ASCII digits, DEVICE the UUID cut to 22 characters ("GPU-058fcf08-fc4a-49f5"; MIG devices, not recorded, are
# taken as "MIG-" and the same digits), NAMESPACE a PID namespace inode, then COMMAND, the client's argv[0] as it is.
_PS_DEVICE = "(?:GPU|MIG)-[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}"
_PS_ROW_RE = re.compile(
    "(?P<pid>%s)[ \t]+(?P<id>%s)[ \t]+(?P<server>%s)[ \t]+(?P<device>%s)[ \t]+(?P<namespace>%s)"
    "(?:[ \t]+(?P<command>.*))?" % (_INTEGER, _INTEGER, _INTEGER, _PS_DEVICE, _INTEGER))
_BLANKS_RE = re.compile("[ \t]+")


def _client_pairs(clients):
    """{(client pid, server pid)} of a {server: [client pids]} mapping, as get_client_list printed them."""
    try:
        return set((_pid_of(pid), _pid_of(server)) for server, pids in clients.items() for pid in pids)
    except (AttributeError, TypeError):
        raise OutputError("clients must map each server PID to its client PIDs (get_client_list), got %s"
                          % type(clients).__name__)


def _pid_of(value):
    """A PID the caller gave (an int, or ASCII digits as text); OutputError for anything else."""
    if isinstance(value, bool):
        raise OutputError("expected a PID, got %r" % value)
    if isinstance(value, (bytes, bytearray)):
        value = bytes(value).decode("utf-8", "replace")
    if isinstance(value, str):
        return _number(value.strip(" \t"), "signed")
    try:
        return operator.index(value)
    except TypeError:
        raise OutputError("expected a PID, got %s" % type(value).__name__)


def parse_ps(text, clients=None):
    """`ps`: the client table (PID ID SERVER DEVICE NAMESPACE COMMAND) as a list of dicts.

    "Server not found" (no server) and nothing at all (a server without clients, exit 0) are both [].
    DEVICE is the GPU UUID truncated by the CLI ("GPU-058fcf08-fc4a-49f5"); COMMAND is the last column, the client's
    argv[0] as the client set it, decoded with replacement: opaque text, never needed to decide anything.

    A client's argv[0] can hold newlines, so a row can span several lines: a line that is not a well-formed row is
    more of the COMMAND of the row above it (joined with "\\n"). Text before the first row that is not the header or
    "Server not found" is an OutputError.

    A client can also put a line shaped exactly like a row into its argv[0] (a forged row, naming another PID or
    server). clients: {server_pid: iterable of client pids} as `get_client_list <server>` printed them (output no
    user controls). Given, a row-shaped line whose (pid, server) pair is not in it is not a row: it is COMMAND text of
    the row above. Then every row returned names a pair the CLI listed, and every row the CLI printed for a listed
    pair is returned; but a forged line can name a listed pair too, so a PID can have several rows that disagree
    (another ID, device or namespace). A caller that acts on a PID must require every row naming it to agree. A first
    row whose pair is not listed is a client that connected between get_client_list and ps: it is left out, with the
    rest of its COMMAND.
    """
    lines = _lines(text)
    while lines and not lines[-1]:
        lines.pop()
    start = 0
    while start < len(lines) and not lines[start]:
        start += 1
    if start == len(lines):
        return []
    first, rest = lines[start], lines[start + 1:]
    if first == SERVER_NOT_FOUND and not any(rest):
        return []
    if [word.lower() for word in _BLANKS_RE.split(first)[:len(PS_COLUMNS)]] != list(PS_COLUMNS):
        raise OutputError("unexpected ps header %s" % _shown(first))
    listed = None if clients is None else _client_pairs(clients)
    rows = []
    above = None  # the row whose COMMAND a line that is not a row continues (a left-out row too)
    for line in rest:
        match = _PS_ROW_RE.fullmatch(line)
        if match:
            row = {"pid": _number(match.group("pid")), "id": _number(match.group("id")),
                   "server": _number(match.group("server")), "device": match.group("device"),
                   "namespace": match.group("namespace"), "command": match.group("command") or ""}
            if listed is None or (row["pid"], row["server"]) in listed:
                rows.append(row)
                above = row
                continue
            if above is None:
                above = row  # came after get_client_list: not returned, and neither is the rest of its name
                continue
        if above is None:
            if not line:
                continue
            raise OutputError("unexpected ps row %s (no row above it)" % _shown(line))
        above["command"] += "\n" + line
    return rows


def ps_lists(text, pid, clients=None):
    """Whether the `ps` output lists this PID (False for output this parser cannot read); clients as for parse_ps."""
    try:
        return any(row["pid"] == pid for row in parse_ps(text, clients=clients))
    except OutputError:
        return False


_STATUS_WORD_RE = re.compile("[A-Za-z_]{1,32}")


def parse_server_status(text):
    """`get_server_status <srv>`: a single word such as ACTIVE or FAULT."""
    lines = _blank_free(text)
    if len(lines) != 1 or not _STATUS_WORD_RE.fullmatch(lines[0]):
        raise OutputError("expected one status word, got %s" % _shown("\n".join(lines)))
    return lines[0]


def _single(text, what):
    lines = _blank_free(text)
    if len(lines) != 1:
        raise OutputError("expected %s, got %s" % (what, _shown("\n".join(lines))))
    return lines[0]


def parse_percentage(text):
    """`get_default_active_thread_percentage` and its `set_` twin print the value in force, "50.0"."""
    return _number(_single(text, "one percentage"), "percentage")


def parse_client_priority(text):
    """`get_default_client_priority`: the priority new clients get, "0" (normal) or "1" (below normal)."""
    return _number(_single(text, "one client priority such as 0"))


# The read-back of a pinned limit: whole units, rounded down ("1G" after 1536M); "17179869183G" after -1 (60_...txt).
_SIZE_SHOWN_RE = re.compile("[0-9]{1,20}[KMGT]?")


def parse_pinned_limit(text):
    """`get_default_device_pinned_mem_limit <dev>`: "4G", or nothing when no limit is set (None).

    The CLI shows whole units rounded down (1536M reads "1G"): compare with
    _sizes.readback_matches, not for equality.
    """
    lines = _blank_free(text)
    if not lines:
        return None
    if len(lines) != 1 or not _SIZE_SHOWN_RE.fullmatch(lines[0]):
        raise OutputError("expected one size such as 4G, got %s" % _shown("\n".join(lines)))
    return lines[0]


# "[2026-11-23 10:56:43.518 Control   407] message": the source is Control, Server or Other, the PID the process that
# wrote the line (the daemon, a server; "Starting new server N" is written by server N itself).
_LOG_LINE_RE = re.compile(
    r"\[(?P<time>[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,9})?) (?P<source>[A-Za-z]{1,16}) +"
    r"(?P<pid>%s)\](?: (?P<message>.*))?" % _INTEGER)
_ATP_RE = re.compile(r"Active Threads Percentage set to (?P<value>%s)" % _NUMBER_SHAPES["percentage"])
_PINNED_RE = re.compile(r"Device pinned memory limit for device (?P<device>%s) set to (?P<value>%s) bytes"
                        % (_INTEGER, _NUMBER_SHAPES["bytes"]))
_UNABLE_RE = re.compile(r"Server was unable to shutdown due to (?P<count>%s) active clients?" % _INTEGER)
_PRIORITY_RE = re.compile(r"Server Priority set to (?P<value>%s)" % _INTEGER)
# How server.log names a client: "Client {PID: 465, Context ID: 1} connected" (a negative PID in "Received new client
# request for {PID: -1333654781, ...}" is not a process).
_CLIENT_RE = re.compile(r"\{PID: (?P<pid>%s), Context ID: (?P<context>%s)\}" % (_SIGNED, _INTEGER))
# A fatal GPU error in server.log (H200, driver 580: docs/evidence/2026-12-04-h200/fault/). The client named first is
# the first one that NOTICED the error, not always the one that caused it; the sticky list names every client hit.
_FATAL_CLIENT_RE = re.compile(r"Client \{PID: (?P<pid>%s), Context: %s\} encountered a fatal GPU error\." % (
    _INTEGER, _INTEGER))
_REFUSED_RE = re.compile(r"Server teardown in progress\. Refusing to accept new client \{PID: (?P<pid>%s)," % _INTEGER)
FATAL_ERROR = "Server is handling a fatal GPU error."
STICKY_LIST = "The following client process have a sticky error set:"
SERVER_CONTEXT_CREATED = re.compile(r"^Creating server context on device [0-9]{1,10}(?![0-9])")
# control.log: which servers started and exited, and which exits the daemon set out to make.
_SERVER_START_RE = re.compile(r"Starting new server (?P<pid>%s) for user (?P<uid>%s)" % (_INTEGER, _INTEGER))
_SERVER_EXIT_RE = re.compile(r"Server (?P<pid>%s) exited with status (?P<status>%s)" % (_INTEGER, _SIGNED))
_SHUTDOWN_RE = re.compile(r"Try shutting down server (?P<pid>%s)(?:,.*)?" % _INTEGER)
# A client of one user while another user's server runs (no -M): the daemon queues it and keeps asking that server to
# shut down, which it will not do while it has clients (H200, docs/evidence/2026-12-04-h200/qos-lane/mps_multiuser.json).
_PENDING_RE = re.compile(r"NEW CLIENT (?P<pid>%s) from user (?P<uid>%s): Server is not ready, push client to pending "
                         r"list" % (_INTEGER, _INTEGER))
_SERVED_RE = re.compile(r"NEW CLIENT (?P<pid>%s) from user (?P<uid>%s): Server already exists" % (_INTEGER, _INTEGER))
_WILL_NOT_SHUT_RE = re.compile(r"Server (?P<pid>%s) has %s active worker threads?\. Server will not shutdown\."
                               % (_INTEGER, _INTEGER))
DAEMON_START = "Starting control daemon using socket "
COMMAND_PREFIX = "Cmd:"


def parse_log_lines(text):
    """Split control.log / server.log lines into time, source (Control, Server, Other), pid, message.

    A line that is not "[time source pid] message" (a cut first line of a log tail, more of a message that spans
    lines) is left out.
    """
    entries = []
    for line in _lines(text):
        match = _LOG_LINE_RE.fullmatch(line)
        if match:
            entries.append({"time": match.group("time"), "source": match.group("source"),
                            "pid": _number(match.group("pid")), "message": match.group("message") or ""})
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
        atp = _ATP_RE.fullmatch(message)
        pinned = _PINNED_RE.fullmatch(message)
        unable = _UNABLE_RE.fullmatch(message)
        priority = _PRIORITY_RE.fullmatch(message)
        if atp:
            server["active_thread_percentage"] = _number(atp.group("value"), "percentage")
        elif pinned:
            server["pinned_memory_limit"][_number(pinned.group("device"))] = _number(pinned.group("value"), "bytes")
        elif message == "Server has started":
            server["started"] = True
        elif unable:
            server["unable_to_shutdown_clients"] = _number(unable.group("count"))
        elif priority:
            server["priority"] = _number(priority.group("value"))
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
    noticed = _FATAL_CLIENT_RE.fullmatch(message)
    if noticed or message == FATAL_ERROR:
        if fault is None:
            noticed_by = _number(noticed.group("pid")) if noticed else None
            server["faults"].append({"time": entry["time"], "noticed_by": noticed_by, "sticky_clients": [],
                                     "refused_clients": [], "recovered": None})
        elif not noticed:
            fault["time"] = entry["time"]
        return True
    if fault is None:
        return False
    if message == STICKY_LIST:
        return True
    if in_sticky_list and _NUMBER_RES["integer"].fullmatch(message):
        fault["sticky_clients"].append(_number(message))
        return True
    refused = _REFUSED_RE.match(message)
    if refused:
        fault["refused_clients"].append(_number(refused.group("pid")))
        return True
    if SERVER_CONTEXT_CREATED.match(message):
        fault["recovered"] = entry["time"]
        return True
    return False


def parse_control_log(text, daemon_pid=None):
    """What control.log says of the servers of the LAST control daemon that started in it, or of daemon_pid.

    Returns {"daemon_pid": pid or None, "started": time or None, "servers": {pid: {"uid", "started", "exited",
    "status", "requested"}}, "waiting": {client pid: {"uid", "since", "blocked_by"}}, "ignored_events": [...]}.
    `waiting`: clients the daemon queued ("push client to pending list") and has not served since, while a server
    that would not shut down (another user's, without -M) kept it from starting theirs. `requested` is True only for a server whose exit the daemon set
    out to make: its own "Try shutting down server N" line came before "Server N exited" (a root `quit` or
    `shutdown_server N`; H100 32_control_log.txt, H200 h200-hostile/control.log). False: it crashed or was killed (on
    the H200 a server killed with SIGKILL was logged "Server N exited with status 0", exactly as one shut down).

    Anyone can send commands to the daemon (its control socket is mode 0666) and it logs each one verbatim as
    "Cmd:<text>", refused ones included: a `Cmd:` line never changes the result, whatever it says. The daemon's events
    count only from the daemon's PID (the PID of the last "Starting control daemon" line; any Control PID while the
    log's tail holds none), a server start from the daemon's PID or the server's own, and not for a server that has
    started and not exited. Lines shaped like those events that are not counted, the first IGNORED_EVENTS_KEPT of them,
    are listed in "ignored_events" (entries of parse_log_lines): evidence that someone wrote them.

    daemon_pid: the PID of the daemon the caller knows runs (checked to be a live nvidia-cuda-mps-control, not just
    read from the pid file, which any user can write). Given, only that daemon's lines are read: its last "Starting
    control daemon" line (if the log still holds one) starts the result, and a start line of another PID changes
    nothing ("daemon_pid" in the result is None when the log holds no start line of it).

    LIMIT: the daemon also logs every `ps` answer, and a client's argv[0] in it can hold whole lines, so a local user
    can put a line that names the daemon's PID (the pid file is world-readable) into this log (h200-hostile/control.log
    holds one, from PID 1). Such a line cannot be told from the daemon's own: what this returns is evidence for a
    report, never the ground for an action. Without daemon_pid, a forged "Starting control daemon" line of another PID
    also hides every server before it.
    """
    expected = None if daemon_pid is None else _pid_of(daemon_pid)
    result = {"daemon_pid": None, "started": None, "servers": {}, "waiting": {}, "ignored_events": []}
    asked = set()
    pending = {}

    def ignore(entry):
        if len(result["ignored_events"]) < IGNORED_EVENTS_KEPT:
            result["ignored_events"].append(entry)

    for entry in parse_log_lines(text):
        message = entry["message"]
        if entry["source"] != "Control" or message.startswith(COMMAND_PREFIX):
            continue
        daemon = result["daemon_pid"] if expected is None else expected
        from_daemon = daemon is None or entry["pid"] == daemon
        if message.startswith(DAEMON_START):
            if entry["pid"] == result["daemon_pid"]:
                ignore(entry)  # a daemon starts once: this one is not a restart
            elif from_daemon or expected is None:
                result = {"daemon_pid": entry["pid"], "started": entry["time"], "servers": {}, "waiting": {},
                          "ignored_events": result["ignored_events"]}
                asked = set()
                pending = {}
            continue
        queued = _PENDING_RE.fullmatch(message)
        served = _SERVED_RE.fullmatch(message)
        blocking = _WILL_NOT_SHUT_RE.fullmatch(message)
        if queued or served or blocking:
            if not from_daemon:
                ignore(entry)
            elif queued:
                pending[_number(queued.group("pid"))] = {"uid": _number(queued.group("uid")), "since": entry["time"],
                                                         "blocked_by": None}
            elif served:
                pending.pop(_number(served.group("pid")), None)
                result["waiting"].pop(_number(served.group("pid")), None)
            else:
                for pid, client in pending.items():
                    client["blocked_by"] = _number(blocking.group("pid"))
                    result["waiting"][pid] = client
            continue
        start = _SERVER_START_RE.fullmatch(message)
        shutdown = _SHUTDOWN_RE.fullmatch(message)
        exited = _SERVER_EXIT_RE.fullmatch(message)
        if start:
            pid = _number(start.group("pid"))
            known = result["servers"].get(pid)
            if not (from_daemon or entry["pid"] == pid) or (known and known["started"] and not known["exited"]):
                ignore(entry)  # not the daemon's, or a server that runs cannot start again
                continue
            result["servers"][pid] = {"uid": _number(start.group("uid")), "started": entry["time"], "exited": None,
                                      "status": None, "requested": None}
            asked.discard(pid)
        elif shutdown or exited:
            if not from_daemon:
                ignore(entry)
                continue
            if shutdown:
                asked.add(_number(shutdown.group("pid")))
                continue
            pid = _number(exited.group("pid"))
            server = result["servers"].setdefault(pid, {"uid": None, "started": None, "exited": None,
                                                        "status": None, "requested": None})
            server.update(exited=entry["time"], status=_number(exited.group("status"), "signed"),
                          requested=pid in asked)
    return result


def client_log_entries(text, pids):
    """The server.log lines about these client PIDs: {pid: [{"time", "server", "context", "message"}]}.

    server.log names a client as "{PID: 465, Context ID: 1}"; what a server logs about a client (connected,
    its status, its exit, and whatever this driver says of its limits) is kept as written, for a report to show.
    """
    try:
        wanted = set(_pid_of(p) for p in (pids or ()))
    except TypeError:
        raise OutputError("expected client PIDs, got %s" % type(pids).__name__)
    found = dict((pid, []) for pid in sorted(wanted))
    for entry in parse_log_lines(text):
        for match in _CLIENT_RE.finditer(entry["message"]):
            pid = _number(match.group("pid"), "signed")
            if pid in wanted:
                found[pid].append({"time": entry["time"], "server": entry["pid"],
                                   "context": _number(match.group("context")), "message": entry["message"]})
                break
    return found


def parse_pipe_directory(names):
    """Classify the entries of a pipe directory: daemon markers (pid file, log fifo) and sockets.

    names: the entry names (os.listdir, str or bytes); None is an empty directory."""
    if isinstance(names, (str, bytes)):
        raise OutputError("expected the names of a directory's entries, got one %s" % type(names).__name__)
    try:
        entries = list(names or ())
    except TypeError:
        raise OutputError("expected the names of a directory's entries, got %s" % type(names).__name__)
    decoded = set()
    for name in entries:
        if isinstance(name, bytes):
            name = name.decode("utf-8", "replace")
        elif not isinstance(name, str):
            raise OutputError("expected an entry name, got %s" % type(name).__name__)
        decoded.add(name)
    return {
        "pid_file": PID_FILE in decoded,
        "log_fifo": LOG_FIFO in decoded,
        "sockets": sorted(n for n in SOCKET_FILES if n in decoded),
    }
