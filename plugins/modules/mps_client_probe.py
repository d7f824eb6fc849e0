#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: mps_client_probe
short_description: Prove that a CUDA client really runs under MPS
version_added: 0.1.0
description:
  - Asks the MPS control daemon for its C(ps) table (the dial-tone), then starts a tiny CUDA client
    that holds a context on O(device), and checks that the daemon lists the PID of the client.
  - A CUDA client that cannot reach the daemon does not fail, it silently runs without MPS; this
    module fails in that case (unless O(expect_mps=false)), with what to check.
  - The client uses only the NVIDIA driver (C(libcuda.so.1)) through Python ctypes; no CUDA toolkit,
    PyTorch or CuPy is needed. With O(alloc_mib) it also tries an allocation, which shows whether the
    pinned memory limit holds.
  - Changes nothing that lasts; the first client of a daemon makes it start an MPS server, as any
    CUDA program would. In check mode only the dial-tone runs, no client.
extends_documentation_fragment:
  - gpulab.mps.mps_control
options:
  device:
    description: CUDA device ordinal the client uses (as the client sees the devices).
    type: int
    default: 0
  alloc_mib:
    description: MiB the client tries to allocate and touch once it holds its context; V(0) for none.
    type: int
    default: 0
  expect_mps:
    description:
      - V(true) fails when the client is not an MPS client; V(false) fails when it is (to prove a
        client runs without MPS, as a benchmark's time-slicing phase must).
    type: bool
    default: true
  python:
    description: Python interpreter that runs the client. By default the one running this module.
    type: path
  timeout:
    description: Seconds the client may take to create its context, and to see it in C(ps).
    type: int
    default: 60
requirements:
  - the NVIDIA driver (libcuda.so.1) and nvidia-cuda-mps-control on the target
attributes:
  check_mode:
    support: partial
    details: In check mode only the dial-tone (C(ps)) runs; no CUDA client starts.
  diff_mode:
    support: none
  idempotent:
    support: full
author:
  - gpulab.mps contributors
"""

EXAMPLES = r"""
- name: The dial-tone, and a client proven to be under MPS
  gpulab.mps.mps_client_probe:
    pipe_directory: /tmp/nvidia-mps

- name: An allocation above the pinned limit must fail
  gpulab.mps.mps_client_probe:
    alloc_mib: 3000
  register: probe
  failed_when: probe.client.alloc.ok
"""

RETURN = r"""
dialtone:
  description: The daemon answered C(ps).
  returned: always
  type: bool
  sample: true
client_checked:
  description: Whether a CUDA client was started (false in check mode).
  returned: always
  type: bool
  sample: true
under_mps:
  description: Whether the daemon listed the client's PID while it held its context.
  returned: when a client ran
  type: bool
  sample: true
client:
  description:
    - What the client reported - its PID, device, the memory it saw free and in total, and the
      outcome of the allocation when O(alloc_mib) is set.
  returned: when a client ran
  type: dict
  sample: {pid: 534, device: 0, free_bytes: 1919320432, total_bytes: 85017493504, alloc: {mib: 256, ok: true, error: null}}
server:
  description: PID of the MPS server that served the client.
  returned: when the client was under MPS
  type: int
  sample: 537
ps:
  description: The daemon's C(ps) rows while the client ran (before it, in check mode).
  returned: always
  type: list
  elements: dict
  sample: [{pid: 534, id: 1, server: 537, device: GPU-058fcf08-fc4a-49f5, namespace: "4026531836", command: python3}]
"""

import os
import select
import subprocess
import sys
import time

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.gpulab.mps.plugins.module_utils._common import (
    MpsControlError, fail_control, mps_argument_spec, mps_control)
from ansible_collections.gpulab.mps.plugins.module_utils._cuda_client import client_argv, parse_client_report
from ansible_collections.gpulab.mps.plugins.module_utils._mps_control import DaemonNotRunning


def read_line(process, timeout):
    """The child's first stdout line, or None after timeout seconds or at EOF."""
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    if not ready:
        return None
    return process.stdout.readline().decode("utf-8", "replace").strip() or None


def find_client(rows, pid):
    """The ps row of this PID, if the daemon lists it."""
    for row in rows:
        if row["pid"] == pid:
            return row
    return None


def release(process):
    """Let the client go (it releases its context when stdin closes); kill it if it hangs."""
    try:
        process.stdin.close()
    except (IOError, OSError):
        pass
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    return process.stderr.read().decode("utf-8", "replace")


def main():
    module = AnsibleModule(
        argument_spec=mps_argument_spec(
            device=dict(type="int", default=0),
            alloc_mib=dict(type="int", default=0),
            expect_mps=dict(type="bool", default=True),
            python=dict(type="path"),
            timeout=dict(type="int", default=60),
        ),
        supports_check_mode=True,
    )
    p = module.params
    if p["device"] < 0 or p["alloc_mib"] < 0 or p["timeout"] < 1:
        module.fail_json(msg="device and alloc_mib must be 0 or more, timeout at least 1")
    control = mps_control(module)
    result = dict(changed=False, dialtone=False, client_checked=False, ps=[])
    try:
        result["ps"] = control.ps()
        result["dialtone"] = True
    except DaemonNotRunning as error:
        if p["expect_mps"]:
            fail_control(module, error, "MPS dial-tone failed: no MPS control daemon answers in %s; start it "
                         "(gpulab.mps.mps_daemon or the nvidia-mps service) or point pipe_directory at the one that "
                         "runs" % p["pipe_directory"], **result)
    except MpsControlError as error:
        fail_control(module, error, "MPS dial-tone failed in %s" % p["pipe_directory"], **result)
    if module.check_mode:
        module.exit_json(**result)

    env = dict(os.environ, CUDA_MPS_PIPE_DIRECTORY=p["pipe_directory"], CUDA_MPS_LOG_DIRECTORY=p["log_directory"])
    argv = client_argv(p["python"] or sys.executable, p["device"], p["alloc_mib"], hold=p["timeout"] + 30)
    # A background child, not run_command: the client must hold its context while the daemon is asked.
    process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               env=env, close_fds=True)
    line = read_line(process, p["timeout"])
    if line is None:
        stderr = release(process)
        module.fail_json(msg="The CUDA probe client printed nothing within %d s: %s" % (p["timeout"], stderr.strip()),
                         **result)
    try:
        report = parse_client_report(line)
    except ValueError:
        stderr = release(process)
        module.fail_json(msg="The CUDA probe client printed %r: %s" % (line, stderr.strip()), **result)
    result.update(client_checked=True, client=report)
    if report.get("error"):
        release(process)
        module.fail_json(msg="The CUDA probe client could not use GPU %d: %s" % (p["device"], report["error"]),
                         **result)
    row = None
    deadline = time.time() + min(p["timeout"], 10)
    try:
        while row is None and time.time() < deadline:
            result["ps"] = control.ps() if result["dialtone"] else []
            row = find_client(result["ps"], process.pid)
            if row is None:
                time.sleep(0.2)
    except MpsControlError as error:
        release(process)
        fail_control(module, error, "Cannot read the MPS client list in %s" % p["pipe_directory"], **result)
    release(process)
    result["under_mps"] = row is not None
    if row is not None:
        result["server"] = row["server"]
    if p["expect_mps"] and row is None:
        module.fail_json(
            msg="CUDA client %d ran on GPU %d but is NOT an MPS client: the daemon in %s does not list it, so it fell "
                "back to running without MPS. Clients must see that daemon: same CUDA_MPS_PIPE_DIRECTORY, access to its "
                "sockets, and compute mode DEFAULT or EXCLUSIVE_PROCESS." % (process.pid, p["device"], p["pipe_directory"]),
            **result)
    if not p["expect_mps"] and row is not None:
        module.fail_json(msg="CUDA client %d runs under MPS (server %d), but expect_mps is false" % (
            process.pid, row["server"]), **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
