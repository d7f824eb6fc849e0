#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: mps_daemon
short_description: Start, stop or restart the NVIDIA MPS control daemon and set its defaults
version_added: 0.1.0
description:
  - Manages the MPS control daemon (C(nvidia-cuda-mps-control -d)) of one pipe directory, and the
    defaults it gives MPS servers (active thread percentage and pinned device memory limit).
  - Every value is validated before anything changes (the CLI silently ignores values it cannot
    read, and silently drops a pinned limit it cannot parse), and read back afterwards.
  - Defaults bind only servers started after they are set. A running server that holds other
    values is reported, and restarted only when O(apply_to_running=restart) and it has no clients.
  - Stopping while CUDA clients are attached fails and lists them, unless O(force=true).
  - Where systemd manages the daemon (role C(gpulab.mps.mps_host)), use this module with
    O(state=started) after the service starts, to set and verify the defaults.
  - On a host with other users, the pipe and log directories are used only when they are trusted (owned by
    the daemon's user, writable by nobody else, no symbolic link); a missing one is created race-free.
    The exact limits and a lock that serialises runs on one pipe directory live in O(state_directory).
extends_documentation_fragment:
  - gpulab.mps.attributes
  - gpulab.mps.mps_control
  - gpulab.mps.mps_control.state_directory
options:
  defaults_applied_at_start:
    description:
      - The daemon's service sets these very defaults itself on every start (the unit of the
        C(gpulab.mps.mps_host) role). The exact pinned limits recorded then hold for a daemon that service
        restarted too, so a restarted daemon with the right limits is not reported as changed.
      - By default, true when the plan's daemon is managed by systemd, false without O(plan).
    type: bool
  state:
    description:
      - V(started) starts the daemon when none answers on O(pipe_directory), then applies the defaults.
      - V(stopped) quits the daemon (refused while clients are attached, unless O(force=true)) and
        removes the sockets a quit leaves behind.
      - V(restarted) stops then starts it, with the same rules about clients.
    type: str
    choices: [started, stopped, restarted]
    default: started
  directory_mode:
    description:
      - Mode of O(pipe_directory) and O(log_directory) when this module creates them, as
        M(ansible.builtin.file) reads a mode - a quoted octal string (V("0711")), or an integer, which YAML
        gives for an unquoted 0711. A mode that lets group or others write is refused.
      - Existing directories keep their mode; one that is not trusted is refused, never changed.
    type: raw
    default: "0755"
  visible_devices:
    description:
      - GPUs the daemon may use, by UUID (or unique UUID prefix) or NVML index. Passed to the daemon as
        C(CUDA_VISIBLE_DEVICES) (UUIDs), so that its device ordinals are the positions in this list.
      - Applies when the daemon starts; a running daemon with other devices is reported, not restarted.
    type: list
    elements: str
  default_active_thread_percentage:
    description:
      - Default active thread percentage (1 to 100) of servers started from now on. A boolean is refused.
    type: raw
  default_pinned_memory_limit:
    description:
      - Default pinned device memory limit of servers started from now on.
      - One size for every device (V(2G), V(1536M), V(512MiB)), or a dict from device (NVML index or
        UUID) to size. Units are binary (K, M, G, T); the limit must be whole MiB.
      - At most the memory of the GPU. The CLI reads this back in whole units rounded down (1536M shows as 1G);
        the module compares accordingly, and keeps the exact value it set in O(state_directory).
    type: raw
  multiuser_server:
    description:
      - Start the daemon as a multi-user server (C(nvidia-cuda-mps-control -d -M)), so that clients of different
        Unix users share one MPS server instead of waiting for each other's (docs/qos.md has what this driver does
        with and without it). With O(plan), the plan's C(daemon.multiuser_server).
      - Applies when the daemon starts; a running daemon started the other way is reported, not restarted.
    type: bool
    default: false
  apply_to_running:
    description:
      - What to do with running servers that hold other values than the defaults.
      - V(report) leaves them alone and warns. V(restart) shuts down each such server that has no
        clients and starts a new one for the same user, which takes the defaults. Servers with
        clients are never touched.
    type: str
    choices: [report, restart]
    default: report
  force:
    description:
      - Stop or restart even while clients are attached. Their work is lost; after O(timeout) seconds
        the daemon forcibly shuts their servers down (C(quit -t)). Without it the daemon is only asked to
        C(quit), which waits for clients.
    type: bool
    default: false
  timeout:
    description:
      - Seconds to wait for the daemon to start or to stop, for a server in FAULT to be ACTIVE again
        (O(fault_recovery=end_clients)), and the bound of every call of the control binary (1 to 3600).
    type: int
    default: 30
  fault_recovery:
    description:
      - What to do, when the daemon runs, with an MPS server in FAULT (a client hit a fatal GPU error; every client of
        that server got the error, and new clients are refused until they all exit; docs/fault.md).
      - V(none) changes nothing; the result reports the servers in FAULT (RV(fault_recovery), RV(health)) and a
        warning says what to do.
      - V(end_clients) ends the client processes of the servers in FAULT, and of no other server (their CUDA contexts
        are already lost) with SIGTERM, up to 10 s, then SIGKILL; then it waits up to O(timeout) seconds for each server
        to be ACTIVE again and reads it back. A client is ended only when it provably is that process on this host,
        in this host's PID namespace (a client in a pod or a container is reported, with the advice to end that pod,
        never signalled), alive, and with the same start time when it is signalled as when it was read. The task
        fails, after ending what it could, when a server is still in FAULT.
      - C(terminate_client) of the control daemon is never used; on driver 580 it did not end a client that was
        not calling CUDA, and the daemon then answered no command until the clients exited by themselves.
      - With O(state=stopped) only V(none) is accepted (a stopped daemon has no server to recover).
    type: str
    choices: [none, end_clients]
    default: none
    version_added: 0.2.0
