# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The NVML layer, over the values nvidia-ml-py returned on the H100 (40_nvml.txt, via the stand-in)."""

from __future__ import annotations

import pytest

from ansible_collections.gpulab.mps.plugins.module_utils import _nvml
from conftest import transcript_text


def test_gpu_of_the_recorded_h100(standin_nvml):
    recorded = transcript_text("40_nvml.txt")
    with _nvml.Nvml() as nvml:
        driver = nvml.driver()
        gpu = nvml.gpu(0)
    assert driver == {"driver_version": "580.159.04", "driver_branch": 580, "cuda_driver_version": "13.0",
                      "nvml_version": "13.580.159.04"}
    assert "driver 580.159.04 cuda 13000" in recorded
    assert gpu["uuid"] in recorded and "total %d" % gpu["memory_total_bytes"] in recorded
    assert gpu["memory_total_mib"] == 81559  # what nvidia-smi shows (28_nvidia_smi_query.txt)
    assert gpu["compute_capability"] == "9.0"
    assert gpu["compute_mode"] == "default"
    assert (gpu["mig_mode_current"], gpu["mig_mode_pending"]) == ("disabled", "disabled")
    assert gpu["mps_client_cap"] == 48


@pytest.mark.parametrize("mode, message", [
    ("library-not-found", "the NVIDIA driver is not installed: libnvidia-ml.so.1 was not found"),
    ("driver-not-loaded", "the NVIDIA kernel driver is not loaded"),
])
def test_init_failures_say_what_to_do(standin_nvml, monkeypatch, mode, message):
    monkeypatch.setenv("GPULAB_STANDIN_NVML", mode)
    with pytest.raises(_nvml.NvmlUnavailable, match=message):
        with _nvml.Nvml():
            pass


def test_missing_binding(monkeypatch):
    monkeypatch.setattr(_nvml, "HAS_PYNVML", False)
    with pytest.raises(_nvml.NvmlUnavailable, match="nvidia-ml-py"):
        with _nvml.Nvml():
            pass


@pytest.mark.parametrize("cc, cap", [((9, 0), 48), ((8, 6), 48), ((7, 5), 48), ((7, 0), 48), ((6, 1), 16), ((3, 5), 16)])
def test_mps_client_cap_from_volta(cc, cap):
    # 48 from Volta (7.0) on; the upstream device plugin wrongly uses 7.5.
    assert _nvml.mps_client_cap(*cc) == cap


@pytest.mark.parametrize("value, text", [(13000, "13.0"), (12040, "12.4"), (11080, "11.8")])
def test_cuda_version(value, text):
    assert _nvml.cuda_version_string(value) == text


@pytest.mark.parametrize("text, parsed", [("550", (550,)), ("580.159.04", (580, 159, 4)), ("550.54.15", (550, 54, 15))])
def test_version_tuple(text, parsed):
    assert _nvml.version_tuple(text) == parsed


@pytest.mark.parametrize("bad", ["", "latest", "5.x", "550-server"])
def test_version_tuple_refuses(bad):
    with pytest.raises(ValueError):
        _nvml.version_tuple(bad)


GPUS = [{"index": 0, "uuid": "GPU-058fcf08-fc4a-49f5-ddd9-6d7fedc642b2"},
        {"index": 1, "uuid": "GPU-1a2b3c4d-0000-0000-0000-000000000000"}]


def test_resolve_devices():
    assert _nvml.resolve_devices(GPUS, ["1", 0, "GPU-058fcf08", "gpu-1a2b"]) == ([1, 0, 0, 1], [])
    indexes, errors = _nvml.resolve_devices(GPUS, ["2", "GPU-ffff", "GPU-"])
    assert indexes == []
    assert errors == ["device index 2 does not exist (this host has 2 GPUs: 0, 1)",
                      "no GPU has UUID GPU-ffff (this host has GPU-058fcf08-fc4a-49f5-ddd9-6d7fedc642b2, "
                      "GPU-1a2b3c4d-0000-0000-0000-000000000000)",
                      "UUID prefix GPU- matches several GPUs"]
