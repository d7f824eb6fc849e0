# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A REAL Prometheus scrapes the MPS metrics of a host with the stand-in control daemon (`make metrics`).

The collector runs as its systemd unit runs it: gpulab_mps_metrics.py with the layout the mps_client role installs (the
module_utils listed in roles/mps_client/vars/main.yml, under ansible_collections/gpulab/mps), the plan file it writes
(filter mps_plan_file) and the configuration file the mps_metrics role writes. A real node_exporter (textfile collector
only) serves the file and a real
Prometheus scrapes it every second, on loopback; each state of the daemon is then asserted through Prometheus's HTTP
API: no daemon, an idle server, clients, a server in FAULT (the stand-in logs it as the H200 did), a daemon killed
with its pid file left behind, and a collector that cannot run the control binary.

Needs Debian's prometheus and prometheus-node-exporter: without them the test is skipped, or FAILS with
REQUIRE_PROMETHEUS=1 (.ci/run sets it). The stand-in's hidden hooks (standin_attach_client, standin_fault) are used.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import pytest
import yaml

from ansible_collections.gpulab.mps.plugins.module_utils._plan import PLAN_VERSION, plan_file_text

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
STANDINS = os.path.join(ROOT, "tests", "standins")
ROLE = os.path.join(ROOT, "roles", "mps_metrics")
CLIENT = os.path.join(ROOT, "roles", "mps_client")
UUID = "GPU-058fcf08-fc4a-49f5-ddd9-6d7fedc642b2"   # the stand-in's GPU 0 (the recorded H100)
GIB = 1 << 30
WAIT = 20  # seconds any one thing may take (a start, a scrape)


def _binary(*names):
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    return None


PROMETHEUS = _binary("prometheus")
NODE_EXPORTER = _binary("prometheus-node-exporter", "node_exporter")
if not (PROMETHEUS and NODE_EXPORTER):
    MISSING = "prometheus and prometheus-node-exporter are not installed (apt-get install prometheus " \
              "prometheus-node-exporter): the metrics are not scraped"
    if os.environ.get("REQUIRE_PROMETHEUS") == "1":
        raise RuntimeError("REQUIRE_PROMETHEUS=1: " + MISSING)
    pytestmark = pytest.mark.skip(reason=MISSING)


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def get(url, timeout=5):
    with urllib.request.urlopen(url, timeout=timeout) as answer:
        return answer.read().decode()


def wait_for(predicate, what, timeout=WAIT, interval=0.2):
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        try:
            last = predicate()
            if last:
                return last
        except (OSError, AssertionError) as error:  # not listening, or not scraped, yet
            last = error
        time.sleep(interval)
    raise AssertionError("%s: not within %d s (last: %r)" % (what, timeout, last))


