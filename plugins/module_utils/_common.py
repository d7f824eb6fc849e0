# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""Options and helpers shared by the modules that talk to the MPS control daemon.

This is a private module_utils of gpulab.mps: its API may change without notice.
The options are documented once, in doc_fragments/mps_control.py.
"""

from __future__ import annotations

from ansible.module_utils.basic import missing_required_lib

from ansible_collections.gpulab.mps.plugins.module_utils._mps_control import (
    DEFAULT_LOG_DIRECTORY, DEFAULT_PIPE_DIRECTORY, MpsControl, MpsControlError, find_control_binary)
from ansible_collections.gpulab.mps.plugins.module_utils._nvml import (
    HAS_PYNVML, PYNVML_IMPORT_ERROR, Nvml, NvmlUnavailable)

MPS_CONTROL_ARGUMENT_SPEC = dict(
    pipe_directory=dict(type="path", default=DEFAULT_PIPE_DIRECTORY),
    log_directory=dict(type="path", default=DEFAULT_LOG_DIRECTORY),
    control_binary=dict(type="path"),
)


def mps_argument_spec(**extra):
    spec = dict(MPS_CONTROL_ARGUMENT_SPEC)
    spec.update(extra)
    return spec


def mps_control(module, extra_env=None):
    """The MpsControl for the module's pipe_directory, log_directory and control_binary."""
    binary = find_control_binary(module, module.params["control_binary"])
    return MpsControl(module, binary, module.params["pipe_directory"], module.params["log_directory"],
                      extra_env=extra_env)


def fail_control(module, error, doing, **result):
    """Fail with what was being done, what the CLI said, and the cmd/rc/stdout/stderr."""
    result.update(error.details())
    module.fail_json(msg="%s: %s" % (doing, error), **result)


def query_gpus(module, required=True):
    """(driver dict, gpus list) from NVML; fails the module with what to do when NVML is unusable.

    With required=False returns (None, None) instead of failing.
    """
    if not HAS_PYNVML and required:
        module.fail_json(msg=missing_required_lib("nvidia-ml-py"), exception=PYNVML_IMPORT_ERROR)
    try:
        with Nvml() as nvml:
            return nvml.driver(), nvml.gpus()
    except NvmlUnavailable as error:
        if required:
            module.fail_json(msg="Cannot read the GPUs through NVML: %s" % error)
        return None, None


__all__ = ["MpsControlError", "fail_control", "mps_argument_spec", "mps_control", "query_gpus"]
