# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What `ansible-galaxy collection build` leaves out: every directory git ignores at the top of the checkout (venvs,
caches, the wheelhouse, and .dp-bin, the device-plugin binaries built from fetched code, which must never ship)."""

from __future__ import annotations

import os

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_every_ignored_top_directory_is_left_out_of_the_build():
    with open(os.path.join(ROOT, "galaxy.yml")) as handle:
        ignored = set(yaml.safe_load(handle)["build_ignore"])
    with open(os.path.join(ROOT, ".gitignore")) as handle:
        directories = [line.strip().rstrip("/") for line in handle
                       if line.strip().endswith("/") and "/" not in line.strip().rstrip("/")]
    missing = [d for d in directories if d not in ignored and d != "__pycache__"]
    assert directories and not missing, "galaxy.yml build_ignore lacks %s" % missing
