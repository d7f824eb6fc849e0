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
    that holds a context on O(device), and checks that a server of the daemon lists the PID of the client
    (C(get_client_list), which prints PIDs only; the C(ps) table, which prints every client's process name raw, is
    returned but proves nothing).
  - The client runs with the plan's environment (its pipe directory, the daemon's devices), not the task's.
  - A CUDA client that cannot reach the daemon does not fail, it silently runs without MPS; this
    module fails in that case (unless O(expect_mps=false)), with what to check.
  - The client uses only the NVIDIA driver (C(libcuda.so.1)) through Python ctypes; no CUDA toolkit,
    PyTorch or CuPy is needed. With O(alloc_mib) it also tries an allocation, which shows whether the
    pinned memory limit holds.
  - Changes nothing that lasts. The first client of a user makes the daemon start an MPS server for that user,
    as any CUDA program would; when the probe's client was the only client of a server that it made start,
    that server is shut down again after it, so that defaults set later reach the next clients of that user.
    In check mode only the dial-tone runs, no client.
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
    description:
      - Seconds the whole probe may take (1 to 3600) - the client's start on the GPU, its appearance in the
        daemon's C(ps) table and its exit - and the bound of every call of the control binary. A client or a
        binary that hangs is killed and the task fails, saying which.
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
  description: Whether a server of the daemon listed the client's PID (C(get_client_list)) while it held its context.
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
server_stopped:
  description:
    - Whether the server that served the client was shut down after it - because the probe's client made it
      start and was its only client.
  returned: when the client was under MPS
  type: bool
  sample: true
ps:
  description: The daemon's C(ps) rows while the client ran (before it, in check mode).
  returned: always
  type: list
  elements: dict
  sample: [{pid: 534, id: 1, server: 537, device: GPU-058fcf08-fc4a-49f5, namespace: "4026531836", command: python3}]
"""

import sys
import time

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.gpulab.mps.plugins.module_utils._common import (
    MpsControlError, fail_control, module_plan, mps_argument_spec, reader_control, timeout_error)
from ansible_collections.gpulab.mps.plugins.module_utils._cuda_client import ClientProcess, ClientTimeout, client_argv
from ansible_collections.gpulab.mps.plugins.module_utils._mps_control import DaemonNotRunning


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
    problems = [m for m in (timeout_error(p["timeout"]),) if m]
    if p["device"] < 0 or p["alloc_mib"] < 0:
        problems.append("device and alloc_mib must be 0 or more")
    if problems:
        module.fail_json(msg="; ".join(problems))
    deadline = time.time() + p["timeout"]
    # The wait on ps leaves the client time to release its context and exit within the timeout.
    ps_deadline = deadline - min(10.0, max(1.0, p["timeout"] * 0.2))
    plan = module_plan(module)
    p["pipe_directory"] = plan["pipe_directory"]
    control = reader_control(module, plan, timeout=p["timeout"])
    result = dict(changed=False, dialtone=False, client_checked=False, ps=[])
    servers_before = None
    try:
        lists = control.client_lists()
        result["ps"] = control.ps(lists)
        result["dialtone"] = True
        servers_before = set(lists)
    except DaemonNotRunning as error:
        if p["expect_mps"]:
            fail_control(module, error, "MPS dial-tone failed: no MPS control daemon answers in %s; start it "
                         "(gpulab.mps.mps_daemon or the nvidia-mps service) or point pipe_directory at the one that "
                         "runs" % p["pipe_directory"], **result)
    except MpsControlError as error:
        fail_control(module, error, "MPS dial-tone failed in %s" % p["pipe_directory"], **result)
    if module.check_mode:
        module.exit_json(**result)

    argv = client_argv(p["python"] or sys.executable, p["device"], p["alloc_mib"], hold=p["timeout"],
                       release_on_stdin=True)
    # The client gets the plan's environment (its pipe directory, the daemon's devices), never this task's.
    client = ClientProcess(argv, control.environment())
    server, serving = None, []
    try:
        try:
            report = client.report(deadline)
        except ValueError as error:
            client.release(deadline)
            out, err = client.output()
            module.fail_json(msg="The CUDA probe client gave no report (%s): %s" % (error, (err or out).strip()[-2000:]),
                             rc=client.proc.returncode, stdout=out, stderr=err, **result)
        result.update(client_checked=True, client=report)
        if report.get("error"):
            client.release(deadline)
            module.fail_json(msg="The CUDA probe client could not use GPU %d: %s" % (p["device"], report["error"]),
                             **result)
        # The proof, while the client holds its context: its PID in a server's client list (get_client_list prints
        # PIDs only; `ps` prints every client's argv[0] raw, so a row there is only a report).
        if result["dialtone"]:
            try:
                while True:
                    lists = control.client_lists()
                    server = next((s for s, pids in sorted(lists.items()) if report["pid"] in pids), None)
                    if server is not None or time.time() >= ps_deadline:
                        break
                    time.sleep(0.2)
                result["ps"] = control.ps(lists)
                if server is not None and server not in servers_before:
                    serving = lists[server]
            except MpsControlError as error:
                client.kill()
                fail_control(module, error, "Cannot read the daemon's ps while the probe client ran", **result)
        client.release(deadline)
    except ClientTimeout:
        out, err = client.output()
        module.fail_json(msg="The CUDA probe client on GPU %d did not finish within timeout=%d s and was killed: %s"
                         % (p["device"], p["timeout"], (err or out).strip()[-2000:] or "it printed nothing"),
                         stdout=out, stderr=err, **result)
    result["under_mps"] = server is not None
    if server is not None:
        result["server"] = server
        result["server_stopped"] = False
        # A server that this probe's client made start, and served only it, goes again: it would keep the
        # defaults it started with, and newer defaults would never reach this user's next clients.
        if serving == [report["pid"]]:
            try:
                if control.wait(lambda: not control.client_list(server), min(5.0, max(0.5, deadline - time.time()))):
                    control.shutdown_server(server)
                    result["server_stopped"] = True
            except MpsControlError:
                pass  # it went by itself, or a new client came: either way it is not ours to stop
    if p["expect_mps"] and server is None:
        module.fail_json(
            msg="CUDA client %d ran on GPU %d but is NOT an MPS client: the daemon in %s does not list it, so it fell "
                "back to running without MPS. Clients must see that daemon: same CUDA_MPS_PIPE_DIRECTORY, access to its "
                "sockets, and compute mode DEFAULT or EXCLUSIVE_PROCESS." % (report["pid"], p["device"], p["pipe_directory"]),
            **result)
    if not p["expect_mps"] and server is not None:
        module.fail_json(msg="CUDA client %d runs under MPS (server %d), but expect_mps is false" % (
            report["pid"], server), **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
