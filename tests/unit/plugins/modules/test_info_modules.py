# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""driver_check, gpu_info and mps_info: read-only modules, over recorded H100 output."""

from __future__ import annotations

import pytest

from ansible_collections.gpulab.mps.plugins.modules import driver_check, gpu_info, mps_info
from conftest import transcript_output, transcript_text


@pytest.mark.parametrize("check_mode", [True, False])
def test_driver_check_passes_on_the_h100(run_module, standin_nvml, check_mode):
    result, failed = run_module(driver_check, {}, check_mode=check_mode)
    assert not failed and not result["changed"]
    assert (result["driver_version"], result["driver_branch"], result["cuda_driver_version"]) == ("580.159.04", 580, "13.0")


@pytest.mark.parametrize("minimum", ["590", "580.200"])
def test_driver_check_refuses_an_older_driver(run_module, standin_nvml, minimum):
    result, failed = run_module(driver_check, {"min_version": minimum})
    assert failed
    assert result["msg"].startswith("NVIDIA driver 580.159.04 is older than %s" % minimum)
    assert "Upgrade the driver" in result["msg"]


def test_driver_check_refuses_a_bad_minimum(run_module, standin_nvml):
    result, failed = run_module(driver_check, {"min_version": "latest"})
    assert failed and result["msg"] == "min_version: 'latest' is not a driver version such as 550 or 580.159.04"


@pytest.mark.parametrize("mode, text", [
    ("library-not-found", "Cannot read the GPUs through NVML: the NVIDIA driver is not installed"),
    ("driver-not-loaded", "the NVIDIA kernel driver is not loaded. Load it"),
])
def test_driver_check_without_a_driver(run_module, standin_nvml, monkeypatch, mode, text):
    monkeypatch.setenv("GPULAB_STANDIN_NVML", mode)
    result, failed = run_module(driver_check, {})
    assert failed and text in result["msg"]


def test_driver_check_without_the_nvml_binding(run_module, monkeypatch):
    from ansible_collections.gpulab.mps.plugins.module_utils import _common
    monkeypatch.setattr(_common, "HAS_PYNVML", False)
    result, failed = run_module(driver_check, {})
    assert failed and "nvidia-ml-py" in result["msg"]


def test_gpu_info_with_replicas(run_module, standin_nvml):
    result, failed = run_module(gpu_info, {"replicas": 4})
    assert not failed and not result["changed"]
    assert result["gpu_count"] == 1
    gpu = result["gpus"][0]
    # nvidia-smi on the same H100: 81559 MiB total (28_nvidia_smi_query.txt).
    assert "81559 MiB" in transcript_output("28_nvidia_smi_query.txt")[0]
    assert (gpu["memory_total_mib"], gpu["memory_per_replica_mib"], gpu["replicas_within_cap"]) == (81559, 20389, True)
    assert gpu["uuid"] == "GPU-058fcf08-fc4a-49f5-ddd9-6d7fedc642b2"


def test_gpu_info_warns_above_the_client_cap(run_module, standin_nvml):
    result, failed = run_module(gpu_info, {"replicas": 64})
    assert not failed
    assert result["gpus"][0]["replicas_within_cap"] is False
    assert result["warnings"] == ["GPU 0 (NVIDIA H100 80GB HBM3, compute capability 9.0) takes at most 48 MPS "
                                  "clients; 64 replicas exceed that"]


def test_gpu_info_refuses_zero_replicas(run_module, standin_nvml):
    result, failed = run_module(gpu_info, {"replicas": 0})
    assert failed and result["msg"] == "replicas must be at least 1, got 0"


def test_gpu_info_counts_several_gpus(run_module, standin_nvml, monkeypatch):
    monkeypatch.setenv("GPULAB_STANDIN_GPUS", "4")
    result = run_module(gpu_info, {})[0]
    assert [g["index"] for g in result["gpus"]] == [0, 1, 2, 3]
    assert len(set(g["uuid"] for g in result["gpus"])) == 4


@pytest.fixture
def ctl(tmp_path):
    binary = tmp_path / "nvidia-cuda-mps-control"
    binary.write_text("")
    binary.chmod(0o755)
    return str(binary)


@pytest.mark.parametrize("check_mode", [True, False])
def test_mps_info_of_a_busy_daemon(run_module, fake_cli, tmp_path, ctl, check_mode, daemon_process):
    pipe, log = tmp_path / "pipe", tmp_path / "log"
    daemon = daemon_process(pipe)
    log.mkdir()
    (log / "server.log").write_text(transcript_text("33_server_log.txt"))
    for stdin, name in [("get_server_list", "21_server_list_busy.txt"),
                        ("get_server_status 486", "24_server_status.txt"), ("get_client_list 486", "23_client_list.txt"),
                        ("get_active_thread_percentage 486", "26_atp_of_server.txt"),
                        ("get_device_pinned_mem_limit 486 0", "12_get_pinned_4G.txt"), ("ps", "22_ps_busy.txt"),
                        ("get_default_active_thread_percentage", "07_set_default_atp_50.txt"),
                        ("get_default_device_pinned_mem_limit 0", "12_get_pinned_4G.txt")]:
        fake_cli.expect([ctl], stdin, *transcript_output(name))
    result, failed = run_module(mps_info, {"control_binary": ctl, "pipe_directory": str(pipe), "log_directory": str(log),
                                           "devices": [0]}, check_mode=check_mode)
    fake_cli.done()
    assert not failed and not result["changed"]
    assert result["running"] and result["pid"] == daemon.pid
    assert result["defaults"] == {"active_thread_percentage": 50.0, "pinned_memory_limit": {"0": "4G"}}
    assert result["servers"][0]["clients"] == [497]
    assert result["servers"][0]["logged"] == {"active_thread_percentage": 50.0, "pinned_memory_limit": {}}
    assert [c["pid"] for c in result["clients"]] == [497]


def test_mps_info_of_no_daemon(run_module, fake_cli, tmp_path, ctl):
    fake_cli.expect([ctl], "get_server_list", *transcript_output("42_no_pipe_dir.txt"))
    result, failed = run_module(mps_info, {"control_binary": ctl, "pipe_directory": str(tmp_path / "nowhere"),
                                           "devices": [0]})
    assert not failed
    assert (result["running"], result["pid"], result["servers"], result["stale_sockets"]) == (False, None, [], [])


def test_mps_info_without_the_binary(run_module, tmp_path):
    result, failed = run_module(mps_info, {"control_binary": str(tmp_path / "missing"), "devices": [0]})
    assert failed and "control_binary %s will not be run" % (tmp_path / "missing") in result["msg"]
