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
    DEFAULT_LOG_DIRECTORY, DEFAULT_PIPE_DIRECTORY, MpsControl, MpsControlError)
from ansible_collections.gpulab.mps.plugins.module_utils._nvml import (
    HAS_PYNVML, PYNVML_IMPORT_ERROR, Nvml, NvmlUnavailable)
from ansible_collections.gpulab.mps.plugins.module_utils._plan import local_plan, plan_problems
from ansible_collections.gpulab.mps.plugins.module_utils._trust import directory_problem

MPS_CONTROL_ARGUMENT_SPEC = dict(
    plan=dict(type="dict"),
    pipe_directory=dict(type="str", default=DEFAULT_PIPE_DIRECTORY),
    log_directory=dict(type="str", default=DEFAULT_LOG_DIRECTORY),
    control_binary=dict(type="path"),
)


def mps_argument_spec(**extra):
    spec = dict(MPS_CONTROL_ARGUMENT_SPEC)
    spec.update(extra)
    return spec


def timeout_error(value, option="timeout"):
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_TIMEOUT:
        return "%s must be a whole number of seconds from 1 to %d, got %r" % (option, MAX_TIMEOUT, value)
    return None


def module_plan(module, resolve_devices=False):
    """The plan a module works from: its `plan` option (the host's, checked), or one made from its options by the
    same code (_plan.local_plan; NVML is read only when devices or pinned limits must be resolved). Fails the module,
    naming every bad setting, before anything is sent to a daemon."""
    plan = module.params.get("plan")
    if plan is not None:
        problems = plan_problems(plan)
        if problems:
            module.fail_json(msg="Invalid MPS plan, nothing was changed: " + "; ".join(problems), errors=problems)
        return plan
    gpus = query_gpus(module)[1] if resolve_devices else None
    plan, errors = local_plan(module.params, gpus)
    if errors:
        module.fail_json(msg="Invalid MPS settings, nothing was changed: " + "; ".join(errors), errors=errors)
    return plan


def reader_control(module, plan, timeout=None):
    """The client of a module that only reads (or, like a CUDA client, only uses) the daemon of `plan`.

    The pipe directory must be trusted (root's or this user's, writable by nobody else) before anything is sent to
    its socket; a missing one simply has no daemon. Fails the module before any command otherwise."""
    problem = directory_problem(plan["pipe_directory"], (0, os.geteuid()), creatable=True)
    if problem:
        module.fail_json(msg="Refusing to use the MPS pipe directory %s: %s" % (plan["pipe_directory"], problem))
    return MpsControl.from_plan(plan, timeout=timeout)


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


__all__ = ["MpsControlError", "fail_control", "module_plan", "mps_argument_spec", "query_gpus", "reader_control",
           "timeout_error"]
