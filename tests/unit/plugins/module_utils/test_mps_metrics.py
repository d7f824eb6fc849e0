# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The series of _mps_metrics, rendered as Prometheus reads them (generate_latest), from what the H200 recorded while
a server was in FAULT (tests/unit/fixtures/h200-fault): the CLI's answers, server.log, control.log and NVML's
per-process memory. The same readings go through MpsControl.health, so the judgement is _mps_health's."""

from __future__ import annotations

import json
import os
import re
import stat

import pytest

from ansible_collections.gpulab.mps.plugins.module_utils import _mps_control as mc
from ansible_collections.gpulab.mps.plugins.module_utils import _mps_metrics as mm
from ansible_collections.gpulab.mps.plugins.module_utils import _mps_output as out

prometheus_client = pytest.importorskip("prometheus_client")

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "..", "fixtures", "h200-fault")
UUID = "GPU-1d93a817-8cd4-d5f4-f58d-372ceed87f35"
MIB = 1 << 20
PLAN = {"pipe_directory": "/tmp/nvidia-mps", "log_directory": "/var/log/nvidia-mps", "control_binary": "/bin/ctl",
        "daemon": {"state": "started", "devices": {"0": UUID}, "active_thread_percentage": 5.0,
                   "pinned_memory_limit": {"0": 7188 * MIB}},
        "sharing": {"gpus": [{"index": 0, "uuid": UUID, "replicas": 20, "memory_per_replica_mib": 7188}]}}


DOCS = os.path.join(os.path.dirname(__file__), "..", "..", "..", "..", "docs", "metrics.md")
with open(DOCS) as _handle:
    DOCUMENTED = set(re.findall(r"^\| `(gpulab_mps_[a-z_]+)`", _handle.read(), re.MULTILINE))


def fixture(name):
    with open(os.path.join(FIXTURES, name)) as handle:
        return handle.read()


def nvml_processes():
    recorded = json.loads(fixture("sticky-nvml.json"))["processes"]
    return [{"index": 0, "uuid": UUID, "pid": p["pid"], "used_memory_bytes": p["used_mib"] * MIB} for p in recorded]


def render(registry):
    """{(name, frozenset of labels): value}, read back from the exposition text Prometheus scrapes."""
    from prometheus_client.parser import text_string_to_metric_families
    text = prometheus_client.generate_latest(registry).decode()
    return dict(((sample.name, frozenset(sample.labels.items())), sample.value)
                for family in text_string_to_metric_families(text) for sample in family.samples)


def sample(name, **labels):
    return (name, frozenset(labels.items()))


def names(samples):
    return set(name for name, _labels in samples)


@pytest.fixture
def fault_reading(tmp_path, daemon_process, cli_answers):
    """MpsControl.health over the CLI answers, server.log and control.log the H200 gave while server 492 was in FAULT."""
    pipe, log = tmp_path / "pipe", tmp_path / "log"
    daemon_process(pipe)
    log.mkdir()
    (log / "server.log").write_text(fixture("sticky-server.log").split("MPS server requesting")[0])
    (log / "control.log").write_text(fixture("sticky-control.filtered.log").split("Cmd:quit")[0])
    answers = dict(json.loads(fixture("sticky-cli.json"))["fault"])
    answers.update({"get_default_active_thread_percentage": [0, "5.0"], "get_default_device_pinned_mem_limit 0":
                    [0, "7G"], "get_active_thread_percentage 492": [0, "100.0"],
                    "get_device_pinned_mem_limit 492 0": [0, ""]})
    cli_answers(answers)
    control = mc.MpsControl("/bin/ctl", str(pipe), str(log))
    state, health = control.health([0])
    # The daemon of the recording was PID 446 (control.log says so); the stand-in process here has another PID.
    state["pid"] = 446
    return state, health, out.parse_control_log(control.read_log("control.log"))


def test_the_recorded_fault_as_series(fault_reading):
    state, health, control_log = fault_reading
    found = render(mm.build_registry(state, health, control_log, PLAN, nvml_processes(), now=1000.0, duration=0.25))
    dev = {"device": "0", "uuid": UUID}
    expected = {
        sample("gpulab_mps_control_daemon_up"): 1,
        sample("gpulab_mps_daemon_state", state="running"): 1,
        sample("gpulab_mps_daemon_state", state="died"): 0,
        sample("gpulab_mps_healthy"): 0,
        sample("gpulab_mps_problems", kind="server_fault"): 1,
        sample("gpulab_mps_problems", kind="daemon_died"): 0,
        sample("gpulab_mps_server_info", server="492", uid="0"): 1,
        sample("gpulab_mps_server_status", server="492", status="FAULT"): 1,
        sample("gpulab_mps_server_fault", server="492"): 1,
        sample("gpulab_mps_server_clients", server="492"): 2,
        # The server logged 100 % at its start: that is what it runs with, whatever the default says now.
        sample("gpulab_mps_server_active_thread_percentage", server="492"): 100,
        sample("gpulab_mps_clients", **dev): 2,
        # NVML listed each MPS client with its own memory on driver 580 (the server's 66 MiB is not a client's).
        sample("gpulab_mps_client_memory_bytes", pid="449", server="492", **dev): 520 * MIB,
        sample("gpulab_mps_client_memory_bytes", pid="637", server="492", **dev): 518 * MIB,
        sample("gpulab_mps_default_active_thread_percentage"): 5,
        # The CLI's read-back of 7188M, rounded down to whole G; _plan.defaults_gaps counts it as the plan's value.
        sample("gpulab_mps_default_pinned_memory_limit_bytes", **dev): 7 << 30,
        sample("gpulab_mps_limits_as_planned"): 1,
        sample("gpulab_mps_planned_active_thread_percentage"): 5,
        sample("gpulab_mps_planned_replicas", **dev): 20,
        sample("gpulab_mps_planned_pinned_memory_limit_bytes", **dev): 7188 * MIB,
        sample("gpulab_mps_collector_success"): 1,
        sample("gpulab_mps_collector_last_success_timestamp_seconds"): 1000,
        sample("gpulab_mps_collector_duration_seconds"): 0.25,
    }
    assert dict((k, found.get(k)) for k in expected) == expected
    assert not [k for k in found if ("pid", "492") in k[1]]
    # Only the series docs/metrics.md lists.
    assert names(found) == DOCUMENTED - {"gpulab_mps_server_pinned_memory_limit_bytes"}


