# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""mps_plan: NVML read once (the recorded H100's stand-in), the control binary found, every setting named."""

from __future__ import annotations

import pytest

from ansible_collections.gpulab.mps.plugins.modules import mps_plan


@pytest.fixture
def binary(tmp_path):
    """A control binary with another file name than NVIDIA's."""
    path = tmp_path / "mps-control-560"
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(0o755)
    return str(path)


@pytest.mark.parametrize("check_mode", [True, False])
def test_a_plan_of_the_recorded_h100(run_module, standin_nvml, binary, check_mode):
    result, failed = run_module(mps_plan, {"control_binary": binary, "default_pinned_memory_limit": "1536M",
                                           "sharing": {"replicas": 20}}, check_mode=check_mode)
    assert not failed, result.get("msg")
    assert not result["changed"]
    plan = result["plan"]
    assert plan["control_binary"] == binary
    assert plan["driver"]["driver_version"] == "580.159.04"
    assert [g["uuid"] for g in plan["gpus"]] == ["GPU-058fcf08-fc4a-49f5-ddd9-6d7fedc642b2"]
    assert plan["daemon"]["pinned_memory_limit_mps"] == {"0": "1536M"}
    assert plan["sharing"]["gpus"][0]["memory_per_replica_mib"] == 81559 // 20


def test_a_control_binary_with_another_name_is_used_as_given(run_module, standin_nvml, binary):
    """Regression: preflight looked for nvidia-cuda-mps-control in the directory of the binary it was given,
    so a binary of another file name was reported missing."""
    result, failed = run_module(mps_plan, {"control_binary": binary})
    assert not failed and result["plan"]["control_binary"] == binary


def test_a_missing_binary_and_a_bad_setting_are_both_named(run_module, standin_nvml, tmp_path):
    result, failed = run_module(mps_plan, {"binary_directories": [str(tmp_path)]})
    assert failed and result["msg"].startswith("This host cannot run MPS: nvidia-cuda-mps-control was not found")
    result, failed = run_module(mps_plan, {"control_binary": str(tmp_path / "none")})
    assert failed and "will not be run" in result["msg"] and "No such file" in result["msg"]


def test_settings_are_checked_before_anything(run_module, standin_nvml, binary):
    result, failed = run_module(mps_plan, {"control_binary": binary, "default_active_thread_percentage": 150,
                                           "default_pinned_memory_limit": "lots", "pipe_directory": "relative"})
    assert failed and result["msg"].startswith("Invalid MPS settings, nothing was changed: ")
    assert len(result["errors"]) == 3, result["errors"]


def test_no_driver_is_said_plainly(run_module, standin_nvml, binary, monkeypatch):
    monkeypatch.setenv("GPULAB_STANDIN_NVML", "driver-not-loaded")
    result, failed = run_module(mps_plan, {"control_binary": binary})
    assert failed and "the NVIDIA kernel driver is not loaded" in result["msg"]


def test_the_plan_carries_the_default_qos_classes(run_module, standin_nvml, binary):
    result, failed = run_module(mps_plan, {"control_binary": binary})
    assert not failed, result.get("msg")
    qos = result["plan"]["qos"]
    assert sorted(qos["classes"]) == ["batch", "latency"]
    assert qos["classes"]["batch"]["env_file_environment"] == {
        "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": "12", "CUDA_MPS_CLIENT_PRIORITY": "1",
        "CUDA_MPS_PIPE_DIRECTORY": "/tmp/nvidia-mps"}
    # The device plugin owns MPS: a host client has no host daemon to reach, the file names no pipe directory.
    result, failed = run_module(mps_plan, {"control_binary": binary, "owner": "plugin"})
    assert not failed and "CUDA_MPS_PIPE_DIRECTORY" not in result["plan"]["qos"]["classes"]["batch"][
        "env_file_environment"]


def test_qos_and_daemon_settings_are_named_together(run_module, standin_nvml, binary):
    """A bad class and a bad daemon setting in one message, before anything changes."""
    result, failed = run_module(mps_plan, {"control_binary": binary, "default_pinned_memory_limit": "lots",
                                           "qos_classes": {"batch": {"client_priority": 7}}})
    assert failed and result["msg"].startswith("Invalid MPS settings, nothing was changed: ")
    assert [e.split(":")[0] for e in result["errors"]] == [
        "default_pinned_memory_limit", "qos_classes.batch.client_priority must be 0 (normal) or 1 (below normal), got 7"]


def test_a_class_above_the_daemon_default_fails_the_plan(run_module, standin_nvml, binary):
    result, failed = run_module(mps_plan, {"control_binary": binary, "default_active_thread_percentage": 10,
                                           "qos_classes": {"batch": {"active_thread_percentage": 12}}})
    assert failed and "qos_classes.batch.active_thread_percentage 12 is above the daemon's" in result["msg"]


def test_the_default_batch_class_takes_a_smaller_replicas_share(run_module, standin_nvml, binary):
    """The replicas' share (5 % for 20 replicas) is below the default batch class (12 %), which nobody declared: the
    plan does not fail, the class takes 5 % and says so."""
    result, failed = run_module(mps_plan, {"control_binary": binary, "sharing": {"replicas": 20}, "kubernetes": "true"})
    assert not failed, result.get("msg")
    assert result["plan"]["qos"]["classes"]["batch"]["active_thread_percentage"] == 5.0
    assert any("a default class" in w for w in result["warnings"])
    result, failed = run_module(mps_plan, {"control_binary": binary, "default_active_thread_percentage": 10,
                                           "qos_classes": {"batch": {"active_thread_percentage": 10}}})
    assert not failed and sorted(result["plan"]["qos"]["classes"]) == ["batch"]


def test_the_multiuser_server_is_planned(run_module, standin_nvml, binary):
    """The default is the multi-user server (issue 21: without -M a second user's client waited, silently, until the
    first user's had exited, on the H200); one server per user stays one setting away."""
    result, failed = run_module(mps_plan, {"control_binary": binary, "multiuser_server": False})
    assert not failed and result["plan"]["daemon"]["multiuser_server"] is False
    assert "waits, silently" in result["plan"]["daemon"]["users_rule"]
    assert run_module(mps_plan, {"control_binary": binary})[0]["plan"]["daemon"]["multiuser_server"] is True
