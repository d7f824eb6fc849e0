# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""gpulab.mps metrics collector: one reading of MPS on this host, written for node_exporter's textfile collector.

Installed by the gpulab.mps.mps_metrics role and run by its systemd timer (gpulab-mps-metrics.timer), as root:

    <venv>/bin/python -I <install>/gpulab_mps_metrics.py --config /etc/gpulab-mps/metrics.json --lib <lib>

It holds no logic of its own: the collection's client, installed by the role gpulab.mps.mps_client under <lib>/
ansible_collections/gpulab/mps/plugins/module_utils, reads the host's plan (the plan file the configuration names),
the daemon (_mps_control), judges its health (_mps_health), reads NVML (_nvml) and builds and writes the series
(_mps_metrics: docs/metrics.md). Exit status 0 when every source was read, 1 when the file says that something
could not be (gpulab_mps_collector_success 0), 2 when nothing could be written.
"""

from __future__ import annotations

import argparse
import os
import sys


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="/etc/gpulab-mps/metrics.json",
                        help="the collector's configuration, written by the mps_metrics role")
    parser.add_argument("--lib", default=os.path.dirname(os.path.abspath(__file__)),
                        help="the directory that holds ansible_collections/gpulab/mps (default: this script's)")
    args = parser.parse_args(argv)
    sys.dont_write_bytecode = True  # the client's directory holds what the collection wrote, and nothing else
    sys.path.insert(0, args.lib)
    from ansible_collections.gpulab.mps.plugins.module_utils import _mps_metrics
    from ansible_collections.gpulab.mps.plugins.module_utils._nvml import Nvml

    try:
        ok, message = _mps_metrics.run(args.config, nvml=Nvml)
    except OSError as error:  # the file could not be written
        print("gpulab-mps-metrics: %s" % error, file=sys.stderr)
        return 2
    print("gpulab-mps-metrics: %s" % message, file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
