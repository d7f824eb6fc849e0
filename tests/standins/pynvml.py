# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""STAND-IN for nvidia-ml-py's `pynvml` module, for test hosts WITHOUT a GPU (molecule containers, CI).

THIS IS NOT NVML. It answers with the values recorded through the real nvidia-ml-py on the lent
NVIDIA H100 80GB HBM3 (shared/reference/h100-transcripts/40_nvml.txt): driver 580.159.04, CUDA driver
version 13000, NVML 13.580.159.04, one GPU "NVIDIA H100 80GB HBM3" with UUID
GPU-058fcf08-fc4a-49f5-ddd9-6d7fedc642b2, memory total 85520809984 / free 84607893504 / used 912916480
bytes (v2: reserved 503316480, used 409600000), compute capability (9, 0), compute mode 0 (DEFAULT),
MIG mode [0, 0]. The real behaviour is covered by the GPU lane (tests/gpu/), against the real library.

The API mirrors nvidia-ml-py 13.x for the functions gpulab.mps uses: same names, same return types
(str, int, tuples, ctypes structures for memory), same exception hierarchy (NVMLError, and one
subclass per NVML_ERROR_* code, built the same way: NVMLError(NVML_ERROR_DRIVER_NOT_LOADED) is an
NVMLError_DriverNotLoaded). A name the stand-in lacks raises AttributeError saying so.

Knobs, so that tests can fake other hosts (environment first, then a file, then the default):
  GPULAB_STANDIN_GPUS    /etc/gpulab-standin/gpus    number of GPUs (1); GPU 0 is the recorded H100,
                                                     the others are copies with derived UUIDs
  GPULAB_STANDIN_DRIVER  /etc/gpulab-standin/driver  driver version string (580.159.04)
  GPULAB_STANDIN_NVML    /etc/gpulab-standin/nvml    ok | library-not-found | driver-not-loaded:
                                                     what nvmlInit() does (ok)
