# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""gpulab.mps: the entry point of the collection's client on this host, installed by the role gpulab.mps.mps_client.

    python3 -I gpulab_mps.py --plan /etc/gpulab-mps/plan.json check-directories | apply-defaults | stop | status

Everything is _mps_cli.main, from the module_utils installed beside this file (ansible_collections/gpulab/mps): the
one client of the MPS control daemon, built from the host's plan. The host daemon's systemd unit runs it as root.
"""

import os
import sys

sys.dont_write_bytecode = True  # the directory holds what the collection wrote, and nothing else
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from ansible_collections.gpulab.mps.plugins.module_utils._mps_cli import main  # noqa: E402

sys.exit(main())