class Service(object):
    """A process of the test, stopped by its own PID at the end."""

    def __init__(self, argv, log):
        self.log = log
        self.proc = subprocess.Popen(argv, stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def tail(self):
        with open(self.log) as handle:
            return handle.read()[-3000:]


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    """The host: the stand-in binary, the installed collector, a textfile directory, node_exporter and Prometheus."""
    base = tmp_path_factory.mktemp("metrics")
    os.chmod(str(base), 0o755)
    for name in ("bin", "lib", "etc", "textfile", "state", "tsdb"):
        (base / name).mkdir(mode=0o755)
    control = base / "bin" / "nvidia-cuda-mps-control"
    control.write_text('#!/bin/sh\nexec "%s" "%s" "$@"\n' % (sys.executable, os.path.join(STANDINS, control.name)))
    control.chmod(0o755)
    # The layout the role mps_client installs, from its own list of files.
    with open(os.path.join(CLIENT, "vars", "main.yml")) as handle:
        files = yaml.safe_load(handle)["__mps_client_module_utils"]
    module_utils = base / "lib" / "ansible_collections" / "gpulab" / "mps" / "plugins" / "module_utils"
    module_utils.mkdir(parents=True)
    for name in files:
        shutil.copy(os.path.join(ROOT, "plugins", "module_utils", name), str(module_utils / name))
    shutil.copy(os.path.join(ROLE, "files", "gpulab_mps_metrics.py"), str(base / "lib" / "gpulab_mps_metrics.py"))
    plan = {"version": PLAN_VERSION, "owner": "host", "control_binary": str(control),
            "pipe_directory": str(base / "pipe"), "log_directory": str(base / "log"), "state_directory": str(base / "state"),
            "daemon": {"state": "started", "devices": {"0": UUID}, "active_thread_percentage": 25.0,
                       "pinned_memory_limit": {"0": 2 * GIB}},
            "sharing": {"gpus": [{"index": 0, "uuid": UUID, "replicas": 4, "memory_per_replica_mib": 20389}]}}
    (base / "etc" / "plan.json").write_text(plan_file_text(plan))
    config = base / "etc" / "metrics.json"
    config.write_text(json.dumps({"textfile_directory": str(base / "textfile"), "timeout": 5,
                                  "plan_file": str(base / "etc" / "plan.json")}))
    ports = {"node": free_port(), "prometheus": free_port()}
    (base / "prometheus.yml").write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [{"job_name": "node", "static_configs": [{"targets": ["127.0.0.1:%d" % ports["node"]]}]}]}))
    env = {"PATH": "%s:/usr/bin:/bin" % (base / "bin"), "CUDA_MPS_PIPE_DIRECTORY": plan["pipe_directory"],
           "CUDA_MPS_LOG_DIRECTORY": plan["log_directory"]}
    services = []
    state = {"base": base, "env": env, "config": str(config), "ports": ports, "control": str(control),
             "sleepers": [], "servers": set()}
    try:
        services.append(Service([NODE_EXPORTER, "--collector.disable-defaults", "--collector.textfile",
                                 "--collector.textfile.directory=%s" % (base / "textfile"),
                                 "--web.listen-address=127.0.0.1:%d" % ports["node"]], str(base / "node.log")))
        services.append(Service([PROMETHEUS, "--config.file=%s" % (base / "prometheus.yml"),
                                 "--storage.tsdb.path=%s" % (base / "tsdb"),
                                 "--web.listen-address=127.0.0.1:%d" % ports["prometheus"]],
                                str(base / "prometheus.log")))
        for service, url in zip(services, ("http://127.0.0.1:%d/metrics" % ports["node"],
                                           "http://127.0.0.1:%d/-/ready" % ports["prometheus"])):
            try:
                wait_for(lambda: get(url), "%s answers" % url)
            except AssertionError:
                raise AssertionError("%s did not start: %s" % (service.proc.args[0], service.tail()))
        yield state
    finally:
        ctl(state, "quit -t 1")
        for pid in state["sleepers"]:
            _kill(pid)
        for pid in state["servers"]:  # a killed stand-in daemon leaves its servers' processes behind
            if _comm(pid) == "nvidia-cuda-mps":
                _kill(pid)
        for service in services:
            service.stop()


def _comm(pid):
    try:
        with open("/proc/%d/comm" % pid) as handle:
            return handle.read().strip()
    except OSError:
        return None


def _kill(pid):
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:
        pass


def ctl(host, commands, argv=()):
    result = subprocess.run([host["control"]] + list(argv), input=commands + "\n", env=host["env"],
                            capture_output=True, text=True, timeout=WAIT, check=False)
    return result.returncode, result.stdout


def collect(host, config=None):
    """Run the collector as the unit does; wait until Prometheus has scraped what it wrote. Returns its exit code."""
    env = dict(host["env"], PYTHONPATH=STANDINS)  # the stand-in pynvml: no GPU here
    result = subprocess.run([sys.executable, str(host["base"] / "lib" / "gpulab_mps_metrics.py"),
                             "--config", config or host["config"]], env=env, capture_output=True, text=True,
                            timeout=WAIT, check=False)
    with open(str(host["base"] / "textfile" / "gpulab_mps.prom")) as handle:
        written = [line for line in handle if line.startswith("gpulab_mps_collector_duration_seconds ")]
    duration = float(written[0].split()[1])
    # The duration differs from run to run: once Prometheus holds this one, it holds everything the run wrote.
    wait_for(lambda: abs(value(host, "gpulab_mps_collector_duration_seconds") - duration) < 1e-9,
             "Prometheus scrapes the new file (collector: %s %s)" % (result.stdout, result.stderr))
    return result.returncode, result.stdout + result.stderr


