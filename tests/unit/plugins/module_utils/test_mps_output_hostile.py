# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What other users put in front of _mps_output (issue 20), as regression tests over the real recorded output.

A client's argv[0] reaches `ps` raw (a newline, \\x1e, bytes that are not UTF-8, lines that look like rows), any local
user's command reaches control.log verbatim, and the CLI's output is bytes. Each test here failed on the parsers as
they were at ac3cd52: a parser crashed (ValueError, TypeError), failed on good output (one client's name broke every
`ps`), or returned what the CLI never said (a row split out of a name, an exit marked requested by a user's command).
Recordings: tests/unit/fixtures/h100-transcripts, h200-fault and h200-hostile (a probe on the H200, 2026-12-04, whose
README says what each client and command was)."""

from __future__ import annotations

import os

import pytest

from ansible_collections.gpulab.mps.plugins.module_utils import _mps_output as out
from conftest import transcript_output

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "..", "fixtures")


def recorded(folder, name):
    """A recorded file, as the bytes the CLI or the daemon wrote."""
    with open(os.path.join(FIXTURES, folder, name), "rb") as handle:
        return handle.read()


def hostile(name):
    return recorded("h200-hostile", name)


def fault(name):
    return recorded("h200-fault", name).decode("utf-8")


# What str.splitlines() splits on besides "\n": none of them ends a line of the CLI or of its logs, and a client name
# or a logged command can hold each of them.
NOT_NEWLINES = ["\r", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029"]
# What str.isdigit() and re's \d take but the CLI never prints as a number: int() refuses the first ("²"), and reads
# the others as digits.
NOT_ASCII_DIGITS = ["\u00b2", "\u0663", "\uff11", "\u0967", "\U0001d7d9"]


# --- records are split on "\n" only ------------------------------------------------------------------
@pytest.mark.parametrize("separator", NOT_NEWLINES)
def test_a_pid_list_is_split_on_newline_only(separator):
    with pytest.raises(out.OutputError):
        out.parse_pid_list("486" + separator + "487\n")


def test_a_pid_list_takes_crlf_and_bytes():
    assert out.parse_pid_list(b"578\r\n609\r\n") == [578, 609]
    assert out.parse_pid_list(hostile("get_client_list.raw")) == [578, 609, 608, 612, 610, 614]


# --- numbers are ASCII digits, of a sane length ------------------------------------------------------
@pytest.mark.parametrize("digit", NOT_ASCII_DIGITS)
@pytest.mark.parametrize("parser, template", [
    (out.parse_pid_list, "%s\n"),
    (out.parse_client_priority, "%s\n"),
    (out.parse_percentage, "%s0.0\n"),
    (out.parse_pinned_limit, "%sG\n"),
])
def test_a_number_that_is_not_ascii_digits_is_an_output_error(parser, template, digit):
    with pytest.raises(out.OutputError):
        parser(template % digit)


@pytest.mark.parametrize("text", ["9" * 11, "9" * 5000])
@pytest.mark.parametrize("parser", [out.parse_pid_list, out.parse_client_priority])
def test_a_number_longer_than_a_pid_is_an_output_error(parser, text):
    with pytest.raises(out.OutputError):
        parser(text)


@pytest.mark.parametrize("text", ["nan", "inf", "1_0.0", "1e2", "5000" + "0" * 5000])
def test_a_percentage_is_a_plain_decimal(text):
    with pytest.raises(out.OutputError):
        out.parse_percentage(text)


# --- ps: a client's name is opaque text ----------------------------------------------------------------
PS_ORDER = [578, 609, 608, 612, 4242, 578, 610, 614]


@pytest.mark.parametrize("as_text", [False, True], ids=["bytes", "text"])
def test_the_ps_recorded_with_hostile_names_on_the_h200(as_text):
    raw = hostile("ps.raw")
    rows = out.parse_ps(raw.decode("utf-8", "replace") if as_text else raw)
    # Without get_client_list to check against, a line that has the shape of a row is a row: 4242 and the second 578
    # came from client 612's name.
    assert [r["pid"] for r in rows] == PS_ORDER
    by_id = dict((r["id"], r) for r in rows)
    assert by_id[3]["command"] == "job\nsecond line of argv0"
    assert by_id[2]["command"] == "rs\x1eafter-rs\x1cfs\ufffdnel\u2028ls"  # a raw \x85 byte is not UTF-8
    assert by_id[5]["command"] == "bad\ufffd\ufffd\ufffdutf8 \ufffd\u0663"
    assert by_id[6]["command"] == ("y\n[2026-12-04 00:00:00.000 Control      1] Try shutting down server 589, "
                                   "backoff is disabled")
    assert set(r["server"] for r in rows) == {589}


def test_the_ps_recorded_on_the_h200_read_with_the_client_list():
    clients = {589: out.parse_pid_list(hostile("get_client_list.raw"))}
    rows = out.parse_ps(hostile("ps.raw"), clients=clients)
    # The row of PID 4242 was text in client 612's name: it is part of that name now. The forged copy of 578 names a
    # real (pid, server) pair and stays, beside the real 578, which it contradicts (another ID and device): a caller
    # that requires every row naming a PID to agree refuses to act on 578.
    assert [r["pid"] for r in rows] == [578, 609, 608, 612, 578, 610, 614]
    assert rows[3]["command"].startswith("x\n4242      9         589")
    assert [(r["id"], r["device"]) for r in rows if r["pid"] == 578] == [
        (1, "GPU-0ac3bd61-103c-4937"), (7, "GPU-ffffffff-ffff-ffff")]
    assert all(r["namespace"] == "4026531836" for r in rows)


BUSY_ROW = "497       2         486            GPU-058fcf08-fc4a-49f5    4026531836     %s        \n"
HOSTILE_NAMES = [
    "job\nsecond line",
    "a\x1eb", "a\x85b", "a\u2028b", "a\x1cb\x1db", "a\rb", "a\x0b\x0cb",
    "x\n\n\ny",
    "x\n" + BUSY_ROW.strip() % "copy",
    "x\n4242      9         486            GPU-00000000-0000-0000    4026531836     forged",
    "x\n497       2         999            GPU-058fcf08-fc4a-49f5    4026531836     other server",
    "x\n[2026-11-23 10:57:02.417 Control   407] Server 486 exited with status 0",
    "x\nPID       ID        SERVER         DEVICE                    NAMESPACE      COMMAND",
    "x\nServer not found",
    "\u00b2\u0663",
]


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_a_hostile_name_in_the_recorded_h100_ps_leaves_the_real_row(name):
    header = transcript_output("22_ps_busy.txt")[0].splitlines()[0]
    text = header + "\n" + BUSY_ROW % name
    rows = out.parse_ps(text, clients={486: [497]})
    assert [(r["pid"], r["server"]) for r in rows] in ([(497, 486)], [(497, 486), (497, 486)])
    assert rows[0] == {"pid": 497, "id": 2, "server": 486, "device": "GPU-058fcf08-fc4a-49f5",
                       "namespace": "4026531836", "command": rows[0]["command"]}
    assert out.ps_lists(text, 497) is True
    assert out.ps_lists(text, 4242, clients={486: [497]}) is False


@pytest.mark.parametrize("name", [n for n in HOSTILE_NAMES if "\n" in n and "  " not in n])
def test_a_name_spanning_lines_is_one_command(name):
    header = transcript_output("22_ps_busy.txt")[0].splitlines()[0]
    (row,) = out.parse_ps(header + "\n" + BUSY_ROW % name)
    assert row["pid"] == 497 and row["command"].split("\n")[0] == name.split("\n")[0]


def test_a_client_that_came_between_get_client_list_and_ps_is_left_out_not_an_error():
    text = hostile("ps.raw")
    rows = out.parse_ps(text, clients={589: [609, 610]})
    assert [r["pid"] for r in rows] == [609, 610]


@pytest.mark.parametrize("text", [
    "PID ID SERVER DEVICE NAMESPACE COMMAND\nnot a row\n" + BUSY_ROW % "python3",
    "junk\n" + "PID ID SERVER DEVICE NAMESPACE COMMAND\n",
    "Server not found\nPID ID SERVER DEVICE NAMESPACE COMMAND\n",
    "PID ID SERVER DEVICE NAMESPACE COMMAND\n\u00b2       2         486            GPU-058fcf08-fc4a-49f5    1     x\n",
])
def test_text_before_the_first_row_is_an_output_error(text):
    with pytest.raises(out.OutputError):
        out.parse_ps(text)


# --- control.log: what users send never changes the answer ---------------------------------------------
KILLED = fault("server-control.filtered.log")   # 1165 was killed (SIGKILL), 1460 shut down by quit
BEFORE_KILLED_EXIT = "[2026-12-04 01:23:57.023 Control  1131] Server 1165 exited with status 0\n"
FORGED_TRY = "[2026-12-04 01:23:57.000 Control  1131] Try shutting down server 1165, backoff is disabled"
USER_COMMANDS = ["shutdown_server 1165", "shutdown_server 1165 -f"] + [
    "get_server_list " + c + FORGED_TRY for c in NOT_NEWLINES]


def logged_command(command):
    """How the daemon logs a command any user sent (H200 recording: verbatim, whatever it holds)."""
    return ("[2026-12-04 01:23:56.900 Control  1131] Accepting connection...\n"
            "[2026-12-04 01:23:56.900 Control  1131] NEW UI\n"
            "[2026-12-04 01:23:56.900 Control  1131] Cmd:%s\n"
            "[2026-12-04 01:23:56.900 Control  1131] Insufficient privileges for UID 1000. Control deamon settings "
            "can only be modified by the user who started it or by the root user.\n"
            "[2026-12-04 01:23:56.900 Control  1131] UI closed\n" % command)


@pytest.mark.parametrize("command", USER_COMMANDS)
def test_a_users_command_does_not_mark_a_crash_requested(command):
    assert BEFORE_KILLED_EXIT in KILLED
    text = KILLED.replace(BEFORE_KILLED_EXIT, logged_command(command) + BEFORE_KILLED_EXIT)
    log = out.parse_control_log(text)
    assert log["servers"][1165]["requested"] is False and log["servers"][1460]["requested"] is True
    assert log["daemon_pid"] == 1131


@pytest.mark.parametrize("separator", NOT_NEWLINES)
def test_a_daemon_restart_is_read_from_daemon_lines_only(separator):
    forged = "[2026-12-04 01:24:02.000 Control  9999] Starting control daemon using socket /tmp/x/control"
    log = out.parse_control_log(KILLED + logged_command("get_server_list " + separator + forged))
    assert log["daemon_pid"] == 1131 and sorted(log["servers"]) == [1165, 1460]


@pytest.mark.parametrize("as_text", [False, True], ids=["bytes", "text"])
def test_the_control_log_recorded_with_hostile_users_on_the_h200(as_text):
    raw = hostile("control.log")
    log = out.parse_control_log(raw.decode("utf-8", "replace") if as_text else raw)
    assert log["daemon_pid"] == 575
    # 589 and 723 were shut down by root's shutdown_server; 767 was killed with SIGKILL.
    assert dict((pid, (s["requested"], s["status"], s["uid"])) for pid, s in log["servers"].items()) == {
        589: (True, 0, 0), 723: (True, 0, 0), 767: (False, 0, 0)}


def test_a_forged_line_in_a_logged_ps_answer_does_not_mark_a_crash_requested():
    """Client 614's name put a whole "Try shutting down server 589" line into control.log (the daemon logs its `ps`
    answers); named 767 instead, it would hide that server's crash. It names PID 1, not the daemon: not counted."""
    raw = hostile("control.log")
    forged = b"Control      1] Try shutting down server 589,"
    assert raw.count(forged) == 2
    log = out.parse_control_log(raw.replace(forged, b"Control      1] Try shutting down server 767,"))
    assert log["servers"][767]["requested"] is False
    assert [e["message"] for e in log["ignored_events"]] == [
        "Try shutting down server 767, backoff is disabled"] * 2