@pytest.mark.parametrize("shown, as_planned", [("7G", 1), ("4G", 0), ("", 0)])
def test_limits_as_planned_is_the_plans_judgement(fault_reading, shown, as_planned):
    state, health, control_log = fault_reading
    state = dict(state, defaults={"active_thread_percentage": 5.0, "pinned_memory_limit": {"0": shown or None}})
    found = render(mm.build_registry(state, health, control_log, PLAN))
    assert found[sample("gpulab_mps_limits_as_planned")] == as_planned
    # The exact value mps_daemon recorded replaces the rounded read-back (with_exact_limits, as the collector does).
    exact = dict(state, defaults=mc.with_exact_limits(state["defaults"], {0: 7188 * MIB}))
    assert render(mm.build_registry(exact, health, control_log, PLAN)).get(
        sample("gpulab_mps_default_pinned_memory_limit_bytes", device="0", uuid=UUID)) == (
        7188 * MIB if shown == "7G" else (4 << 30 if shown else None))


def test_a_daemon_that_died_has_no_server_series_and_no_limits_verdict():
    from ansible_collections.gpulab.mps.plugins.module_utils._mps_health import assess
    state = {"running": False, "pid": None, "pipe_directory": "/tmp/nvidia-mps", "servers": [], "clients": [],
             "defaults": {"active_thread_percentage": None, "pinned_memory_limit": {}},
             "leftovers": {"pid_file": True, "log_fifo": True}}
    found = render(mm.build_registry(state, assess(state), None, PLAN, None, errors=("nvml",), last_success=900.0))
    expected = {sample("gpulab_mps_control_daemon_up"): 0, sample("gpulab_mps_daemon_state", state="died"): 1,
                sample("gpulab_mps_problems", kind="daemon_died"): 1, sample("gpulab_mps_collector_error", source="nvml"): 1,
                sample("gpulab_mps_collector_success"): 0,
                sample("gpulab_mps_collector_last_success_timestamp_seconds"): 900,
                sample("gpulab_mps_clients", device="0", uuid=UUID): 0}
    assert dict((k, found.get(k)) for k in expected) == expected
    absent = ("gpulab_mps_server_", "gpulab_mps_limits_as_planned", "gpulab_mps_default_")
    assert not [n for n in names(found) if n.startswith(absent)]


def test_every_series_is_documented():
    # A run that fails to read the daemon writes only the collector's own series, all documented too.
    assert names(render(mm.failure_registry("control", 1.0, 0.1))) <= DOCUMENTED


def test_the_textfile_is_written_atomically_and_only_in_a_trusted_directory(tmp_path):
    good = tmp_path / "textfile"
    good.mkdir(mode=0o755)
    textfile = mm.Textfile(str(good))
    textfile.write(mm.failure_registry("control", 1000.0, 0.5, last_success=900.0))
    assert mm.previous_success(textfile.read()) == 900.0
    textfile.close()
    assert os.listdir(str(good)) == ["gpulab_mps.prom"]  # no temporary file left
    assert stat.S_IMODE(os.stat(str(good / "gpulab_mps.prom")).st_mode) == 0o644
    loose = tmp_path / "loose"
    loose.mkdir()
    os.chmod(str(loose), 0o777)
    with pytest.raises(mm.MetricsError, match="writable by nobody else"):
        mm.Textfile(str(loose))
    (tmp_path / "link").symlink_to(good)
    with pytest.raises(mm.MetricsError, match="not a link"):
        mm.Textfile(str(tmp_path / "link"))


def test_role_pins_the_collectors_packages_as_requirements_txt():
    root = os.path.join(os.path.dirname(__file__), "..", "..", "..", "..")
    import yaml
    with open(os.path.join(root, "roles", "mps_metrics", "vars", "main.yml")) as handle:
        pinned = yaml.safe_load(handle)["__mps_metrics_pip_packages"]
    with open(os.path.join(root, "requirements.txt")) as handle:
        requirements = set(line.strip() for line in handle if "==" in line)
    assert pinned and set(pinned) <= requirements