"""

from __future__ import annotations

import os
import string
import sys
import threading
from ctypes import Structure, c_uint, c_ulonglong

# --- constants (values as in nvidia-ml-py) ---------------------------------------------------------
NVML_SUCCESS = 0
NVML_ERROR_UNINITIALIZED = 1
NVML_ERROR_INVALID_ARGUMENT = 2
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_NO_PERMISSION = 4
NVML_ERROR_ALREADY_INITIALIZED = 5
NVML_ERROR_NOT_FOUND = 6
NVML_ERROR_INSUFFICIENT_SIZE = 7
NVML_ERROR_INSUFFICIENT_POWER = 8
NVML_ERROR_DRIVER_NOT_LOADED = 9
NVML_ERROR_TIMEOUT = 10
NVML_ERROR_IRQ_ISSUE = 11
NVML_ERROR_LIBRARY_NOT_FOUND = 12
NVML_ERROR_FUNCTION_NOT_FOUND = 13
NVML_ERROR_CORRUPTED_INFOROM = 14
NVML_ERROR_GPU_IS_LOST = 15
NVML_ERROR_RESET_REQUIRED = 16
NVML_ERROR_OPERATING_SYSTEM = 17
NVML_ERROR_LIB_RM_VERSION_MISMATCH = 18
NVML_ERROR_IN_USE = 19
NVML_ERROR_MEMORY = 20
NVML_ERROR_NO_DATA = 21
NVML_ERROR_VGPU_ECC_NOT_SUPPORTED = 22
NVML_ERROR_INSUFFICIENT_RESOURCES = 23
NVML_ERROR_FREQ_NOT_SUPPORTED = 24
NVML_ERROR_ARGUMENT_VERSION_MISMATCH = 25
NVML_ERROR_DEPRECATED = 26
NVML_ERROR_NOT_READY = 27
NVML_ERROR_GPU_NOT_FOUND = 28
NVML_ERROR_INVALID_STATE = 29
NVML_ERROR_RESET_TYPE_NOT_SUPPORTED = 30
NVML_ERROR_UNKNOWN = 999

NVML_COMPUTEMODE_DEFAULT = 0
NVML_COMPUTEMODE_EXCLUSIVE_THREAD = 1
NVML_COMPUTEMODE_PROHIBITED = 2
NVML_COMPUTEMODE_EXCLUSIVE_PROCESS = 3
NVML_COMPUTEMODE_COUNT = 4

NVML_DEVICE_MIG_DISABLE = 0x0
NVML_DEVICE_MIG_ENABLE = 0x1
NVML_FEATURE_DISABLED = 0
NVML_FEATURE_ENABLED = 1
NVML_DEVICE_ARCH_HOPPER = 9

nvmlMemory_v2 = 0x02000028

# --- recorded values (40_nvml.txt, 28_nvidia_smi_query.txt, 41_smi_xml.txt) -------------------------
RECORDED_DRIVER = "580.159.04"
RECORDED_CUDA_DRIVER = 13000
RECORDED_NVML = "13.580.159.04"
RECORDED_NAME = "NVIDIA H100 80GB HBM3"
RECORDED_UUID = "GPU-058fcf08-fc4a-49f5-ddd9-6d7fedc642b2"
RECORDED_PCI_BUS_ID = "00000000:00:06.0"
RECORDED_MEMORY = {"total": 85520809984, "free": 84607893504, "used": 912916480}
RECORDED_MEMORY_V2 = {"total": 85520809984, "reserved": 503316480, "free": 84607893504, "used": 409600000}
RECORDED_CC = (9, 0)
RECORDED_COMPUTE_MODE = NVML_COMPUTEMODE_DEFAULT
RECORDED_MIG = [0, 0]


# --- errors, built as nvidia-ml-py builds them -------------------------------------------------------
class NVMLError(Exception):
    _valClassMapping = dict()
    _errcode_to_string = {
        NVML_ERROR_UNINITIALIZED: "Uninitialized",
        NVML_ERROR_INVALID_ARGUMENT: "Invalid Argument",
        NVML_ERROR_NOT_SUPPORTED: "Not Supported",
        NVML_ERROR_NO_PERMISSION: "Insufficient Permissions",
        NVML_ERROR_ALREADY_INITIALIZED: "Already Initialized",
        NVML_ERROR_NOT_FOUND: "Not Found",
        NVML_ERROR_INSUFFICIENT_SIZE: "Insufficient Size",
        NVML_ERROR_INSUFFICIENT_POWER: "Insufficient External Power",
        NVML_ERROR_DRIVER_NOT_LOADED: "Driver Not Loaded",
        NVML_ERROR_TIMEOUT: "Timeout",
        NVML_ERROR_IRQ_ISSUE: "Interrupt Request Issue",
        NVML_ERROR_LIBRARY_NOT_FOUND: "NVML Shared Library Not Found",
        NVML_ERROR_FUNCTION_NOT_FOUND: "Function Not Found",
        NVML_ERROR_CORRUPTED_INFOROM: "Corrupted infoROM",
        NVML_ERROR_GPU_IS_LOST: "GPU is lost",
        NVML_ERROR_RESET_REQUIRED: "GPU requires restart",
        NVML_ERROR_OPERATING_SYSTEM: "The operating system has blocked the request.",
        NVML_ERROR_LIB_RM_VERSION_MISMATCH: "RM has detected an NVML/RM version mismatch.",
        NVML_ERROR_MEMORY: "Insufficient Memory",
        NVML_ERROR_UNKNOWN: "Unknown Error",
    }

    def __new__(cls, value):
        klass = NVMLError._valClassMapping.get(value, cls) if cls == NVMLError else cls
        obj = Exception.__new__(klass)
        obj.value = value
        return obj

    def __str__(self):
        return NVMLError._errcode_to_string.get(self.value, "NVML Error with code %d" % self.value)

    def __eq__(self, other):
        return self.value == other.value

    def __hash__(self):
        return hash(self.value)


def _extractNVMLErrorsAsClasses():
    this_module = sys.modules[__name__]
    for err_name in [x for x in dir(this_module) if x.startswith("NVML_ERROR_")]:
        class_name = "NVMLError_" + string.capwords(err_name.replace("NVML_ERROR_", ""), "_").replace("_", "")
        err_val = getattr(this_module, err_name)

        def gen_new(val):
            def new(typ, *args):
                return NVMLError.__new__(typ, val)
            return new
        new_error_class = type(class_name, (NVMLError,), {"__new__": gen_new(err_val)})
        new_error_class.__module__ = __name__
        setattr(this_module, class_name, new_error_class)
        NVMLError._valClassMapping[err_val] = new_error_class


_extractNVMLErrorsAsClasses()


def nvmlExceptionClass(nvmlErrorCode):
    if nvmlErrorCode not in NVMLError._valClassMapping:
        raise ValueError("nvmlErrorCode %s is not valid" % nvmlErrorCode)
    return NVMLError._valClassMapping[nvmlErrorCode]


# --- structures ----------------------------------------------------------------------------------
class c_nvmlMemory_t(Structure):
    _fields_ = [("total", c_ulonglong), ("free", c_ulonglong), ("used", c_ulonglong)]


class c_nvmlMemory_v2_t(Structure):
    _fields_ = [("version", c_uint), ("total", c_ulonglong), ("reserved", c_ulonglong),
                ("free", c_ulonglong), ("used", c_ulonglong)]


class c_nvmlPciInfo_t(Structure):
    _fields_ = [("busIdLegacy", c_uint), ("domain", c_uint), ("bus", c_uint), ("device", c_uint),
                ("pciDeviceId", c_uint), ("pciSubSystemId", c_uint)]
    busId = RECORDED_PCI_BUS_ID


class _Handle(object):
    """What nvmlDeviceGetHandleByIndex returns (a c_nvmlDevice_t pointer in the real module)."""

    def __init__(self, index):
        self.index = index

    def __repr__(self):
        return "<standin nvmlDevice %d>" % self.index

    def __eq__(self, other):
        return isinstance(other, _Handle) and other.index == self.index

    def __hash__(self):
        return hash(self.index)


# --- knobs ---------------------------------------------------------------------------------------
def _knob(env, name, default):
    value = os.environ.get(env)
    if value is None:
        try:
            with open(os.path.join("/etc/gpulab-standin", name)) as handle:
                value = handle.read().strip()
        except (IOError, OSError):
            value = default
    return value


def _gpu_count():
    try:
        return max(0, int(_knob("GPULAB_STANDIN_GPUS", "gpus", "1")))
    except ValueError:
        return 1


_lock = threading.Lock()
_refcount = 0


def _check_init():
    if _refcount <= 0:
        raise NVMLError(NVML_ERROR_UNINITIALIZED)


def _device(handle):
    _check_init()
    if not isinstance(handle, _Handle) or not 0 <= handle.index < _gpu_count():
        raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
    return handle.index


def _uuid(index):
    if index == 0:
        return RECORDED_UUID
    return RECORDED_UUID[:-4] + "%04x" % (0xc642 + index * 0x101)


# --- the API -------------------------------------------------------------------------------------
def nvmlInitWithFlags(flags):
    global _refcount
    mode = _knob("GPULAB_STANDIN_NVML", "nvml", "ok")
    if mode == "library-not-found":
        raise NVMLError(NVML_ERROR_LIBRARY_NOT_FOUND)
    if mode == "driver-not-loaded":
        raise NVMLError(NVML_ERROR_DRIVER_NOT_LOADED)
    with _lock:
        _refcount += 1


def nvmlInit():
    nvmlInitWithFlags(0)


def nvmlShutdown():
    global _refcount
    _check_init()
    with _lock:
        _refcount -= 1


def nvmlErrorString(result):
    return NVMLError._errcode_to_string.get(result, "Unknown Error")


def nvmlSystemGetDriverVersion():
    _check_init()
    return _knob("GPULAB_STANDIN_DRIVER", "driver", RECORDED_DRIVER)


def nvmlSystemGetCudaDriverVersion():
    _check_init()
    return RECORDED_CUDA_DRIVER


def nvmlSystemGetCudaDriverVersion_v2():
    _check_init()
    return RECORDED_CUDA_DRIVER


def nvmlSystemGetNVMLVersion():
    _check_init()
    return RECORDED_NVML


def nvmlSystemGetDriverBranch():
    # Not recorded on the H100: behave as a library without the function.
    _check_init()
    raise NVMLError(NVML_ERROR_FUNCTION_NOT_FOUND)


def nvmlDeviceGetCount():
    _check_init()
    return _gpu_count()


def nvmlDeviceGetHandleByIndex(index):
    _check_init()
    if not 0 <= int(index) < _gpu_count():
        raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
    return _Handle(int(index))


def nvmlDeviceGetHandleByUUID(uuid):
    _check_init()
    if isinstance(uuid, bytes):
        uuid = uuid.decode()
    for index in range(_gpu_count()):
        if _uuid(index) == uuid:
            return _Handle(index)
    raise NVMLError(NVML_ERROR_NOT_FOUND)


def nvmlDeviceGetIndex(handle):
    return _device(handle)


def nvmlDeviceGetName(handle):
    _device(handle)
    return RECORDED_NAME


def nvmlDeviceGetUUID(handle):
    return _uuid(_device(handle))


def nvmlDeviceGetPciInfo(handle):
    index = _device(handle)
    info = c_nvmlPciInfo_t(0, 0, 0, 6 + index, 0x233010DE, 0x16C110DE)
    info.busId = "00000000:00:%02x.0" % (6 + index)
    return info


def nvmlDeviceGetMemoryInfo(handle, version=None):
    _device(handle)
    if not version:
        return c_nvmlMemory_t(**RECORDED_MEMORY)
    return c_nvmlMemory_v2_t(version=version, **RECORDED_MEMORY_V2)


def nvmlDeviceGetComputeMode(handle):
    _device(handle)
    return RECORDED_COMPUTE_MODE


def nvmlDeviceGetCudaComputeCapability(handle):
    _device(handle)
    return RECORDED_CC


def nvmlDeviceGetMigMode(device):
    _device(device)
    return list(RECORDED_MIG)


def nvmlDeviceGetPersistenceMode(handle):
    _device(handle)
    return NVML_FEATURE_ENABLED          # 41_smi_xml.txt: persistence_mode Enabled


def nvmlDeviceGetArchitecture(device):
    _device(device)
    return NVML_DEVICE_ARCH_HOPPER


def nvmlDeviceGetComputeRunningProcesses(handle):
    _device(handle)
    return []                            # no process can use a GPU that is not there


def __getattr__(name):
    raise AttributeError("the pynvml STAND-IN (tests/standins/pynvml.py) has no %r; the real nvidia-ml-py may: "
                         "add it to the stand-in with a recorded value" % name)