requirements:
  - nvidia-cuda-mps-control on the target
  - nvidia-ml-py, when O(visible_devices) or O(default_pinned_memory_limit) is given without O(plan) (to check
    the devices)
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
  idempotent:
    support: full
    details: V(restarted) always changes; O(fault_recovery=end_clients) changes only while a server is in FAULT.
notes:
  - With O(plan), O(visible_devices), O(default_active_thread_percentage) and O(default_pinned_memory_limit) may not be
    given, and O(multiuser_server) is the plan's C(daemon.multiuser_server).
  - The daemon gets the environment of the plan (its pipe and log directories, and C(CUDA_VISIBLE_DEVICES) only where
    planned), never the environment the task runs with.
  - Defaults set through the CLI live in the daemon's memory; a restarted daemon starts with none.
    The C(gpulab.mps.mps_host) role's systemd unit re-applies them on every start.
  - A daemon that is already gone counts as stopped; what it left in the pipe directory (its pid file, fifo
    and sockets, when they are the daemon user's) is removed once its PID is dead.
author:
  - gpulab.mps contributors (@gpulab)
"""

EXAMPLES = r"""
- name: Start MPS with a quarter of the SMs and 20 GiB per client by default
  gpulab.mps.mps_daemon:
    state: started
    default_active_thread_percentage: 25
    default_pinned_memory_limit: 20G

- name: Per-device limits, by index and by UUID
  gpulab.mps.mps_daemon:
    default_pinned_memory_limit:
      "0": 1536M
      GPU-058fcf08-fc4a-49f5-ddd9-6d7fedc642b2: 4G

- name: Apply new defaults to idle servers too
  gpulab.mps.mps_daemon:
    default_active_thread_percentage: 50
    apply_to_running: restart

- name: Apply the host's plan (what the mps_host role does)
  gpulab.mps.mps_daemon:
    plan: "{{ preflight_mps_plan }}"

- name: Bring servers in FAULT back by ending their clients (their CUDA work is already lost)
  gpulab.mps.mps_daemon:
    state: started
    fault_recovery: end_clients
  register: mps_recovery

- name: Stop MPS, even under running jobs
  gpulab.mps.mps_daemon:
    state: stopped
    force: true
"""

RETURN = r"""
daemon:
  description: The control daemon after the task.
  returned: always
  type: dict
  sample: {running: true, pid: 413, pipe_directory: /tmp/nvidia-mps, log_directory: /var/log/nvidia-mps,
           control_binary: /usr/bin/nvidia-cuda-mps-control}
servers:
  description: MPS servers after the task (see M(gpulab.mps.mps_info)), each with C(matches_defaults).
  returned: always
  type: list
  elements: dict
  sample: [{pid: 486, status: ACTIVE, clients: [497], active_thread_percentage: 50.0, matches_defaults: true}]
clients:
  description: The daemon's C(ps) table after the task.
  returned: always
  type: list
  elements: dict
  sample: [{pid: 497, id: 2, server: 486, device: GPU-058fcf08-fc4a-49f5, namespace: "4026531836", command: python3}]
defaults:
  description: Defaults in force after the task, as read back (pinned limits as the CLI shows them).
  returned: always
  type: dict
  sample: {active_thread_percentage: 50.0, pinned_memory_limit: {"0": "1G"}}
devices:
  description: MPS device ordinal to GPU UUID, for the devices this task configured.
  returned: when NVML was queried
  type: dict
  sample: {"0": GPU-058fcf08-fc4a-49f5-ddd9-6d7fedc642b2}
requested:
  description:
    - The defaults asked for, resolved to MPS device ordinals and to the exact sizes sent to the CLI,
      and O(visible_devices) resolved to UUIDs (null when not given); with O(plan), the plan's.
  returned: always
  type: dict
  sample: {active_thread_percentage: 50.0, pinned_memory_limit: {"0": 1536M},
           visible_devices: [GPU-058fcf08-fc4a-49f5-ddd9-6d7fedc642b2]}
restarted_servers:
  description: Servers shut down for O(apply_to_running=restart), with the servers started in their place.
  returned: always
  type: list
  elements: dict
  sample: [{old: 486, new: 530}]
stale_sockets_removed:
  description: What a stopped daemon left in O(pipe_directory) and this task removed (its sockets, fifo, pid file).
  returned: always
  type: list
  elements: str
  sample: [control, control_lock, control_privileged]
fault_recovery:
  description:
    - The servers that were in FAULT when the task read the daemon, and what O(fault_recovery) did about them.
    - C(ended) are the clients ended (C(killed) those of them that needed SIGKILL), C(would_end) those that are or
      would be (check mode), C(refused) the clients that were not ended and why (another PID namespace, so end that
      pod), C(gone) clients that had exited already, C(status_before) and C(status_after) each server's status
      (C(status_after) predicted in check mode).
  returned: always
  type: dict
  sample:
    mode: end_clients
    faulted_servers: [492]
    would_end: [449, 637]
    ended: [449, 637]
    killed: [637]
    refused: []
    gone: []
    status_before: {"492": FAULT}
    status_after: {"492": ACTIVE}
health:
  description:
    - The health of MPS after the task, as M(gpulab.mps.mps_info) reports it (the same judgement); in check mode, as
      it is now.
  returned: always
  type: dict
  sample: {healthy: true, daemon: running, faulted_servers: [], problems: []}
"""


from ansible.module_utils.basic import AnsibleModule

from ansible_collections.gpulab.mps.plugins.module_utils._common import mps_argument_spec, module_plan
from ansible_collections.gpulab.mps.plugins.module_utils._mps_daemon import DaemonError, DaemonState


def main():
    module = AnsibleModule(
        argument_spec=mps_argument_spec(
            state=dict(type="str", default="started", choices=["started", "stopped", "restarted"]),
            plan=dict(type="dict"),
            directory_mode=dict(type="raw", default="0755"),
            visible_devices=dict(type="list", elements="str"),
            default_active_thread_percentage=dict(type="raw"),
            default_pinned_memory_limit=dict(type="raw"),
            apply_to_running=dict(type="str", default="report", choices=["report", "restart"]),
            force=dict(type="bool", default=False),
            timeout=dict(type="int", default=30),
            state_directory=dict(type="str"),
            defaults_applied_at_start=dict(type="bool"),
            multiuser_server=dict(type="bool", default=False),
            fault_recovery=dict(type="str", default="none", choices=["none", "end_clients"]),
        ),
        mutually_exclusive=[("plan", "visible_devices"), ("plan", "default_active_thread_percentage"),
                            ("plan", "default_pinned_memory_limit")],
        supports_check_mode=True,
    )
    p = module.params
    # NVML is read only when devices or pinned limits must be resolved without the host's plan.
    plan = module_plan(module, resolve_devices=p["state"] != "stopped" and (
        bool(p["visible_devices"]) or p["default_pinned_memory_limit"] not in (None, "")))
    try:
        daemon = DaemonState(plan, state=p["state"], check_mode=module.check_mode, force=p["force"],
                             timeout=p["timeout"], apply_to_running=p["apply_to_running"],
                             fault_recovery=p["fault_recovery"], directory_mode=p["directory_mode"],
                             defaults_applied_at_start=p["defaults_applied_at_start"])
        result = daemon.result(*daemon.run(), diff=module._diff)
    except DaemonError as error:
        module.fail_json(msg=str(error), **error.details)
    for warning in daemon.warnings:
        module.warn(warning)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
