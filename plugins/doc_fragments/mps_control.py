# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations


class ModuleDocFragment(object):
    # Options of every module that talks to an MPS control daemon.
    DOCUMENTATION = r"""
options:
  plan:
    description:
      - The host's MPS plan, the fact C(preflight_mps_plan) that the C(gpulab.mps.preflight) role sets
        (M(gpulab.mps.mps_plan)) - its control binary, pipe, log and state directories, the daemon's environment,
        devices and defaults are used as they are, already checked, and NVML is not read again.
      - It overrides O(pipe_directory), O(log_directory), O(control_binary) and the state directory. Without it,
        those options are checked and resolved by the same code that makes a plan.
    type: dict
  pipe_directory:
    description:
      - Directory of the control daemon's sockets (C(CUDA_MPS_PIPE_DIRECTORY)), an absolute path of letters,
        digits and C(. _ - + @ /).
      - A daemon is found by this directory alone; CUDA clients must use the same one, or they
        silently run without MPS.
      - It is used only when it is trusted - root's or the daemon user's, writable by nobody else, not a
        symbolic link, on a path no other user can change; an untrusted one is refused before any command is
        sent, with the reason.
    type: str
    default: /tmp/nvidia-mps
  log_directory:
    description:
      - Directory of C(control.log) and C(server.log) (C(CUDA_MPS_LOG_DIRECTORY)), an absolute path like
        O(pipe_directory).
    type: str
    default: /var/log/nvidia-mps
  control_binary:
    description:
      - Path of C(nvidia-cuda-mps-control).
      - By default it is searched in C(/usr/local/nvidia/bin), C(/usr/bin), C(/usr/local/bin),
        C(/usr/local/cuda/bin), C(/usr/sbin), then root's other system directories - never in the caller's E(PATH).
      - It is run only when nobody but root (or this user) could have placed or replaced it - owned by root, writable
        by nobody else, in directories nobody else can write.
    type: path
"""

    # The modules that read or write what the collection keeps about a daemon.
    STATE_DIRECTORY = r"""
options:
  state_directory:
    description:
      - Where the collection keeps what it writes about a daemon - the exact pinned limits it set, and the lock
        that serialises runs on one pipe directory - never in the pipe directory, which MPS opens to every user.
      - By default C(/var/lib/gpulab-mps) for root, C(~/.local/state/gpulab-mps) for other users. It must be
        trusted like O(pipe_directory); a missing one is created.
    type: str
"""
