# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""Options and helpers shared by the modules that talk to the MPS control daemon.

This is a private module_utils of gpulab.mps: its API may change without notice.
The options are documented once, in doc_fragments/mps_control.py.
"""

from __future__ import annotations

import os

from ansible.module_utils.basic import missing_required_lib

from ansible_collections.gpulab.mps.plugins.module_utils._command import MAX_TIMEOUT
from ansible_collections.gpulab.mps.plugins.module_utils._mps_control import (
    DEFAULT_LOG_DIRECTORY, DEFAULT_PIPE_DIRECTORY, MpsControl, MpsControlError, find_control_binary)
from ansible_collections.gpulab.mps.plugins.module_utils._nvml import (
    HAS_PYNVML, PYNVML_IMPORT_ERROR, Nvml, NvmlUnavailable)
from ansible_collections.gpulab.mps.plugins.module_utils._trust import directory_problem, normalize_path

MPS_CONTROL_ARGUMENT_SPEC = dict(
    pipe_directory=dict(type="str", default=DEFAULT_PIPE_DIRECTORY),
    log_directory=dict(type="str", default=DEFAULT_LOG_DIRECTORY),
    control_binary=dict(type="path"),
)


def mps_argument_spec(**extra):
    spec = dict(MPS_CONTROL_ARGUMENT_SPEC)
    spec.update(extra)
    return spec


def path_errors(module, options=("pipe_directory", "log_directory")):
    """Normalise the path options in module.params (absolute, no unsafe characters); the errors, as sentences."""
    errors = []
    for option in options:
        path, error = normalize_path(option, module.params[option])
        if error:
            errors.append(error)
        else:
            module.params[option] = path
    return errors


def timeout_error(value, option="timeout"):
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_TIMEOUT:
        return "%s must be a whole number of seconds from 1 to %d, got %r" % (option, MAX_TIMEOUT, value)
    return None


def reader_control(module, extra_env=None, timeout=None):
    """The MpsControl of a module that only reads (or, like a CUDA client, only uses) a daemon.

    The pipe directory must be trusted (root's or this user's, writable by nobody else) before anything is
    sent to its socket; a missing one simply has no daemon. Fails the module before any command otherwise.
    """
    errors = path_errors(module)
    if errors:
        module.fail_json(msg="Invalid MPS settings: " + "; ".join(errors), errors=errors)
    problem = directory_problem(module.params["pipe_directory"], (0, os.geteuid()), creatable=True)
    if problem:
        module.fail_json(msg="Refusing to use the MPS pipe directory %s: %s" % (module.params["pipe_directory"], problem))
    binary = find_control_binary(module, module.params["control_binary"])
    kwargs = {"timeout": timeout} if timeout else {}
    return MpsControl(module, binary, module.params["pipe_directory"], module.params["log_directory"],
                      extra_env=extra_env, **kwargs)


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


__all__ = ["MpsControlError", "fail_control", "mps_argument_spec", "path_errors", "query_gpus", "reader_control",
           "timeout_error"]