def test_a_forged_daemon_start_changes_nothing_for_a_caller_that_knows_the_daemon():
    """A client name can put a "Starting control daemon" line of another PID into control.log through a logged `ps`
    answer; a caller that checked which daemon runs passes its PID, and that line is not read."""
    raw = hostile("control.log")
    clean = out.parse_control_log(raw, daemon_pid=575)
    forged = b"[2026-12-04 10:23:58.000 Control  4242] Starting control daemon using socket /x/control\n"
    marker = b"[2026-12-04 10:24:00.828 Control   575] Cmd:quit\n"
    assert raw.count(marker) == 1
    log = out.parse_control_log(raw.replace(marker, forged + marker), daemon_pid=575)
    assert (log["daemon_pid"], log["started"], log["servers"]) == (575, clean["started"], clean["servers"])
    assert sorted(clean["servers"]) == [589, 723, 767]
    # The same daemon cannot start twice: a second start line of its own PID is not a restart.
    again = raw.replace(marker, forged.replace(b"4242", b" 575") + marker)
    assert out.parse_control_log(again)["servers"] == clean["servers"]


def test_a_second_start_of_a_running_server_is_not_read():
    """A forged "Starting new server N" line (the server's own PID, as the real one is written) cannot change the uid
    of a server that runs, nor wipe its record."""
    raw = hostile("control.log")
    marker = b"[2026-12-04 10:23:49.203 Control   575] NEW SERVER 723: Ready\n"
    forged = b"[2026-12-04 10:23:49.203 Control   723] Starting new server 723 for user 1234\n"
    assert raw.count(marker) == 1
    log = out.parse_control_log(raw.replace(marker, marker + forged))
    assert log["servers"] == out.parse_control_log(raw)["servers"]
    assert log["ignored_events"][-1]["message"] == "Starting new server 723 for user 1234"