def query(host, expr):
    """{frozenset of (label, value) without __name__/job/instance: float} of an instant query."""
    url = "http://127.0.0.1:%d/api/v1/query?%s" % (host["ports"]["prometheus"], urllib.parse.urlencode({"query": expr}))
    answer = json.loads(get(url))
    assert answer["status"] == "success", answer
    return dict((frozenset((k, v) for k, v in r["metric"].items() if k not in ("__name__", "job", "instance")),
                 float(r["value"][1])) for r in answer["data"]["result"])


def value(host, expr, **labels):
    found = query(host, expr)
    key = frozenset(labels.items())
    if key not in found:
        raise AssertionError("%s%r: not in %r" % (expr, labels, found))
    return found[key]


def series(host, name):
    return dict((tuple(sorted(k)), v) for k, v in query(host, name).items())


def one_hot(host):
    return dict((dict(k)["state"], v) for k, v in query(host, "gpulab_mps_daemon_state").items())


def problems(host):
    return dict((dict(k)["kind"], v) for k, v in query(host, "gpulab_mps_problems").items())


NO_PROBLEM = {"daemon_not_running": 0, "daemon_died": 0, "daemon_unresponsive": 0, "server_fault": 0,
              "server_exited": 0, "client_waiting": 0}


def test_states_as_prometheus_sees_them(host):
    # 1. No daemon: down, stopped, one problem; the plan is there beside it; the collector itself succeeded.
    rc, out = collect(host)
    assert rc == 0, out
    assert value(host, "gpulab_mps_control_daemon_up") == 0
    assert one_hot(host) == {"running": 0, "stopped": 1, "died": 0, "unresponsive": 0}
    assert problems(host) == dict(NO_PROBLEM, daemon_not_running=1)
    assert value(host, "gpulab_mps_healthy") == 0 and value(host, "gpulab_mps_daemon_expected") == 1
    assert value(host, "gpulab_mps_planned_replicas", device="0", uuid=UUID) == 4
    assert value(host, "gpulab_mps_planned_pinned_memory_limit_bytes", device="0", uuid=UUID) == 2 * GIB
    assert value(host, "gpulab_mps_planned_active_thread_percentage") == 25
    assert query(host, "gpulab_mps_limits_as_planned") == {}  # unknown while no daemon runs
    assert query(host, "gpulab_mps_server_status") == {}
    assert value(host, "gpulab_mps_collector_success") == 1
    assert abs(value(host, "gpulab_mps_collector_last_success_timestamp_seconds") - time.time()) < 30
    assert value(host, "node_textfile_scrape_error") == 0
    # node_exporter's own freshness of the file, what a stale-collector alert reads.
    assert any("gpulab_mps.prom" in dict(k)["file"] for k in query(host, "node_textfile_mtime_seconds"))

    # 2. The daemon with the planned defaults and an idle server.
    assert ctl(host, "", ["-d"])[0] == 0
    ctl(host, "set_default_active_thread_percentage 25\nset_default_device_pinned_mem_limit 0 2G\nstart_server -uid 0")
    rc, out = collect(host)
    assert rc == 0, out
    assert value(host, "gpulab_mps_control_daemon_up") == 1
    assert one_hot(host) == {"running": 1, "stopped": 0, "died": 0, "unresponsive": 0}
    assert problems(host) == NO_PROBLEM and value(host, "gpulab_mps_healthy") == 1
    ((labels, up),) = series(host, "gpulab_mps_server_status").items()
    server = dict(labels)["server"]
    host["servers"].add(int(server))
    assert (dict(labels)["status"], up) == ("ACTIVE", 1)
    assert value(host, "gpulab_mps_server_info", server=server, uid="0") == 1
    assert value(host, "gpulab_mps_server_clients", server=server) == 0
    assert value(host, "gpulab_mps_server_fault", server=server) == 0
    assert value(host, "gpulab_mps_server_active_thread_percentage", server=server) == 25
    assert value(host, "gpulab_mps_clients", device="0", uuid=UUID) == 0
    assert value(host, "gpulab_mps_default_active_thread_percentage") == 25
    assert value(host, "gpulab_mps_default_pinned_memory_limit_bytes", device="0", uuid=UUID) == 2 * GIB
    assert value(host, "gpulab_mps_limits_as_planned") == 1

    # 3. Two clients (sleeping processes the stand-in counts as clients), and a default changed off the plan.
    for _client in range(2):
        sleeper = subprocess.Popen(["sleep", "120"])
        host["sleepers"].append(sleeper.pid)
        assert ctl(host, "standin_attach_client %d" % sleeper.pid)[1] == ""
    ctl(host, "set_default_active_thread_percentage 50")
    rc, out = collect(host)
    assert rc == 0, out
    assert value(host, "gpulab_mps_server_clients", server=server) == 2
    assert value(host, "gpulab_mps_clients", device="0", uuid=UUID) == 2
    assert value(host, "gpulab_mps_default_active_thread_percentage") == 50
    assert value(host, "gpulab_mps_server_active_thread_percentage", server=server) == 25  # it keeps what it took
    assert value(host, "gpulab_mps_limits_as_planned") == 0
    assert problems(host) == NO_PROBLEM

    # 4. A client hits a fatal GPU error: the server is in FAULT while its clients live.
    assert ctl(host, "standin_fault %d" % host["sleepers"][0])[1] == ""
    rc, out = collect(host)
    assert rc == 0, out
    assert series(host, "gpulab_mps_server_status") == {(("server", server), ("status", "FAULT")): 1}
    assert value(host, "gpulab_mps_server_fault", server=server) == 1
    assert problems(host) == dict(NO_PROBLEM, server_fault=1)
    assert value(host, "gpulab_mps_healthy") == 0 and value(host, "gpulab_mps_control_daemon_up") == 1
    # Its clients exit: ACTIVE again, same server.
    for pid in host["sleepers"]:
        _kill(pid)
        os.waitpid(pid, 0)
    rc, out = collect(host)
    assert series(host, "gpulab_mps_server_status") == {(("server", server), ("status", "ACTIVE")): 1}
    assert value(host, "gpulab_mps_server_fault", server=server) == 0 and problems(host) == NO_PROBLEM

    # 5. The daemon is killed: its pid file and fifo stay, so it died (not stopped); its servers are gone.
    with open(str(host["base"] / "pipe" / "nvidia-cuda-mps-control.pid")) as handle:
        daemon = int(handle.read())
    os.kill(daemon, signal.SIGKILL)
    wait_for(lambda: ctl(host, "get_server_list")[0] == 1, "the killed daemon stops answering")
    for pid in host["servers"]:  # the real servers go with their daemon; the stand-in's must be ended by hand
        if _comm(pid) == "nvidia-cuda-mps":
            _kill(pid)
    rc, out = collect(host)
    assert rc == 0, out
    assert value(host, "gpulab_mps_control_daemon_up") == 0
    assert one_hot(host) == {"running": 0, "stopped": 0, "died": 1, "unresponsive": 0}
    assert problems(host) == dict(NO_PROBLEM, daemon_died=1)
    assert query(host, "gpulab_mps_server_status") == {} and query(host, "gpulab_mps_limits_as_planned") == {}
    last = value(host, "gpulab_mps_collector_last_success_timestamp_seconds")

    # 6. The collector cannot run the control binary: it says so, and keeps the time of its last success.
    with open(host["config"]) as handle:
        config = json.load(handle)
    with open(config["plan_file"]) as handle:
        plan = json.load(handle)
    plan["control_binary"] = str(host["base"] / "bin" / "missing-binary")
    (host["base"] / "etc" / "broken-plan.json").write_text(plan_file_text(plan))
    config["plan_file"] = str(host["base"] / "etc" / "broken-plan.json")
    broken = host["base"] / "etc" / "broken.json"
    broken.write_text(json.dumps(config))
    rc, out = collect(host, str(broken))
    assert rc == 1 and "cannot read the MPS control daemon" in out, out
    assert value(host, "gpulab_mps_collector_success") == 0
    assert value(host, "gpulab_mps_collector_error", source="control") == 1
    assert value(host, "gpulab_mps_collector_last_success_timestamp_seconds") == last
    assert query(host, "gpulab_mps_control_daemon_up") == {}  # unknown, not 0: the alerts on staleness fire
