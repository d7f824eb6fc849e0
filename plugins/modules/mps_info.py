#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: mps_info
short_description: Report the NVIDIA MPS control daemon, its servers, clients and defaults
version_added: 0.1.0
description:
  - Asks the MPS control daemon of O(pipe_directory) whether it runs, which MPS servers it has,
    which CUDA clients are attached (the C(ps) table), and which defaults new servers will get.
  - For each server it also reports the values it logged in C(server.log) - at start, and any later
    per-server change - with exact pinned memory limits in bytes (C(logged)).
  - Changes nothing.
extends_documentation_fragment:
  - gpulab.mps.attributes
  - gpulab.mps.attributes.info_module
  - gpulab.mps.mps_control
  - gpulab.mps.mps_control.state_directory
options:
  devices:
    description:
      - MPS device ordinals whose default pinned memory limits are read.
      - By default the plan's devices; without O(plan), every GPU NVML lists, or device 0 when NVML is not available.
    type: list
    elements: int
  timeout:
    description:
      - Seconds each call of the control binary may take (1 to 3600); a call past it is killed and the task fails
        with the command, what it printed and what to check (a daemon that answers nothing is reported this way).
    type: int
    default: 30
  expect_running:
    description:
      - Whether a control daemon ought to run on O(pipe_directory). With V(false) (after a teardown) a daemon that
        stopped cleanly is healthy; one that died, leaving its pid file or log fifo, is not, either way.
    type: bool
    default: true
  fail_unhealthy:
    description:
      - Fail the task when RV(health) is not healthy, with the problems and what to do in the message (the result
        is returned all the same). For a health gate or a dial-tone.
    type: bool
    default: false
requirements:
  - nvidia-cuda-mps-control on the target
  - nvidia-ml-py (optional, to list the devices)
author:
  - gpulab.mps contributors (@gpulab)
"""

EXAMPLES = r"""
- name: Read the MPS state
  gpulab.mps.mps_info:
  register: mps

- name: Show the clients attached to MPS
  ansible.builtin.debug:
    msg: "{{ mps.clients | map(attribute='pid') | list }}"
"""

RETURN = r"""
running:
  description: Whether a control daemon answers on O(pipe_directory).
  returned: always
  type: bool
  sample: true
pid:
  description: PID of the control daemon, from its pid file; null when it is not running.
  returned: always
  type: int
  sample: 413
identity:
  description:
    - The control daemon's PID and start time (clock ticks since boot), which tell it from a later daemon; null when
      it is not running. M(gpulab.mps.mps_unit) returns the same pair for the daemon its service runs.
  returned: always
  type: list
  elements: int
  sample: [413, 290221]
pipe_directory:
  description: The pipe directory asked.
  returned: always
  type: str
  sample: /tmp/nvidia-mps
log_directory:
  description: The log directory asked.
  returned: always
  type: str
  sample: /var/log/nvidia-mps
servers:
  description: MPS servers of this daemon.
  returned: always
  type: list
  elements: dict
  sample:
    - pid: 486
      status: ACTIVE
      clients: [497]
      active_thread_percentage: 50.0
      pinned_memory_limit: {"0": "2G"}
      logged: {active_thread_percentage: 50.0, pinned_memory_limit: {"0": 2147483648}}
clients:
  description: The daemon's C(ps) table, one entry per client context.
  returned: always
  type: list
  elements: dict
  sample:
    - {pid: 497, id: 2, server: 486, device: GPU-058fcf08-fc4a-49f5, namespace: "4026531836", command: python3}
defaults:
  description:
    - Defaults that servers started from now on get. C(pinned_memory_limit) maps device ordinals to
      the CLI's read-back (whole units, rounded down), or null where no limit is set; where
      M(gpulab.mps.mps_daemon) recorded the exact value it set on this daemon, that value.
  returned: always
  type: dict
  sample: {active_thread_percentage: 100.0, pinned_memory_limit: {"0": "4G"}}
health:
  description:
    - Whether MPS is healthy here, judged the same way by every reader (the fleet's health gate, the dial-tone, the
      metrics). C(daemon) is V(running), V(stopped) (not running, left nothing), V(died) (not running, left its pid
      file or log fifo, so it crashed or was killed); a daemon that answers nothing within O(timeout) fails the
      task instead (the metrics collector reports it as V(unresponsive)).
    - C(problems) say what happened and what to do, one per finding; C(kind) is C(daemon_not_running), C(daemon_died),
      C(server_fault) (a server in FAULT, after a client hit a fatal GPU error; every client of
      that server got it, new clients are refused until they all exit) or C(server_exited) (a server exited
      without a shutdown being asked, since the daemon started; reported, but not unhealthy by itself).
  returned: always
  type: dict
  sample:
    healthy: false
    daemon: running
    faulted_servers: [492]
    problems:
      - kind: server_fault
        server: 492
        clients: [449, 637]
        message: "MPS server 492 is in FAULT (first noticed by client 449 at 2026-12-04 01:27:48.239): ..."
        action: "end those client processes (their CUDA contexts are already lost): ..."
stale_sockets:
  description: Sockets a stopped daemon left in O(pipe_directory) (only when no daemon runs).
  returned: always
  type: list
  elements: str
  sample: [control, control_lock, control_privileged]
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.gpulab.mps.plugins.module_utils._common import (
    MpsControlError, fail_control, module_plan, mps_argument_spec, query_gpus, reader_control, timeout_error)
from ansible_collections.gpulab.mps.plugins.module_utils._mps_health import summary as health_summary


def main():
    module = AnsibleModule(
        argument_spec=mps_argument_spec(devices=dict(type="list", elements="int"),
                                        state_directory=dict(type="str"),
                                        timeout=dict(type="int", default=30),
                                        expect_running=dict(type="bool", default=True),
                                        fail_unhealthy=dict(type="bool", default=False)),
        supports_check_mode=True,
    )
    error = timeout_error(module.params["timeout"])
    if error:
        module.fail_json(msg=error)
    plan = module_plan(module)
    devices = module.params["devices"]
    if devices is None:
        planned = (plan.get("daemon") or {}).get("devices")
        if planned:
            devices = sorted(int(o) for o in planned)
        else:
            gpus = query_gpus(module, required=False)[1]
            devices = [g["index"] for g in gpus] if gpus else [0]
    control = reader_control(module, plan, timeout=module.params["timeout"])
    try:
        # A call past the timeout fails the task (fail_control: the command, what it printed, what to check).
        state, health = control.health(devices, expect_running=module.params["expect_running"], tolerate_timeout=False)
    except MpsControlError as error:
        fail_control(module, error, "Cannot read the MPS state in %s" % plan["pipe_directory"])
    state["health"] = health
    if module.params["fail_unhealthy"] and not health["healthy"]:
        module.fail_json(msg="MPS on %s is not healthy: %s" % (plan["pipe_directory"], health_summary(health)),
                         **state)
    module.exit_json(changed=False, **state)


if __name__ == "__main__":
    main()
