# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations


class ModuleDocFragment(object):
    # Options of every module that talks to an MPS control daemon.
    DOCUMENTATION = r"""
options:
  pipe_directory:
    description:
      - Directory of the control daemon's sockets (C(CUDA_MPS_PIPE_DIRECTORY)).
      - A daemon is found by this directory alone; CUDA clients must use the same one, or they
        silently run without MPS.
    type: path
    default: /tmp/nvidia-mps
  log_directory:
    description:
      - Directory of C(control.log) and C(server.log) (C(CUDA_MPS_LOG_DIRECTORY)).
    type: path
    default: /var/log/nvidia-mps
  control_binary:
    description:
      - Path of C(nvidia-cuda-mps-control).
      - By default it is searched in E(PATH), then C(/usr/local/nvidia/bin), C(/usr/bin),
        C(/usr/local/bin) and C(/usr/local/cuda/bin).
    type: path
"""
