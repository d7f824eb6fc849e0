# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Record what the REAL device plugin config loaders say about every config of loader_cases.py.

    tests/gpu/device_plugin/build.sh --loaders-only UPSTREAM_GIT FORK_GIT     # builds .cache/dp-loaders/*
    .venv/bin/python tests/render/record_loaders.py [.cache/dp-loaders]

Each loader is gpulab-loadconfig (tests/gpu/device_plugin/loadconfig/main.go) compiled inside one source tree: it
runs that tree's spec.NewConfig, DisableResourceNamingInConfig and a strict walk for unknown keys. The result goes to
tests/render/fixtures/device_plugin_loaders.json with the commit of each source; test_render.py fails when a
rendered config is not in it (re-run this after changing what the collection renders).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(ROOT, ".collections"))

import loader_cases  # noqa: E402

FIXTURE = os.path.join(HERE, "fixtures", "device_plugin_loaders.json")
LOADERS = ("upstream", "fork")


def run_loader(binary, paths):
    proc = subprocess.run([binary] + paths, capture_output=True, text=True, timeout=120, check=True)
    results = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    if len(results) != len(paths):
        raise SystemExit("%s answered %d results for %d files: %s" % (binary, len(results), len(paths), proc.stderr))
    return results


def main(argv):
    loaders_dir = argv[1] if len(argv) > 1 else os.path.join(ROOT, ".cache", "dp-loaders")
    cases = {}
    for name, (mode, owner, config) in sorted(loader_cases.rendered().items()):
        cases[name] = {"kind": "rendered", "mode": mode, "owner": owner, "config": config}
    for name, (what, config) in sorted(loader_cases.broken().items()):
        cases[name] = {"kind": "broken", "what": what, "config": config}
    sources = {}
    with tempfile.TemporaryDirectory() as tmp:
        names = sorted(cases)
        paths = []
        for name in names:
            path = os.path.join(tmp, name + ".yaml")
            with open(path, "w") as handle:
                # The very text the role puts in the ConfigMap (_device_plugin._yaml_dump).
                from ansible_collections.gpulab.mps.plugins.module_utils._device_plugin import _yaml_dump
                handle.write(_yaml_dump(cases[name]["config"]))
            paths.append(path)
        for loader in LOADERS:
            binary = os.path.join(loaders_dir, loader, "gpulab-loadconfig")
            with open(os.path.join(loaders_dir, loader, "COMMIT")) as handle:
                sources[loader] = handle.read().strip()
            for name, result in zip(names, run_loader(binary, paths)):
                result.pop("file")
                cases[name][loader] = result
    record = {
        "recipe": "tests/gpu/device_plugin/build.sh --loaders-only, then tests/render/record_loaders.py",
        "sources": {
            "upstream": {"repository": "NVIDIA/k8s-device-plugin", "commit": sources["upstream"], "version": "v0.20.0"},
            "fork": {"repository": "linskybing/k8s-device-plugin", "branch": "mps-individual-gpu",
                     "commit": sources["fork"]},
        },
        "cases": cases,
    }
    os.makedirs(os.path.dirname(FIXTURE), exist_ok=True)
    with open(FIXTURE, "w") as handle:
        json.dump(record, handle, indent=1, sort_keys=True)
        handle.write("\n")
    fit = dict((loader, sum(1 for c in cases.values() if c[loader]["accepted"] and not c[loader]["unknown_fields"]))
               for loader in LOADERS)
    print("%d cases recorded in %s; fit for upstream %d, for the fork %d" % (
        len(cases), FIXTURE, fit["upstream"], fit["fork"]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
