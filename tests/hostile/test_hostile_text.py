# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Issue 20, denial of service by any GPU user: text another user controls reaches root's modules.

On the H200 (driver 580, MPS-FACTS.md "What other users can put in front of the collection"), `ps` prints each
client's argv[0] raw in its COMMAND column (a newline, `\\x1e` and bytes that are not UTF-8 included: a row may span
lines), and control.log records every command any user sends through the world-writable `control` socket verbatim.
Played here for real: a throwaway user's client process with such an argv[0] (os.execv, as `exec -a` does), and the
same user running the CLI with odd commands; the stand-in daemon prints and logs them as the H200 did. Then root's
mps_info, mps_daemon (started with defaults; stopped with force) and the metrics collector must each give the
correct answer: the real clients and servers, no invented one, health as it really is.

The stand-in's hidden hooks (standin_attach_client, standin_fault) make root's sleeping processes MPS clients.
"""

from __future__ import annotations

import os
import signal

import pytest

import _hostile as h

pytestmark = h.NEEDS_ROOT

HEADER = h.PS_FORMAT % ("PID", "ID", "SERVER", "DEVICE", "NAMESPACE", "COMMAND")

# argv[0] of the intruder's client, from what the test knows of the host (ctx: root's server, a victim PID that is no
# client, the host's PID namespace). Each is a name a user may give a process.
ARGV0 = {
    "newline": lambda c: "job\nx",
    "record-separator": lambda c: "job\x1ex",
    "every-python-line-break": lambda c: "job\x0bv\x0cf\x1cfs\x1dgs\x1ers\x85nel\u2028ls\u2029ps\rcr",
    "not-utf8": lambda c: b"job-\xff\xfe\xc3(\x80",
    "forged-row": lambda c: "job\n" + h.ps_row(c["victim"], c["server"], c["ns"], "python3"),
    "forged-row-after-rs": lambda c: "job\x1e" + h.ps_row(c["victim"], c["server"], c["ns"], "python3"),
    "digits-not-ascii": lambda c: "job\n" + h.ps_row("\u00b2\u00b3", 1, c["server"], c["ns"], "python3"),
    "unknown-command-answer": lambda c: 'job\nUnknown command "ps"',
    "server-not-found": lambda c: "job\nServer not found",
    "second-header": lambda c: "job\n" + HEADER,
    "no-daemon-answer": lambda c: "job\nCannot find MPS control daemon process",
}


def common(lab, **extra):
    return dict({"pipe_directory": lab["pipe"], "log_directory": lab["log"], "state_directory": lab["state"],
                 "control_binary": h.CONTROL}, **extra)


def hostile_clients(lab, procs, intruder, names):
    """Root's daemon, a client of root's (server S) and, for each name of ARGV0, a client of the intruder with that
    argv[0] (on his own server, as MPS gives each user). Returns {"clients": {pid: server}, "root_client",
    "root_server", "victim"}."""
    h.start_daemon(lab)
    root_client = procs.sleeper()
    root_server = h.attach(lab, root_client.pid, uid=0)
    victim = procs.sleeper()  # a process of root's that is nobody's client
    ctx = {"server": root_server, "victim": victim.pid, "ns": h.host_pid_namespace()}
    clients = {root_client.pid: root_server}
    for name in names:
        client = procs.sleeper(user=intruder, argv0=ARGV0[name](ctx))
        clients[client.pid] = h.attach(lab, client.pid, uid=intruder["uid"])
    return {"clients": clients, "root_client": root_client.pid, "root_server": root_server, "victim": victim.pid}


def assert_answer(run, lab, clients, healthy=True, faulted=()):
    """The answer a user expects: the task succeeded, exactly these clients on their servers, the servers the daemon
    lists, health as it is."""
    assert not run.get("failed"), h.summary(run)
    shown = dict((c["pid"], c["server"]) for c in run["clients"])
    assert shown == clients, "clients shown %s, really %s" % (shown, clients)
    assert sorted(s["pid"] for s in run["servers"]) == sorted(h.servers(lab))
    assert run["health"]["healthy"] is healthy, run["health"]
    assert sorted(run["health"]["faulted_servers"]) == sorted(faulted), run["health"]


@pytest.mark.parametrize("name", sorted(ARGV0))
def test_a_client_name_does_not_change_what_root_reads(lab, procs, intruder, tmp_path, name):
    """mps_info (with fail_unhealthy) and mps_daemon (started, defaults) on a healthy daemon beside one hostile
    client: the right clients, no invented one, healthy."""
    setup = hostile_clients(lab, procs, intruder, [name])
    info = h.run_module("mps_info", common(lab, fail_unhealthy=True), str(tmp_path))
    assert_answer(info, lab, setup["clients"])
    assert setup["victim"] not in [c["pid"] for c in info["clients"]]
    started = h.run_module("mps_daemon", common(lab, default_active_thread_percentage=50), str(tmp_path))
    assert_answer(started, lab, setup["clients"])
    assert h.ctl(lab, "get_default_active_thread_percentage").strip() == "50.0"


def test_every_hostile_name_at_once_then_a_forced_stop(lab, procs, intruder, tmp_path):
    """All the names side by side: mps_info, mps_daemon started, then state=stopped force=true stops the daemon."""
    setup = hostile_clients(lab, procs, intruder, sorted(ARGV0))
    info = h.run_module("mps_info", common(lab, fail_unhealthy=True), str(tmp_path))
    assert_answer(info, lab, setup["clients"])
    started = h.run_module("mps_daemon", common(lab, default_active_thread_percentage=50), str(tmp_path))
    assert_answer(started, lab, setup["clients"])
    stopped = h.run_module("mps_daemon", common(lab, state="stopped", force=True, timeout=5), str(tmp_path))
    assert not stopped.get("failed"), h.summary(stopped)
    assert stopped["changed"]
    assert "Cannot find MPS control daemon process" in h.ctl(lab, "get_server_list")
    # The clients are processes of their users: a stopped daemon does not end them.
    assert all(h.alive(pid) for pid in setup["clients"])


def test_a_server_in_fault_is_reported_as_it_is(lab, procs, intruder, tmp_path):
    """Root's client hits a fatal GPU error beside the hostile clients: health is false, for root's server only,
    fail_unhealthy fails saying so, and a forced stop still works."""
    setup = hostile_clients(lab, procs, intruder, ["forged-row", "not-utf8", "every-python-line-break"])
    h.fault(lab, setup["root_client"])
    assert h.status(lab, setup["root_server"]) == "FAULT"
    info = h.run_module("mps_info", common(lab), str(tmp_path))
    assert_answer(info, lab, setup["clients"], healthy=False, faulted=[setup["root_server"]])
    gate = h.run_module("mps_info", common(lab, fail_unhealthy=True), str(tmp_path))
    assert gate.get("failed") and "FAULT" in gate["msg"] and str(setup["root_server"]) in gate["msg"], h.summary(gate)
    assert "unexpected" not in gate["msg"], h.summary(gate)
    started = h.run_module("mps_daemon", common(lab), str(tmp_path))
    assert_answer(started, lab, setup["clients"], healthy=False, faulted=[setup["root_server"]])
    stopped = h.run_module("mps_daemon", common(lab, state="stopped", force=True, timeout=5), str(tmp_path))
    assert not stopped.get("failed"), h.summary(stopped)
    assert "Cannot find MPS control daemon process" in h.ctl(lab, "get_server_list")


def test_the_collector_counts_the_real_clients(lab, procs, intruder, tmp_path, root_dir):
    setup = hostile_clients(lab, procs, intruder, sorted(ARGV0))
    collector = h.install_collector(os.path.join(root_dir, "metrics"), h.plan_for(lab, str(tmp_path)), timeout=10)
    rc, text, _elapsed = h.run_collector(collector)
    assert rc == 0, text
    found = h.series(collector)
    assert found["gpulab_mps_collector_success"] == 1, text
    assert found["gpulab_mps_healthy"] == 1
    clients = [v for k, v in found.items() if k.startswith("gpulab_mps_clients{")]
    assert sum(clients) == len(setup["clients"]), found


# --- commands any user sends through the control socket --------------------------------------------------------

def commands(lab, daemon):
    """What the intruder sends, by case: each a list of command lines (str or bytes)."""
    return {
        # Odd characters: the daemon logs them verbatim; the readers of control.log must not choke or invent.
        "odd-characters": [b"get_server_list x \x1e\xc3\xa9 \xe6\x97\xa5\xff\xfe",
                           "ps \u00e9\u65e5\u672c \x1c\x1d\x1f\x0b\x0c\x85\u2028",
                           'Unknown command "get_server_list"', "frobnicate"],
        # A whole fake log line after a \x1e: a server that never ran, "exited" without being asked to.
        "forged-exit": ["get_server_list\x1e" + h.log_line(daemon, "Starting new server 4242 for user 0")
                        + "\x1e" + h.log_line(daemon, "Server 4242 exited with status 1") + "\x1e"],
        # A fake restart of the control daemon: a log parser that believes it forgets the real crash before it.
        "forged-daemon-start": ["get_server_list\x1e" + h.log_line(
            daemon, "Starting control daemon using socket %s/control" % lab["pipe"])],
    }


@pytest.mark.parametrize("case", ["odd-characters", "forged-exit", "forged-daemon-start"])
def test_commands_another_user_sends_do_not_change_the_health(lab, procs, intruder, victim, tmp_path, root_dir, case):
    """A server of another user really crashed (killed, no shutdown asked): every reader reports that one exit,
    healthy (a crashed server is reported, not unhealthy by itself), whatever the intruder then sent to the socket;
    and the daemon still stops."""
    daemon = h.start_daemon(lab)
    client = procs.sleeper()
    crashed = h.attach(lab, client.pid, uid=victim["uid"])
    os.kill(crashed, signal.SIGKILL)
    assert h.wait_until(lambda: crashed not in h.servers(lab), 10)
    sent = commands(lab, daemon)[case]
    for line in sent:
        h.control(lab, line, user=intruder)
    with open(os.path.join(lab["log"], "control.log"), "rb") as handle:
        log = handle.read()
    for line in sent:  # logged verbatim, as the H200 does
        assert b"Cmd:" + (line if isinstance(line, bytes) else line.encode()) in log

    def exits(health):
        return sorted(p["server"] for p in health["problems"] if p["kind"] == "server_exited")

    info = h.run_module("mps_info", common(lab, fail_unhealthy=True), str(tmp_path))
    assert not info.get("failed"), h.summary(info)
    assert info["health"]["healthy"] is True and exits(info["health"]) == [crashed], info["health"]
    started = h.run_module("mps_daemon", common(lab, default_active_thread_percentage=50), str(tmp_path))
    assert not started.get("failed"), h.summary(started)
    assert started["health"]["healthy"] is True and exits(started["health"]) == [crashed], started["health"]
    collector = h.install_collector(os.path.join(root_dir, "metrics"), h.plan_for(lab, str(tmp_path)), timeout=10)
    rc, text, _elapsed = h.run_collector(collector)
    assert rc == 0, text
    assert h.series(collector)['gpulab_mps_problems{kind="server_exited"}'] == 1, text
    stopped = h.run_module("mps_daemon", common(lab, state="stopped", force=True, timeout=5), str(tmp_path))
    assert not stopped.get("failed"), h.summary(stopped)
    assert "Cannot find MPS control daemon process" in h.ctl(lab, "get_server_list")
