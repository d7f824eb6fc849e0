# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""The content of root's files that a role writes through gpulab.mps.mps_files, rendered in Python from checked values:
the host's plan file (mps_client) and the metrics collector's systemd units (mps_metrics).

No role assembles such a file in Jinja: every value passes its format's check in module_utils/_formats.py, through
_unit_files (the same code that renders the host daemon's unit in mps_unit) and _plan. Documentation of each filter:
plugins/filter/<name>.yml.
"""

from __future__ import annotations

from ansible.errors import AnsibleFilterError

from ansible_collections.gpulab.mps.plugins.module_utils import _plan, _unit_files
from ansible_collections.gpulab.mps.plugins.module_utils._formats import FormatError


def mps_plan_file(plan):
    """The host's plan as its file holds it (JSON)."""
    try:
        return _plan.plan_file_text(plan)
    except _plan.PlanError as error:
        raise AnsibleFilterError("mps_plan_file: %s" % error)


def mps_metrics_units(unit_directory, service_name, python, script, config, lib_directory, interval, timeout):
    """[{path, content}] of the metrics collector's service and timer."""
    try:
        return _unit_files.metrics_units(unit_directory, service_name, python, script, config, lib_directory,
                                         int(interval), int(timeout))
    except (FormatError, TypeError, ValueError) as error:
        raise AnsibleFilterError("mps_metrics_units: %s" % error)


class FilterModule(object):
    """gpulab.mps filters for the collection's files on a host."""

    def filters(self):
        return {"mps_plan_file": mps_plan_file, "mps_metrics_units": mps_metrics_units}
