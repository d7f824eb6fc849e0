# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""tests/cluster/lane.py loaded as the module `cluster_lane`: tests/gpu/device_plugin has a lane.py too, and both
are imported in one pytest run (`make unit`), so neither may take the name `lane` from the other."""

from __future__ import annotations

import importlib.util
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
sys.path.insert(0, os.path.join(ROOT, "tests", "cluster"))


def load():
    if "cluster_lane" not in sys.modules:
        spec = importlib.util.spec_from_file_location("cluster_lane", os.path.join(ROOT, "tests", "cluster", "lane.py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules["cluster_lane"] = module
        spec.loader.exec_module(module)
    return sys.modules["cluster_lane"]
