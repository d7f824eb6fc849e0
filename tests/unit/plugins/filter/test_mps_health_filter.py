# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""mps_health_summary: the sentence of _mps_health.summary for a playbook, and a clear error on anything else."""

from __future__ import annotations

import pytest

from ansible.errors import AnsibleFilterError

from ansible_collections.gpulab.mps.plugins.filter import mps_health
from ansible_collections.gpulab.mps.plugins.module_utils import _mps_health

FAULT_STATE = {"running": True, "pid": 446, "pipe_directory": "/tmp/nvidia-mps",
               "servers": [{"pid": 492, "status": "FAULT", "clients": [449, 637]}]}


def test_the_gate_says_what_mps_info_says():
    found = _mps_health.assess(FAULT_STATE)
    summary = mps_health.FilterModule().filters()["mps_health_summary"]
    assert summary(found) == _mps_health.summary(found)
    assert "What to do:" in summary(found)


def test_not_a_health_is_a_filter_error():
    with pytest.raises(AnsibleFilterError, match="expected the health"):
        mps_health.mps_health_summary({"running": True})
