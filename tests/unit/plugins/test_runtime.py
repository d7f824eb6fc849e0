# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""meta/runtime.yml against the modules: what it promises module_defaults users."""

from __future__ import annotations

import importlib
import os

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def documented_options(name):
    module = importlib.import_module("ansible_collections.gpulab.mps.plugins.modules.%s" % name)
    doc = yaml.safe_load(module.DOCUMENTATION)
    options = set(doc.get("options") or {})
    if "gpulab.mps.mps_control" in doc.get("extends_documentation_fragment", []):
        options |= {"pipe_directory", "log_directory", "control_binary"}
    return options


def test_every_module_of_the_mps_group_takes_the_pipe_directory_options():
    """Regression: driver_check, gpu_info and kind_cluster sat in group mps, so that
    `module_defaults: {group/gpulab.mps.mps: {pipe_directory: ...}}` made them fail on an unknown option."""
    with open(os.path.join(ROOT, "meta", "runtime.yml")) as handle:
        groups = yaml.safe_load(handle)["action_groups"]
    assert groups["mps"], groups
    for name in groups["mps"]:
        missing = {"pipe_directory", "log_directory", "control_binary"} - documented_options(name)
        assert not missing, "%s is in group mps but has no %s" % (name, ", ".join(sorted(missing)))


def test_every_module_is_in_a_group_or_says_why_not():
    with open(os.path.join(ROOT, "meta", "runtime.yml")) as handle:
        grouped = set(sum(yaml.safe_load(handle)["action_groups"].values(), []))
    modules = set(n[:-3] for n in os.listdir(os.path.join(ROOT, "plugins", "modules")) if n.endswith(".py"))
    # These take none of the daemon's options: module_defaults of group mps would break them.
    assert modules - grouped == {"driver_check", "gpu_info", "kind_cluster", "mps_files", "mps_qos_files", "mps_unit"}
