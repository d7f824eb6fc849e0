# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""_unit_files and the filters of the collection's files (mps_metrics_units, mps_plan_file): rendered from checked
values only. The daemon's unit itself is tested through mps_unit (tests/unit/plugins/modules/test_mps_unit.py)."""

from __future__ import annotations

import json

import pytest

from ansible.errors import AnsibleFilterError
from ansible_collections.gpulab.mps.plugins.filter import mps_files as filters
from ansible_collections.gpulab.mps.plugins.module_utils import _plan, _unit_files
from ansible_collections.gpulab.mps.plugins.module_utils._formats import FormatError

LIB = "/usr/local/lib/gpulab-mps"
UNITS = ("/etc/systemd/system", "gpulab-mps-metrics", LIB + "/venv/bin/python", LIB + "/gpulab_mps_metrics.py",
         "/etc/gpulab-mps/metrics.json", LIB, 15, 10)


def test_the_metrics_units_call_the_collector_with_checked_paths():
    service, timer = filters.mps_metrics_units(*UNITS)
    assert service["path"] == "/etc/systemd/system/gpulab-mps-metrics.service"
    assert timer["path"] == "/etc/systemd/system/gpulab-mps-metrics.timer"
    assert service["content"].startswith(_unit_files.MARKER) and timer["content"].startswith(_unit_files.MARKER)
    lines = service["content"].splitlines()
    assert "ExecStart=%s/venv/bin/python -I %s/gpulab_mps_metrics.py --config /etc/gpulab-mps/metrics.json --lib %s" % (
        LIB, LIB, LIB) in lines
    assert "TimeoutStartSec=80" in lines and "SuccessExitStatus=1" in lines and "Type=oneshot" in lines
    assert "OnUnitActiveSec=15s" in timer["content"].splitlines()


@pytest.mark.parametrize("position, value", [
    (1, "gpulab-mps-metrics\nExecStartPre=/bin/sh -c id"), (1, "../escape"), (2, "/usr/bin/python3 -c id"),
    (4, "/etc/gpulab-mps/metrics.json\n"), (0, "relative/system"), (5, "/usr/local/lib/%h"), (6, 1), (7, 0),
    (6, "fifteen")])
def test_a_value_no_unit_can_carry_is_refused_by_the_filter(position, value):
    args = list(UNITS)
    args[position] = value
    with pytest.raises(AnsibleFilterError, match="mps_metrics_units"):
        filters.mps_metrics_units(*args)


def test_the_daemon_files_refuse_a_plan_without_the_collections_directories():
    with pytest.raises(FormatError, match="the plan has no files.unit_directory"):
        _unit_files.daemon_paths({"daemon": {"service_name": "nvidia-mps"}, "files": {}})


def test_the_plan_file_leaves_out_the_memory_in_use_and_sorts_its_keys():
    plan = {"version": _plan.PLAN_VERSION, "owner": "host", "control_binary": "/usr/bin/nvidia-cuda-mps-control",
            "pipe_directory": "/run/nvidia-mps", "log_directory": "/var/log/nvidia-mps", "state_directory": "/var/lib/x",
            "daemon": {"state": "started"},
            "gpus": [{"index": 0, "uuid": "GPU-1", "memory_total_bytes": 10, "memory_used_bytes": 3,
                      "memory_free_bytes": 7, "memory_used_mib": 0, "memory_free_mib": 0}]}
    text = filters.mps_plan_file(plan)
    assert json.loads(text)["gpus"] == [{"index": 0, "uuid": "GPU-1", "memory_total_bytes": 10}]
    busier = dict(plan, gpus=[dict(plan["gpus"][0], memory_used_bytes=9, memory_free_bytes=1)])
    assert filters.mps_plan_file(busier) == text and text.endswith("}\n") and text.index('"control_binary"') < \
        text.index('"daemon"')
    with pytest.raises(AnsibleFilterError, match="plan has no"):
        filters.mps_plan_file({"version": 2})
