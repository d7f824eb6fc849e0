# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The health of MPS in words, for a playbook's fail_msg: the same sentence mps_info fails with.

The judgement and its sentence live in module_utils/_mps_health.py. Documentation: plugins/filter/<name>.yml.
"""

from __future__ import annotations

from ansible.errors import AnsibleFilterError

from ansible_collections.gpulab.mps.plugins.module_utils import _mps_health


def mps_health_summary(health):
    """mps_info's `health` -> 'healthy', or each problem: what happened, and what to do."""
    if not isinstance(health, dict) or not isinstance(health.get("problems"), list):
        raise AnsibleFilterError("mps_health_summary: expected the health that gpulab.mps.mps_info returns, got %r"
                                 % (health,))
    return _mps_health.summary(health)


class FilterModule(object):
    def filters(self):
        return {"mps_health_summary": mps_health_summary}
