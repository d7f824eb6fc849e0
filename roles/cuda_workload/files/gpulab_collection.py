# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Makes the collection's module_utils importable for a program that runs without Ansible: the workload runner
(run_workloads.py, on a GPU host and in a pod) and the benchmarks (benchmarks/*.py). Standard library only.

Those programs speak to MPS only through the collection's one client (_mps_control.MpsControl) and find the control
binary only with its one finder (find_control_binary), so they import ansible_collections.gpulab.mps. From where:
- --lib DIR: a directory that holds ansible_collections/gpulab/mps/plugins/module_utils (where the role mps_client
  installs the client on a host, the plan's files.lib_directory; the copy the role cuda_workload or the benchmark
  playbook ships; the pod's ConfigMap, mounted there);
- else the checkout (or installed collection) the program belongs to: its own .../ansible_collections/gpulab/mps
  when it sits in one, else a temporary collection path whose ansible_collections/gpulab/mps links to the checkout
  (as tests/gpu/device_plugin/lane.py's collection_path() does); removed at exit.
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile

PACKAGE = os.path.join("ansible_collections", "gpulab", "mps", "plugins", "module_utils")
MARKER = "_mps_control.py"
# {lib or checkout: the directory put on sys.path}: a second program of the same process reuses it.
_USED = {}


class CollectionMissing(Exception):
    """The collection's module_utils are not where they were looked for."""


def lib_option(argv):
    """The value of --lib in argv (--lib DIR or --lib=DIR), or None: read before argparse, since the imports of the
    program depend on it."""
    argv = list(argv or [])
    for index, arg in enumerate(argv):
        if arg == "--lib" and index + 1 < len(argv):
            return argv[index + 1]
        if arg.startswith("--lib="):
            return arg[len("--lib="):]
    return None


def checkout_of(path):
    """The collection root (the directory holding galaxy.yml and plugins/module_utils) that `path` lies in, or None."""
    current = os.path.dirname(os.path.abspath(path))
    while True:
        if os.path.isfile(os.path.join(current, "galaxy.yml")) and \
                os.path.isfile(os.path.join(current, "plugins", "module_utils", MARKER)):
            return current
        parent = os.path.dirname(current)
        if parent == current:
            return None
        current = parent


def base_for_checkout(root):
    """A directory from which ansible_collections.gpulab.mps is `root`: the one it sits in, or a temporary one."""
    parts = os.path.normpath(root).split(os.sep)
    if parts[-3:] == ["ansible_collections", "gpulab", "mps"]:
        return os.sep.join(parts[:-3]) or os.sep
    base = tempfile.mkdtemp(prefix="gpulab-collection-")
    atexit.register(shutil.rmtree, base, True)  # the link goes, never what it points to
    os.makedirs(os.path.join(base, "ansible_collections", "gpulab"))
    os.symlink(root, os.path.join(base, "ansible_collections", "gpulab", "mps"))
    return base


def use(lib=None, program=None):
    """Put the collection on sys.path (first) and return the directory that holds ansible_collections.

    lib: --lib's value; program: the file of the program (its checkout is the fallback). Raises CollectionMissing,
    saying where it looked and what to pass."""
    if lib:
        lib = os.path.abspath(lib)
        if not os.path.isfile(os.path.join(lib, PACKAGE, MARKER)):
            raise CollectionMissing("--lib %s does not hold %s/%s (the collection's client: the role mps_client "
                                    "installs it in the plan's files.lib_directory)" % (lib, PACKAGE, MARKER))
        base = lib
    else:
        root = checkout_of(program or __file__)
        if root is None:
            raise CollectionMissing("%s is not in a checkout of gpulab.mps: pass --lib DIR, a directory that holds %s"
                                    % (program or __file__, PACKAGE))
        base = _USED.get(root) or base_for_checkout(root)
        _USED[root] = base
    if base in sys.path:
        sys.path.remove(base)
    sys.path.insert(0, base)
    return base


def load(argv=None, program=None):
    """use() with --lib from argv (default sys.argv); exits with the reason (status 2) when the client is missing."""
    try:
        return use(lib_option(sys.argv[1:] if argv is None else argv), program)
    except CollectionMissing as error:
        raise SystemExit("%s: %s" % (os.path.basename(program or sys.argv[0]), error))
