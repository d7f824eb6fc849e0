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
  - gpulab.mps.attributes
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
    description: Seconds the client may wait to see itself in the daemon's C(ps) table (at most 10 are used).
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
  - gpulab.mps contributors (@gpulab)
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

import sys

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.gpulab.mps.plugins.module_utils._common import (
    MpsControlError, fail_control, mps_argument_spec, mps_control)
from ansible_collections.gpulab.mps.plugins.module_utils._cuda_client import client_argv, parse_client_report
from ansible_collections.gpulab.mps.plugins.module_utils._mps_control import DaemonNotRunning, parse_ps


def find_client(rows, pid):
    """The ps row of this PID, if the daemon lists it."""
    for row in rows:
        if row["pid"] == pid:
            return row
    return None


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

    # The client reads the daemon's ps table itself while it holds its context, so one blocking
    # run_command suffices; the table it read is parsed here with the same parser as everywhere.
    argv = client_argv(p["python"] or sys.executable, p["device"], p["alloc_mib"], hold=0,
                       ps_binary=control.binary, ps_wait=min(p["timeout"], 10))
    rc, out, err = module.run_command(argv, environ_update=control.environment())
    try:
        report = parse_client_report(out)
    except ValueError as error:
        module.fail_json(msg="The CUDA probe client gave no report (%s): %s" % (error, (err or out).strip()[-2000:]),
                         rc=rc, stdout=out, stderr=err, **result)
    result.update(client_checked=True, client=dict((k, v) for k, v in report.items() if k not in ("ps", "ps_rc")))
    if report.get("error"):
        module.fail_json(msg="The CUDA probe client could not use GPU %d: %s" % (p["device"], report["error"]),
                         **result)
    row = None
    if result["dialtone"] and report.get("ps_rc") == 0:
        try:
            result["ps"] = parse_ps(report.get("ps", ""))
        except ValueError as error:
            module.fail_json(msg="Unexpected ps output while the client ran: %s" % error, **result)
        row = find_client(result["ps"], report["pid"])
    result["under_mps"] = row is not None
    if row is not None:
        result["server"] = row["server"]
    if p["expect_mps"] and row is None:
        module.fail_json(
            msg="CUDA client %d ran on GPU %d but is NOT an MPS client: the daemon in %s does not list it, so it fell "
                "back to running without MPS. Clients must see that daemon: same CUDA_MPS_PIPE_DIRECTORY, access to its "
                "sockets, and compute mode DEFAULT or EXCLUSIVE_PROCESS." % (report["pid"], p["device"], p["pipe_directory"]),
            **result)
    if not p["expect_mps"] and row is not None:
        module.fail_json(msg="CUDA client %d runs under MPS (server %d), but expect_mps is false" % (
            report["pid"], row["server"]), **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