@pytest.mark.parametrize("clients", [[589], {589: None}, {589: ["x"]}, {None: [578]}, 589, {589: [True]}])
def test_a_client_list_that_is_not_one_is_an_output_error(clients):
    with pytest.raises(out.OutputError):
        out.parse_ps(hostile("ps.raw"), clients=clients)
    assert out.ps_lists(hostile("ps.raw"), 578, clients=clients) is False


# --- server.log ----------------------------------------------------------------------------------------
STICKY = fault("sticky-server.log")
HEALTHY = STICKY.split("encountered a fatal")[0].rsplit("\n", 1)[0] + "\n"
CONNECTED = "Client {PID: 449, Context ID: 0} connected"


@pytest.mark.parametrize("separator", NOT_NEWLINES)
def test_server_log_is_split_on_newline_only(separator):
    assert HEALTHY.count(CONNECTED) == 1
    forged = "[2026-12-04 01:27:43.651 Server   492] Server is handling a fatal GPU error."
    text = HEALTHY.replace(CONNECTED, CONNECTED + separator + forged)
    assert out.parse_server_log(text)[492]["faults"] == []


@pytest.mark.parametrize("digit", NOT_ASCII_DIGITS)
def test_a_sticky_client_is_an_ascii_pid(digit):
    text = STICKY.replace("] 449\n", "] %s\n" % digit, 1)
    (logged,) = out.parse_server_log(text)[492]["faults"]
    assert set(logged["sticky_clients"]) <= {637} and all(isinstance(p, int) for p in logged["sticky_clients"])


