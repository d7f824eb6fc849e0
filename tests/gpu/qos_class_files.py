# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The QoS lane's fallback where Ansible cannot run on the GPU host: the class files role mps_host would write.

    python3 tests/gpu/qos_class_files.py DIR CLASSES_JSON [PIPE_DIRECTORY]

The classes are checked and turned into environments by the collection's own _qos (imported from this checkout
through a temporary ansible_collections/gpulab/mps link; it needs no Ansible), and written with the text the module
mps_qos_files writes (_qos.env_file_text). Exit 1 on a bad class.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile

CHECKOUT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv):
    directory, classes = argv[0], json.loads(argv[1])
    pipe = argv[2] if len(argv) > 2 else None
    layout = tempfile.mkdtemp(prefix="gpulab-layout-")
    os.makedirs(os.path.join(layout, "ansible_collections", "gpulab"))
    os.symlink(CHECKOUT, os.path.join(layout, "ansible_collections", "gpulab", "mps"))
    sys.path.insert(0, layout)
    try:
        from ansible_collections.gpulab.mps.plugins.module_utils import _qos
        qos, errors, warnings = _qos.qos_plan(classes, directory, None, None, pipe)
        env_file_text = _qos.env_file_text
    finally:
        shutil.rmtree(layout)  # the link only, not the checkout it points to
    for line in warnings:
        print("warning: " + line)
    if errors:
        print("bad classes: " + "; ".join(errors))
        return 1
    os.makedirs(directory, mode=0o755, exist_ok=True)
    for name, values in sorted(qos["classes"].items()):
        with open(values["env_file"], "w") as handle:
            handle.write(env_file_text(name, values, qos["directory"]))
        os.chmod(values["env_file"], 0o644)
        print("%s: %s" % (values["env_file"], " ".join("%s=%s" % kv for kv in sorted(
            values["env_file_environment"].items()))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
