# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Every role variable that README.md and docs/ name is one that something reads.

Regression (F2 of tests/cluster/FINDINGS.md, found while wiring the cluster lane): docs/kubernetes.md rendered the
device plugin with `-e '{"device_plugin_gpus": [...]}'`, which nothing reads (the GPUs come from the host's plan); the
extra var was silently ignored. A name that starts like a role's variables (`device_plugin_...`, `mps_host_...`) must be
an option of a role's argument specs (where every variable is documented, whichever role reads it), a default of a
role, or something else the collection has under that name: a module, a filter, a fact a role sets, a file."""

from __future__ import annotations

import os
import re
import subprocess

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def tracked(*patterns):
    out = subprocess.run(["git", "ls-files"] + list(patterns), cwd=ROOT, capture_output=True, text=True, check=True)
    return out.stdout.split()


def roles():
    return sorted(d for d in os.listdir(os.path.join(ROOT, "roles")) if os.path.isdir(os.path.join(ROOT, "roles", d)))


def known_names():
    names = set()
    for role in roles():
        with open(os.path.join(ROOT, "roles", role, "meta", "argument_specs.yml")) as handle:
            for entry in yaml.safe_load(handle)["argument_specs"].values():
                names |= set(entry.get("options") or {})
        defaults = os.path.join(ROOT, "roles", role, "defaults", "main.yml")
        if os.path.exists(defaults):
            with open(defaults) as handle:
                names |= set(yaml.safe_load(handle) or {})
    # Modules, filters (their documentation files and the names the filter plugins register), files.
    for path in tracked("plugins", "roles", "tests", "docs"):
        base = os.path.basename(path)
        names.add(base.split(".", 1)[0])
    for path in tracked("plugins/filter/*.py"):
        with open(os.path.join(ROOT, path)) as handle:
            names |= set(re.findall(r'"([a-z0-9_]+)":\s', handle.read()))
    # The functions of the collection's Python (docs name them, e.g. _nvml.mps_client_cap).
    for path in tracked("plugins/*.py", "plugins/**/*.py"):
        with open(os.path.join(ROOT, path)) as handle:
            names |= set(re.findall(r"^\s*def ([a-z0-9_]+)\(", handle.read(), flags=re.M))
    # Facts the roles set.
    for path in tracked("roles/*/tasks/*.yml"):
        with open(os.path.join(ROOT, path)) as handle:
            for task in yaml.safe_load(handle) or []:
                for block in [task] + (task.get("block") or []) + (task.get("rescue") or []) + (task.get("always") or []):
                    facts = block.get("ansible.builtin.set_fact") or {}
                    if isinstance(facts, dict):
                        names |= set(facts)
    return names


def named_in_docs():
    pattern = re.compile(r"\b(?:%s)_[a-z0-9_]*[a-z0-9]\b" % "|".join(sorted(roles(), key=len, reverse=True)))
    found = {}
    for path in tracked("README.md", "docs/*.md"):
        if "/evidence/" in path:
            continue   # records of what ran, in the words of their day
        with open(os.path.join(ROOT, path)) as handle:
            for name in pattern.findall(handle.read()):
                found.setdefault(name, set()).add(path)
    return found


def test_every_role_variable_the_docs_name_is_read_by_the_collection():
    known = known_names()
    unknown = dict((name, sorted(paths)) for name, paths in named_in_docs().items() if name not in known)
    assert unknown == {}