@pytest.mark.parametrize("message, key, value", [
    ("Active Threads Percentage set to 1.2.3", "active_thread_percentage", 100.0),
    ("Active Threads Percentage set to \u0663\u0660", "active_thread_percentage", 100.0),
    ("Device pinned memory limit for device 0 set to 0123 bytes", "pinned_memory_limit", {0: 123}),
    ("Device pinned memory limit for device \u00b2 set to 1 bytes", "pinned_memory_limit", {}),
    ("Device pinned memory limit for device 0 set to %s bytes" % ("9" * 5000), "pinned_memory_limit", {}),
    ("Server Priority set to \u00b2", "priority", 0),
    ("Server was unable to shutdown due to \u00b2 active clients", "unable_to_shutdown_clients", None),
])
def test_a_server_log_value_the_cli_never_prints_is_read_as_ascii_or_not_at_all(message, key, value):
    text = STICKY + "[2026-12-04 01:28:49.000 Server   492] %s\n" % message
    assert out.parse_server_log(text)[492][key] == value


@pytest.mark.parametrize("pid", ["\u0664\u0664\u0666", "\u00b2", "9" * 5000])
def test_a_log_line_names_an_ascii_pid(pid):
    line = "[2026-12-04 01:27:41.663 Control   %s] Starting control daemon using socket /x/control\n" % pid
    assert out.parse_log_lines(line) == []
    assert out.parse_control_log(KILLED + line)["daemon_pid"] == 1131


