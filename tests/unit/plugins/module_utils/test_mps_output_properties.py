# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Property tests of _mps_output (issue 20): every parser is total, and what other users write changes nothing.

(a) Every parser, fed arbitrary bytes, arbitrary text and a soup of the tokens the CLI and its logs print (each drawn
    input goes to every parser, as drawn and in its other form, bytes decoded or text encoded), returns a result or
    raises OutputError: never another exception.
(b) The recorded H100/H200 outputs (tests/unit/fixtures), with what other users control injected:
    - `ps` tables re-printed as the CLI prints them, with hostile client names (any bytes, newlines, \\x1e, text that
      is not UTF-8, copies of real rows, forged rows naming other PIDs and servers, log lines): with get_client_list's
      mapping the parsed (pid, server) pairs are the real ones and every real row is among the parsed rows;
    - control.log with any commands any user sent (logged verbatim as "Cmd:..."), the daemon's answers to them and
      logged `ps` answers with hostile names: servers, requested, daemon_pid and started are unchanged; and for a
      caller that passes the daemon's PID, so are they with whole lines forged in client names that name other PIDs;
    - server.log with text added to the lines that name clients and lines that are not log lines: what each server
      logged (faults included) is unchanged;
    - the recorded one-line answers with CRLF, blanks and blank lines read the same, and with junk added are read or
      refused with OutputError.

