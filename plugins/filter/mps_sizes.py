# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""Size arithmetic for roles: MPS sizes to bytes and back, and memory per replica.

The arithmetic lives in module_utils/_sizes.py, shared with the modules, so that a role's
template and the mps_daemon module can never disagree on what "1536M" is.
Documentation of each filter: plugins/filter/<name>.yml.
"""

from __future__ import annotations

from ansible.errors import AnsibleFilterError

from ansible_collections.gpulab.mps.plugins.module_utils import _plan, _sizes


def mps_size_bytes(value):
    """'2G' -> 2147483648."""
    try:
        return _sizes.parse_size(value)
    except _sizes.SizeError as error:
        raise AnsibleFilterError("mps_size_bytes: %s" % error)


def mps_size(value):
    """2147483648 or '2048M' -> '2G', in the form the MPS CLI reads."""
    try:
        return _sizes.mps_size(value)
    except _sizes.SizeError as error:
        raise AnsibleFilterError("mps_size: %s" % error)


def mps_replica_memory_mib(total_mib, replicas):
    """Memory per replica in MiB: total MiB // replicas."""
    try:
        return _sizes.replica_memory_mib(total_mib, replicas)
    except (_sizes.SizeError, TypeError, ValueError) as error:
        raise AnsibleFilterError("mps_replica_memory_mib: %s" % error)


def mps_defaults_gaps(defaults, plan):
    """What the defaults a daemon reads back lack against the host's plan, as sentences (empty: it holds them)."""
    if not isinstance(plan, dict) or not isinstance(plan.get("daemon"), dict):
        raise AnsibleFilterError("mps_defaults_gaps: expects the host's plan (preflight_mps_plan)")
    try:
        return _plan.defaults_gaps(plan["daemon"], defaults)
    except (_sizes.SizeError, TypeError, ValueError) as error:
        raise AnsibleFilterError("mps_defaults_gaps: %s" % error)


class FilterModule(object):
    def filters(self):
        return {
            "mps_size_bytes": mps_size_bytes,
            "mps_size": mps_size,
            "mps_replica_memory_mib": mps_replica_memory_mib,
            "mps_defaults_gaps": mps_defaults_gaps,
        }
