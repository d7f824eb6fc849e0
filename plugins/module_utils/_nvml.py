# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""The one NVML layer of gpulab.mps (package nvidia-ml-py, imported as pynvml).

This is a private module_utils of gpulab.mps: its API may change without notice.

NVML answers in 0.2 s what `nvidia-smi` parsing would, with types instead of text, and it
tells "no driver" (library not found) from "driver not loaded". Values recorded on an H100
(driver 580.159.04): total memory 85520809984 B, compute capability (9, 0), compute mode 0,
MIG mode [0, 0], CUDA driver version 13000.
"""

from __future__ import annotations

import traceback

try:
    import pynvml
    HAS_PYNVML = True
    PYNVML_IMPORT_ERROR = None
except ImportError:
    pynvml = None
    HAS_PYNVML = False
    PYNVML_IMPORT_ERROR = traceback.format_exc()

MIB = 1 << 20

COMPUTE_MODES = {0: "default", 1: "exclusive_thread", 2: "prohibited", 3: "exclusive_process"}
MIG_MODES = {0: "disabled", 1: "enabled"}

# MPS clients per device: 48 from Volta (compute capability 7.0) on, 16 before (NVIDIA MPS docs;
# the upstream device plugin uses 7.5 as the threshold, which is wrong for V100).
MPS_CLIENTS_VOLTA_AND_LATER = 48
MPS_CLIENTS_BEFORE_VOLTA = 16


class NvmlUnavailable(Exception):
    """NVML cannot be used on this host; the message says what is missing and what to do."""


def _text(value):
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def mps_client_cap(major, minor=0):
    """Most MPS clients per device for a GPU of this compute capability."""
    return MPS_CLIENTS_VOLTA_AND_LATER if (int(major), int(minor)) >= (7, 0) else MPS_CLIENTS_BEFORE_VOLTA


def cuda_version_string(version):
    """NVML's CUDA driver version integer (13000) as "13.0"."""
    version = int(version)
    return "%d.%d" % (version // 1000, (version % 1000) // 10)


def version_tuple(version):
    """"580.159.04" -> (580, 159, 4); "550" -> (550,). ValueError on anything else."""
    parts = str(version).strip().split(".")
    if not parts or not all(p.isdigit() for p in parts):
        raise ValueError("%r is not a driver version such as 550 or 580.159.04" % (version,))
    return tuple(int(p) for p in parts)


def driver_problem(driver_version, min_version):
    """Why this driver is too old for MPS as the collection uses it, or None. ValueError for a bad min_version."""
    wanted = version_tuple(min_version)
    if version_tuple(driver_version) >= wanted:
        return None
    return ("NVIDIA driver %s is older than %s: MPS as gpulab.mps uses it needs driver %s or newer. Upgrade the "
            "driver (for example the nvidia-driver-%s-server package) and reboot." % (
                driver_version, min_version, min_version, wanted[0]))


class Nvml(object):
    """A context manager around nvmlInit/nvmlShutdown with the queries the modules need."""

    def __enter__(self):
        if not HAS_PYNVML:
            raise NvmlUnavailable("the Python package nvidia-ml-py (module pynvml) is not installed")
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as error:
            raise NvmlUnavailable(describe_init_error(error))
        return self

    def __exit__(self, *exc):
        try:
            pynvml.nvmlShutdown()
        except pynvml.NVMLError:
            pass
        return False

    def driver(self):
        cuda = pynvml.nvmlSystemGetCudaDriverVersion()
        version = _text(pynvml.nvmlSystemGetDriverVersion())
        return {
            "driver_version": version,
            "driver_branch": version_tuple(version)[0],
            "cuda_driver_version": cuda_version_string(cuda),
            "nvml_version": _text(pynvml.nvmlSystemGetNVMLVersion()),
        }

    def device_count(self):
        return pynvml.nvmlDeviceGetCount()

    def gpus(self):
        return [self.gpu(index) for index in range(self.device_count())]

    def gpu(self, index):
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(handle)
        memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
        mig_current, mig_pending = self._mig_mode(handle)
        return {
            "index": index,
            "uuid": _text(pynvml.nvmlDeviceGetUUID(handle)),
            "name": _text(pynvml.nvmlDeviceGetName(handle)),
            "compute_capability": "%d.%d" % (major, minor),
            "memory_total_bytes": int(memory.total),
            "memory_used_bytes": int(memory.used),
            "memory_free_bytes": int(memory.free),
            "memory_total_mib": int(memory.total) // MIB,
            "memory_used_mib": int(memory.used) // MIB,
            "memory_free_mib": int(memory.free) // MIB,
            "compute_mode": COMPUTE_MODES.get(pynvml.nvmlDeviceGetComputeMode(handle), "unknown"),
            "mig_mode_current": mig_current,
            "mig_mode_pending": mig_pending,
            "mps_client_cap": mps_client_cap(major, minor),
        }

    def compute_processes(self):
        """Every compute process NVML lists, per GPU: [{"index", "uuid", "pid", "used_memory_bytes"}].

        On driver 580 NVML lists each MPS client with its own usedGpuMemory, and the MPS server too (H200:
        docs/evidence/2026-12-04-h200/fault/sticky.jsonl, "nvml compute processes"). used_memory_bytes is None where
        NVML has no value (usedGpuMemory None or NVML_VALUE_NOT_AVAILABLE).
        """
        found = []
        for index in range(self.device_count()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            uuid = _text(pynvml.nvmlDeviceGetUUID(handle))
            for process in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
                used = getattr(process, "usedGpuMemory", None)
                # NVML_VALUE_NOT_AVAILABLE is (unsigned long long)-1.
                used = int(used) if used is not None and 0 <= int(used) < (1 << 64) - 1 else None
                found.append({"index": index, "uuid": uuid, "pid": int(process.pid), "used_memory_bytes": used})
        return found

    @staticmethod
    def _mig_mode(handle):
        try:
            current, pending = pynvml.nvmlDeviceGetMigMode(handle)
        except pynvml.NVMLError_NotSupported:
            return "unsupported", "unsupported"
        return MIG_MODES.get(current, "unknown"), MIG_MODES.get(pending, "unknown")


def describe_init_error(error):
    """What a failed nvmlInit means for the user, and what to do."""
    if isinstance(error, getattr(pynvml, "NVMLError_LibraryNotFound", ())):
        return ("the NVIDIA driver is not installed: libnvidia-ml.so.1 was not found. Install the NVIDIA driver "
                "(550 or newer) and check that `nvidia-smi` works")
    if isinstance(error, getattr(pynvml, "NVMLError_DriverNotLoaded", ())):
        return ("the NVIDIA kernel driver is not loaded. Load it (`modprobe nvidia`, or reboot after installing "
                "the driver) and check that `nvidia-smi` works")
    if isinstance(error, getattr(pynvml, "NVMLError_NoPermission", ())):
        return "NVML refused access to the GPUs (no permission); run as root or fix /dev/nvidia* permissions"
    return "NVML could not initialise: %s" % error


def resolve_devices(gpus, selectors):
    """Map device selectors (index as int/str, or a UUID or unique UUID prefix) to NVML indexes.

    Returns (indexes, errors): one index per selector in order, and a message per selector
    that matches no GPU or several.
    """
    indexes, errors = [], []
    for selector in selectors:
        text = str(selector).strip()
        if text.isdigit():
            if int(text) < len(gpus):
                indexes.append(int(text))
            else:
                errors.append("device index %s does not exist (this host has %d GPU%s: %s)" % (
                    text, len(gpus), "" if len(gpus) == 1 else "s", ", ".join(str(g["index"]) for g in gpus) or "none"))
            continue
        matches = [g["index"] for g in gpus if g["uuid"].lower().startswith(text.lower())] if text else []
        if len(matches) == 1:
            indexes.append(matches[0])
        elif not matches:
            errors.append("no GPU has UUID %s (this host has %s)" % (text, ", ".join(g["uuid"] for g in gpus) or "none"))
        else:
            errors.append("UUID prefix %s matches several GPUs" % text)
    return indexes, errors