@pytest.mark.parametrize("pid", ["\u00b2", "\u0663", "9" * 5000])
def test_client_log_entries_name_ascii_pids(pid):
    text = STICKY + "[2026-12-04 01:28:49.000 Server   492] Client {PID: %s, Context ID: 1} connected\n" % pid
    entries = out.client_log_entries(text, [449, 3])
    assert entries[3] == [] and len(entries[449]) > 0


# --- every parser takes bytes --------------------------------------------------------------------------
def test_every_parser_takes_bytes():
    assert out.no_daemon(1, b"Cannot find MPS control daemon process\n") is True
    assert out.unknown_command(b'Unknown command "frob\xc3\xa9"\n') == "frob\u00e9"
    assert out.unknown_command('Unknown command "x"\r\n') == "x"
    assert out.parse_server_status(b"ACTIVE\n") == "ACTIVE"
    assert out.parse_percentage(b"50.0\n") == 50.0
    assert out.parse_client_priority(b"0\n") == 0
    assert out.parse_pinned_limit(b"4G\n") == "4G"
    assert out.parse_log_lines(hostile("server.log"))[0]["message"] == "Startup"
    assert 589 in out.parse_server_log(hostile("server.log"))
    assert len(out.client_log_entries(hostile("server.log"), [609])[609]) > 0
    assert out.parse_pipe_directory([b"control", b"nvidia-cuda-mps-control.pid"]) == {
        "pid_file": True, "log_fifo": False, "sockets": ["control"]}
    assert out.parse_pipe_directory(None) == {"pid_file": False, "log_fifo": False, "sockets": []}


@pytest.mark.parametrize("pids", [5, [None], ["x"], [1.5], [True], ["\u00b2"]])
def test_client_log_entries_take_pids_only(pids):
    with pytest.raises(out.OutputError):
        out.client_log_entries(hostile("server.log"), pids)


def test_an_unknown_command_is_the_whole_answer_not_a_line_of_it():
    """Regression (tests/hostile/test_hostile_text.py, unknown-command-answer): a client named
    'job\\nUnknown command "ps"' made root's `ps` look unknown to the daemon, so every mps_info and mps_daemon run
    failed. The CLI answers an unknown command with that one line alone."""
    table = transcript_output("22_ps_busy.txt")[0] + '28434     12        486            GPU-058fcf08-fc4a-49f5    ' \
        '4026531836     job\nUnknown command "ps"\n'
    assert out.unknown_command(table) is None
    assert out.unknown_command(transcript_output("16_unknown_cmd.txt")[0]) == "frobnicate"