Each test runs at least EXAMPLES examples (2,000 in `make unit`; GPULAB_HYPOTHESIS_EXAMPLES=50000 for a long run) and
checks it did: derandomized, so CI runs the same examples every time, and no example database is written.
"""

from __future__ import annotations

import json
import os
import re

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ansible_collections.gpulab.mps.plugins.module_utils import _mps_output as out
from conftest import load_transcript

# 2,000 unless GPULAB_HYPOTHESIS_EXAMPLES says otherwise (more for a long run; fewer only while writing a test).
EXAMPLES = int(os.environ.get("GPULAB_HYPOTHESIS_EXAMPLES", "2000"))
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None, print_blob=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much])
FIXTURES = os.path.join(os.path.dirname(__file__), "..", "..", "fixtures")


def recorded(folder, name):
    with open(os.path.join(FIXTURES, folder, name), "rb") as handle:
        return handle.read()


def run(test):
    """(test wrapped to count its calls, the count): check_count(count) after the run checks there were enough."""
    calls = [0]

    def counted(value):
        calls[0] += 1
        test(value)
    return counted, calls


def check_count(calls):
    assert calls[0] >= EXAMPLES, "hypothesis ran %d examples, fewer than %d" % (calls[0], EXAMPLES)


def total(parser, value):
    """parser(value), or None when it raised OutputError: any other exception fails the test."""
    try:
        return parser(value)
    except out.OutputError:
        return None


# --- (a) any input ---------------------------------------------------------------------------------------
# What the CLI and its logs print, and what breaks naive parsers: the soup strategy strings them together.
TOKENS = [
    "\n", "\r\n", "\r", " ", "  ", "\t", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x1f", "\x85", "\xa0", "\u2028",
    "\u2029", "\x00", "\ufffd", "\ud800", "\u00b2", "\u0663", "\uff11", "0", "1", "7", "42", "486", "-1", "4026531836",
    "9" * 11, "9" * 4400, "-", ".", "0x", "0x80000000", "G", "M", "K", "T", "100.0", "1.2.3", "nan", "1_0", "1e2",
    "PID       ID        SERVER         DEVICE                    NAMESPACE      COMMAND        ",
    "PID ID SERVER DEVICE NAMESPACE COMMAND", "Server not found", "GPU-058fcf08-fc4a-49f5", "MIG-", "python3",
    "497       2         486            GPU-058fcf08-fc4a-49f5    4026531836     python3        ",
    "[2026-11-23 10:56:43.518 Control   407] ", "[2026-12-04 01:23:41.102 Server   502] ",
    "[2026-12-04 01:23:35.163 Other   502] ",
    "Cmd:", "Cmd:shutdown_server 486", "Starting control daemon using socket /tmp/x/control",
    "Starting new server 486 for user 0", "Try shutting down server 486, backoff is disabled",
    "Server 486 exited with status 0", "Server is handling a fatal GPU error.",
    "The following client process have a sticky error set:",
    "Client {PID: 439, Context: 1} encountered a fatal GPU error.",
    "Server teardown in progress. Refusing to accept new client {PID: 864, Context ID: 0}",
    "Creating server context on device 0 (NVIDIA H200)", "{PID: 497, Context ID: 1}",
    "{PID: -1333654781, Context ID: 0}",
    "Client {PID: 449, Context ID: 0} connected", 'Unknown command "', '"', "Cannot find MPS control daemon process",
    "ACTIVE", "FAULT", "Active Threads Percentage set to ", "Device pinned memory limit for device 0 set to ",
    " bytes", "Server Priority set to ", "Server was unable to shutdown due to 2 active clients", "Server has started",
    "nvidia-cuda-mps-control.pid", "control", "log",
]
SOUP = st.lists(st.one_of(st.sampled_from(TOKENS), st.text(max_size=4)), max_size=24).map("".join)
SOUP_BYTES = st.lists(st.one_of(st.sampled_from(TOKENS).map(lambda t: t.encode("utf-8", "surrogatepass")),
                                st.binary(max_size=4)), max_size=24).map(b"".join)
ANY_INPUT = st.one_of(st.binary(max_size=200), st.text(max_size=200), SOUP, SOUP_BYTES, st.none())

TOKEN_BYTES = [t.encode("utf-8", "surrogatepass") for t in TOKENS]

PARSERS = {
    "parse_pid_list": out.parse_pid_list,
    "parse_ps": out.parse_ps,
    "parse_ps_with_clients": lambda text: out.parse_ps(text, clients={486: [497], 492: [449, 637]}),
    "ps_lists": lambda text: out.ps_lists(text, 497, clients={486: [497]}),
    "parse_server_status": out.parse_server_status,
    "parse_percentage": out.parse_percentage,
    "parse_client_priority": out.parse_client_priority,
    "parse_pinned_limit": out.parse_pinned_limit,
    "parse_log_lines": out.parse_log_lines,
    "parse_server_log": out.parse_server_log,
    "parse_control_log": out.parse_control_log,
    "parse_control_log_of_a_daemon": lambda text: out.parse_control_log(text, daemon_pid=407),
    "client_log_entries": lambda text: out.client_log_entries(text, [449, 497, -1333654781]),
    "unknown_command": out.unknown_command,
    "no_daemon": lambda text: out.no_daemon(1, text),
}


def test_any_input_gives_each_parser_a_result_or_an_output_error():
    """Every parser on every drawn input, as given and in its other form (bytes decoded, text encoded)."""
    def check(value):
        forms = [value]
        if isinstance(value, bytes):
            forms.append(value.decode("utf-8", "replace"))
        elif isinstance(value, str):
            forms.append(value.encode("utf-8", "surrogatepass"))
        for name, parser in sorted(PARSERS.items()):
            for form in forms:
                try:
                    total(parser, form)
                except Exception as error:  # pylint: disable=broad-except
                    raise AssertionError("%s(%r) raised %r" % (name, form, error))
    counted, calls = run(check)
    SETTINGS(given(ANY_INPUT)(counted))()
    check_count(calls)


def test_any_directory_listing_gives_a_result_or_an_output_error():
    names = st.one_of(st.none(), st.lists(st.one_of(st.text(max_size=30), st.binary(max_size=30),
                                                    st.sampled_from(sorted(out.DAEMON_FILES))), max_size=8),
                      st.integers(), st.text(max_size=10), st.lists(st.integers(), max_size=2))

    def check(value):
        result = total(out.parse_pipe_directory, value)
        if result is not None:
            assert set(result["sockets"]) <= set(out.SOCKET_FILES)
    counted, calls = run(check)
    SETTINGS(given(names)(counted))()
    check_count(calls)


# --- (b) ps with hostile client names ------------------------------------------------------------------------
# The structure of each scenario (which row, which piece, where) comes from a random.Random that hypothesis seeds
# (derandomized like the rest); the hostile bytes themselves are hypothesis's, drawn as blobs.
PS_HEADER = b"PID       ID        SERVER         DEVICE                    NAMESPACE      COMMAND        "
PS_ROW = "%-10s%-10s%-15s%-26s%-15s"
_CLEAN_ROW = re.compile(r"^(\d+) +(\d+) +(\d+) +(GPU-[0-9a-f-]{18}) +(\d+) +(.*?) *$")
NAMESPACES = ["4026531836", "4026532267", "4026532266"]


def _recorded_rows(text):
    """(pid, id, server, device, namespace, command) of the rows of a recorded ps table whose names are plain."""
    return [tuple(int(v) if i < 3 else v.encode("utf-8") if i == 5 else v for i, v in enumerate(m.groups()))
            for m in map(_CLEAN_ROW.match, text.split("\n")) if m]


def _hostile_recording():
    """The real rows of h200-hostile/ps.raw (see its README): the names as bytes, spanning lines as printed."""
    raw = recorded("h200-hostile", "ps.raw")
    names = {578: b"python3", 608: b"job\nsecond line of argv0", 609: b"rs\x1eafter-rs\x1cfs\x85nel\xe2\x80\xa8ls",
             610: b"bad\xff\xfe\xc3utf8 \xb2\xd9\xa3",
             612: raw[raw.index(b"x\n4242"):raw.index(b"forged-copy-of-plain") + len(b"forged-copy-of-plain")],
             614: raw[raw.index(b"y\n[2026"):raw.rindex(b"disabled") + len(b"disabled")]}
    ids = {578: 1, 609: 2, 608: 3, 612: 4, 610: 5, 614: 6}
    return [(pid, ids[pid], 589, "GPU-0ac3bd61-103c-4937", "4026531836", names[pid]) for pid in ids]


TABLES = [
    _recorded_rows(load_transcript("22_ps_busy.txt")[0]["output"]),
    _recorded_rows(json.loads(recorded("h200-fault", "sticky-cli.json"))["fault"]["ps"][1]),
    _hostile_recording(),
]
assert [len(t) for t in TABLES] == [1, 2, 6]
REAL_DEVICES = sorted(set(row[3] for table in TABLES for row in table))
LOG_LINE_BYTES = [b"[2026-11-23 10:57:02.417 Control   407] Server 486 exited with status 0",
                  b"[2026-12-04 01:23:41.102 Server   502] Server is handling a fatal GPU error.", PS_HEADER,
                  b"Server not found", b"", b"   ", b"\r", b"PID ID SERVER DEVICE NAMESPACE COMMAND"]


def _render_row(pid, cid, server, device, namespace, name):
    """One row as the CLI prints it: fixed columns, then argv[0] raw, padded to 15 bytes."""
    return (PS_ROW % (pid, cid, server, device, namespace)).encode("ascii") + name + b" " * max(0, 15 - len(name))


def _pick(rnd, choices):
    return choices[rnd.randrange(len(choices))]


def _forged_row(rnd, known):
    """A line shaped like a row: a copy of a real row, or one naming other PIDs and servers, odd devices, numbers."""
    if rnd.random() < 0.3:
        return _render_row(*_pick(rnd, known)[:5], name=b"copy")
    names = [row[0] for row in known] + [row[2] for row in known]

    def number():
        return _pick(rnd, [_pick(rnd, names), rnd.randrange(4194305), rnd.randrange(10 ** 12), rnd.randrange(100)])
    shapes = ["%s-%08x-%04x-%04x" % (_pick(rnd, ["GPU", "MIG"]), rnd.getrandbits(32), rnd.getrandbits(16),
                                     rnd.getrandbits(16))]
    device = _pick(rnd, REAL_DEVICES + shapes)
    return _render_row(number(), rnd.randrange(100), number(), device, _pick(rnd, NAMESPACES), b"forged")


def _hostile_name(rnd, blob, known):
    """argv[0] as a hostile client sets it: bytes of the blob, tokens, forged rows, log lines, joined by newlines or
    \\x1e or nothing."""
    pieces = []
    for _turn in range(rnd.randrange(6)):
        kind = rnd.randrange(5)
        if kind == 0:
            start = rnd.randrange(len(blob) + 1)
            pieces.append(blob[start:start + rnd.randrange(1, 17)])
        elif kind == 1:
            pieces.append(_pick(rnd, TOKEN_BYTES))
        elif kind == 2:
            pieces.append(_forged_row(rnd, known))
        elif kind == 3:
            pieces.append(_pick(rnd, LOG_LINE_BYTES))
        else:
            pieces.append(blob)
    return _pick(rnd, [b"\n", b"", b"\x1e", b"\r\n"]).join(pieces) if pieces else blob


@st.composite
def ps_scenarios(draw):
    """(ps output as bytes, the real rows, get_client_list's mapping) of a recorded table with hostile names and more
    clients, in any order."""
    rnd = draw(st.randoms(use_true_random=True))
    table = _pick(rnd, TABLES)
    rows = [row[:5] + (row[5] if rnd.random() < 0.25 else _hostile_name(rnd, draw(st.binary(max_size=48)), table),)
            for row in table]
    taken = set(row[0] for row in rows)
    servers = sorted(set(row[2] for row in table)) + [7, 1234567]
    for _turn in range(rnd.randrange(4)):
        pid = rnd.randrange(1, 4194305)
        if pid not in taken:
            taken.add(pid)
            rows.append((pid, rnd.randrange(1, 49), _pick(rnd, servers), _pick(rnd, REAL_DEVICES),
                         _pick(rnd, NAMESPACES), _hostile_name(rnd, draw(st.binary(max_size=48)), table)))
    rnd.shuffle(rows)
    text = b"\n".join([PS_HEADER] + [_render_row(*row) for row in rows]) + _pick(rnd, [b"\n", b"", b"\n\n"])
    clients = {}
    for row in rows:
        clients.setdefault(row[2], []).append(row[0])
    return text, rows, clients


def _columns(rows):
    return set(tuple(r[k] for k in out.PS_COLUMNS[:5]) for r in rows)


def test_ps_with_hostile_names_keeps_every_real_row():
    def check(scenario):
        text, rows, clients = scenario
        real = set(row[:5] for row in rows)
        for given_text in (text, text.decode("utf-8", "replace")):
            # Without the client list a row-shaped line in a name is a row: the real ones are all there.
            assert real <= _columns(out.parse_ps(given_text))
            # With it, the pairs are exactly the real ones, and each real row is there as the CLI printed it.
            listed = out.parse_ps(given_text, clients=clients)
            assert set((r["pid"], r["server"]) for r in listed) == set((row[0], row[2]) for row in rows)
            assert real <= _columns(listed)
        for row in rows:
            assert out.ps_lists(text, row[0], clients=clients) is True
        assert out.ps_lists(text, 4242, clients=clients) is (4242 in set(row[0] for row in rows))
    counted, calls = run(check)
    SETTINGS(given(ps_scenarios())(counted))()
    check_count(calls)


# --- (b) control.log with what any user sends ----------------------------------------------------------------
CONTROL_LOGS = [
    load_transcript("32_control_log.txt")[0]["output"].encode("utf-8"),
    recorded("h200-fault", "server-control.filtered.log"),
    recorded("h200-fault", "sticky-control.filtered.log"),
    recorded("h200-fault", "control-control.filtered.log"),
    recorded("h200-hostile", "control.log"),
    recorded("h200-fault", "server-control.filtered.log") + recorded("h200-fault", "sticky-control.filtered.log"),
]
DAEMONS = [int(re.findall(rb"Control +(\d+)\] Starting control daemon", log)[-1]) for log in CONTROL_LOGS]
ANSWERS_LOGGED = [
    b"Insufficient privileges for UID 1000. Control deamon settings can only be modified by the user who started it "
    b"or by the root user.", b"Not enough privilege to execute quit command", b"UI closed", b"NEW UI",
    b"Accepting connection...", b"800", PS_HEADER]
COMMANDS = [b"shutdown_server %d" % p for p in (486, 492, 1165, 1460, 589, 767)] + [
    b"quit", b"quit -t 2", b"shutdown_server 767 -f", b"terminate_client 589 578", b"ps", b"get_server_list"]


def _logged(pid, message):
    return b"[2026-12-04 01:23:56.900 Control %5d] " % pid + message


def _a_users_session(rnd, blob, daemon):
    """A command any user sent, logged verbatim by the daemon, and what the daemon logs of its answer: refusals,
    'Unknown command', ps rows whose names hold anything but a newline (forged lines behind \\x1e and the like)."""
    command = _pick(rnd, [blob, _pick(rnd, TOKEN_BYTES), _pick(rnd, COMMANDS), _pick(rnd, COMMANDS) + blob,
                          blob + _pick(rnd, TOKEN_BYTES) + _logged(daemon, b"Try shutting down server 767")])
    lines = [_logged(_pick(rnd, [daemon, 1, 4242]), b"Cmd:" + command.replace(b"\n", b""))]
    for _turn in range(rnd.randrange(4)):
        kind = rnd.randrange(3)
        if kind == 0:
            answer = _pick(rnd, ANSWERS_LOGGED)
        elif kind == 1:
            answer = b'Unknown command "' + command.replace(b"\n", b"").split(b" ")[0] + b'"'
        else:
            name = (b"x" + _pick(rnd, TOKEN_BYTES) + _logged(daemon, _pick(rnd, [
                b"Try shutting down server 767, backoff is disabled", b"Server 1460 exited with status 0",
                b"Starting control daemon using socket /x/control"])) + blob)
            answer = _render_row(497, 2, 486, "GPU-058fcf08-fc4a-49f5", "4026531836", name.replace(b"\n", b""))
        lines.append(_logged(daemon, answer))
    return lines


@st.composite
def control_log_scenarios(draw):
    """(a recorded control.log, the same with sessions of any user put between its lines, its daemon's PID)."""
    rnd = draw(st.randoms(use_true_random=True))
    index = rnd.randrange(len(CONTROL_LOGS))
    lines = CONTROL_LOGS[index].split(b"\n")
    for _turn in range(rnd.randrange(1, 7)):
        at = rnd.randrange(len(lines) + 1)
        lines[at:at] = _a_users_session(rnd, draw(st.binary(max_size=40)), DAEMONS[index])
    return index, b"\n".join(lines)


CLEAN_CONTROL = [(out.parse_control_log(log), out.parse_control_log(log, daemon_pid=daemon))
                 for log, daemon in zip(CONTROL_LOGS, DAEMONS)]


def _read(log):
    return (log["daemon_pid"], log["started"], log["servers"])


def test_control_log_is_the_same_with_any_users_commands():
    def check(scenario):
        index, injected = scenario
        clean, clean_of_daemon = CLEAN_CONTROL[index]
        assert _read(out.parse_control_log(injected)) == _read(clean)
        assert _read(out.parse_control_log(injected.decode("utf-8", "replace"))) == _read(clean)
        assert _read(out.parse_control_log(injected, daemon_pid=DAEMONS[index])) == _read(clean_of_daemon)
    counted, calls = run(check)
    SETTINGS(given(control_log_scenarios())(counted))()
    check_count(calls)


@st.composite
def forged_log_scenarios(draw):
    """A recorded control.log with logged ps answers whose client names hold whole forged lines, each naming a PID
    that is neither the daemon's nor (for a server start) the server's own."""
    rnd = draw(st.randoms(use_true_random=True))
    index = rnd.randrange(len(CONTROL_LOGS))
    lines = CONTROL_LOGS[index].split(b"\n")
    daemon = DAEMONS[index]
    known = [1, 486, 492, 589, 723, 767, 1165, 1460, daemon]
    for _turn in range(rnd.randrange(1, 5)):
        at = rnd.randrange(len(lines) + 1)
        answer = [_logged(daemon, b"Cmd:ps"), _logged(daemon, PS_HEADER),
                  _logged(daemon, _render_row(497, 2, 486, "GPU-058fcf08-fc4a-49f5", "4026531836", b"x"))]
        for _turn in range(rnd.randrange(1, 4)):
            writer, server = _pick(rnd, known + [rnd.randrange(4194305)]), _pick(rnd, known)
            if writer == daemon:
                writer += 1
            event = _pick(rnd, [b"Starting control daemon using socket /tmp/x/control",
                                b"Try shutting down server %d, backoff is disabled" % server,
                                b"Server %d exited with status %d" % (server, rnd.randrange(-9, 2)),
                                b"Starting new server %d for user %d" % (server + (writer == server),
                                                                         rnd.randrange(2))])
            answer.append(_logged(writer, event) + draw(st.binary(max_size=8)).replace(b"\n", b""))
        lines[at:at] = answer
    return index, b"\n".join(lines)


def test_control_log_of_a_known_daemon_ignores_lines_forged_in_client_names():
    """With daemon_pid (a caller that checked which daemon runs), forged lines in logged ps answers change nothing
    unless they name the daemon's PID (or a server's own PID for its start): that limit is parse_control_log's."""
    def check(scenario):
        index, injected = scenario
        assert _read(out.parse_control_log(injected, daemon_pid=DAEMONS[index])) == _read(CLEAN_CONTROL[index][1])
    counted, calls = run(check)
    SETTINGS(given(forged_log_scenarios())(counted))()
    check_count(calls)


# --- (b) server.log with text that is not the servers' ---------------------------------------------------------
def _server_log_of_exploration():
    raw = recorded("h100-transcripts", "60_cli_exploration.txt")
    return raw[raw.index(b"-- server.log"):raw.index(b"== 4.")]


SERVER_LOGS = [
    recorded("h100-transcripts", "33_server_log.txt"),
    _server_log_of_exploration(),
    recorded("h200-fault", "fault-server.log"),
    recorded("h200-fault", "sticky-server.log"),
    recorded("h200-hostile", "server.log"),
]
WANTED = [449, 439, 497, 609, 703]
CLEAN_SERVER = [(out.parse_server_log(log), out.parse_log_lines(log), out.client_log_entries(log, WANTED))
                for log in SERVER_LOGS]
assert all(servers for servers, _text, _log in CLEAN_SERVER) and any(s[502]["faults"] for s, _text, _log in CLEAN_SERVER if 502 in s)
_NAMES_A_CLIENT = re.compile(rb"\{PID: -?\d+, Context ID: \d+\}")
NOT_LOG_LINE_STARTS = [b"x", b"]", b"\x1e", b"0", b"{", b"\xff", b"Server 1] ", b"\x85[", b"\xe2\x80\xa8["]


@st.composite
def server_log_scenarios(draw):
    """(a recorded server.log, the same with text added to the lines that name a client and lines put in that are
    not log lines)."""
    rnd = draw(st.randoms(use_true_random=True))
    index = rnd.randrange(len(SERVER_LOGS))
    lines = SERVER_LOGS[index].split(b"\n")
    naming = [i for i, line in enumerate(lines) if _NAMES_A_CLIENT.search(line)]
    for _turn in range(rnd.randrange(6)):
        i = _pick(rnd, naming)
        added = _pick(rnd, [draw(st.binary(max_size=40)), _pick(rnd, TOKEN_BYTES)])
        lines[i] += _pick(rnd, [b"", b" ", b"\x1e", b"\r", b"\x85"]) + added.replace(b"\n", b"")
    for _turn in range(rnd.randrange(6)):
        at = rnd.randrange(len(lines) + 1)
        lines[at:at] = [(_pick(rnd, NOT_LOG_LINE_STARTS) + draw(st.binary(max_size=40))).replace(b"\n", b"")]
    return index, b"\n".join(lines)


def _subsequence(part, whole):
    rest = iter(whole)
    return all(any(item == other for other in rest) for item in part)


def test_server_log_is_the_same_with_text_of_others():
    def check(scenario):
        index, injected = scenario
        servers, entries, clients = CLEAN_SERVER[index]
        assert out.parse_server_log(injected) == servers
        assert out.parse_server_log(injected.decode("utf-8", "replace")) == servers
        assert [(e["time"], e["source"], e["pid"]) for e in out.parse_log_lines(injected)] == [
            (e["time"], e["source"], e["pid"]) for e in entries]
        found = out.client_log_entries(injected, WANTED)
        for pid in WANTED:
            assert _subsequence([(e["time"], e["server"], e["context"]) for e in clients[pid]],
                                [(e["time"], e["server"], e["context"]) for e in found[pid]])
    counted, calls = run(check)
    SETTINGS(given(server_log_scenarios())(counted))()
    check_count(calls)


# --- (b) the recorded one-line answers -------------------------------------------------------------------------
ANSWER_PARSERS = {
    "get_server_list": out.parse_pid_list, "get_client_list": out.parse_pid_list,
    "get_server_status": out.parse_server_status, "get_default_active_thread_percentage": out.parse_percentage,
    "set_default_active_thread_percentage": out.parse_percentage, "get_active_thread_percentage": out.parse_percentage,
    "get_default_client_priority": out.parse_client_priority,
    "get_default_device_pinned_mem_limit": out.parse_pinned_limit,
    "get_device_pinned_mem_limit": out.parse_pinned_limit,
    "ps": out.parse_ps, "frobnicate": out.unknown_command, "help": out.unknown_command,
}


def _recorded_answers():
    answers = []
    for name in sorted(os.listdir(os.path.join(FIXTURES, "h100-transcripts"))):
        if name.endswith(".txt"):
            for entry in load_transcript(name):
                word = (entry["stdin"] or "").split(" ")[0]
                if word in ANSWER_PARSERS and entry["rc"] == 0:
                    answers.append((word, entry["output"].encode("utf-8")))
    sticky = json.loads(recorded("h200-fault", "sticky-cli.json"))["fault"]
    answers += [(command.split(" ")[0], answer[1].encode("utf-8")) for command, answer in sorted(sticky.items())]
    answers += [("get_server_list", recorded("h200-hostile", "get_server_list.raw")),
                ("get_client_list", recorded("h200-hostile", "get_client_list.raw")),
                ("ps", recorded("h200-hostile", "ps.raw"))]
    return [(ANSWER_PARSERS[word], answer, total(ANSWER_PARSERS[word], answer)) for word, answer in answers]


ANSWERS = _recorded_answers()
assert len(ANSWERS) >= 40 and sum(1 for _command, _text, read in ANSWERS if read not in (None, [])) >= 20


@st.composite
def answer_scenarios(draw):
    """(the parser, what it read of a recorded answer, the answer with CRLF, blanks at the ends of lines and blank
    lines around, the same with junk put in)."""
    rnd = draw(st.randoms(use_true_random=True))
    parser, answer, read = _pick(rnd, ANSWERS)
    end = b"\r" if rnd.random() < 0.5 else b""
    if parser is out.parse_ps:  # a ps line's leading blanks are the CLI's: only a "\r" is added
        lines = [line + end for line in answer.split(b"\n")]
    else:
        lines = [_pick(rnd, [b"", b" ", b"\t"]) + line + _pick(rnd, [b"", b" ", b"\t ", b"  "]) + end
                 for line in answer.split(b"\n")]
    around = _pick(rnd, [b"", b"\n", b"\n\n", b" \n"])
    clean = around + b"\n".join(lines) + around
    dirty = clean
    for _turn in range(rnd.randrange(1, 4)):
        at = rnd.randrange(len(dirty) + 1)
        dirty = dirty[:at] + _pick(rnd, [draw(st.binary(max_size=12)), _pick(rnd, TOKEN_BYTES)]) + dirty[at:]
    return parser, read, clean, dirty


def test_recorded_answers_read_the_same_with_blanks_and_crlf_and_total_with_junk():
    def check(scenario):
        parser, read, clean, dirty = scenario
        assert total(parser, clean) == read
        assert total(parser, clean.decode("utf-8", "replace")) == read
        total(parser, dirty)
        total(parser, dirty.decode("utf-8", "replace"))
    counted, calls = run(check)
    SETTINGS(given(answer_scenarios())(counted))()
    check_count(calls)
