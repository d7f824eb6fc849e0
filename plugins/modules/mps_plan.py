#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: mps_plan
short_description: Compute the MPS plan of a host once - its GPUs, devices, limits, owner, paths and resources
version_added: 0.2.0
description:
  - Reads the driver and the GPUs through NVML once, finds C(nvidia-cuda-mps-control), and checks and resolves
    every MPS setting of the host into one plan - the GPUs the daemon uses (each GPU once, by UUID), its
    defaults in exact bytes by MPS device ordinal, who owns MPS on the host (the host daemon or the device
    plugin), the pipe and log directories, how the daemon is managed, and what the device plugin advertises
    (resources, replicas and memory per replica).
  - The C(gpulab.mps.preflight) role runs it and publishes the plan as the fact C(preflight_mps_plan), which every
    later role reads; M(gpulab.mps.mps_daemon) takes it as its O(gpulab.mps.mps_daemon#module:plan) option.
  - Fails, naming every bad setting and what to change, before anything changes - a pipe, log or state directory
    that another user made or can write among them. Changes nothing itself.
extends_documentation_fragment:
  - gpulab.mps.attributes
  - gpulab.mps.attributes.info_module
options:
  owner:
    description:
      - Who runs the MPS control daemon on this host. V(host) - the host daemon (role C(gpulab.mps.mps_host)),
        which pods reach through the mounted pipe directory. V(plugin) - the device plugin's own daemon; the host
        daemon is then planned stopped.
    type: str
    choices: [host, plugin]
    default: host
  host_state:
    description:
      - State asked of the host daemon (C(mps_host_state)). With O(owner=plugin) a V(started) becomes V(stopped).
    type: str
    choices: [started, stopped, absent]
    default: started
  pipe_directory:
    description:
      - The daemon's pipe directory (C(CUDA_MPS_PIPE_DIRECTORY)), an absolute path of letters, digits and
        C(. _ - + @ /) (so that a systemd unit carries it without quoting).
    type: str
    default: /tmp/nvidia-mps
  log_directory:
    description: The daemon's log directory (C(CUDA_MPS_LOG_DIRECTORY)), an absolute path like O(pipe_directory).
    type: str
    default: /var/log/nvidia-mps
  state_directory:
    description:
      - Where the collection keeps what it writes about the daemon (the exact limits it set, a lock); by default
        C(/var/lib/gpulab-mps) for root, C(~/.local/state/gpulab-mps) for other users.
    type: str
  control_binary:
    description:
      - Path of the MPS control binary, whatever its file name. By default C(nvidia-cuda-mps-control) is searched
        in E(PATH), then in O(binary_directories).
    type: path
  binary_directories:
    description: Where C(nvidia-cuda-mps-control) is looked for after E(PATH).
    type: list
    elements: path
    default: [/usr/local/nvidia/bin, /usr/bin, /usr/local/bin, /usr/local/cuda/bin, /usr/sbin]
  visible_devices:
    description:
      - GPUs the daemon may use, by NVML index or UUID (or unique UUID prefix), each GPU once; empty for all.
        The daemon numbers its devices by their position in this list.
    type: list
    elements: str
  default_active_thread_percentage:
    description: Default active thread percentage (1 to 100) of new MPS servers; a boolean is refused.
    type: raw
  default_pinned_memory_limit:
    description:
      - Default pinned device memory limit of new MPS servers - one size for every GPU (V(20G), V(1536M)), or a
        dict from GPU (index or UUID) to size. Whole MiB, binary units, at most the GPU's memory.
    type: raw
  replica_limits:
    description:
      - What the host daemon takes from the device plugin's replicas when O(owner=host) and O(sharing) is given (the
        plugin then only counts replicas, and the host daemon is what enforces them).
      - V(auto) - the replicas' share (as V(memory_and_threads)) only where a device plugin really counts replicas
        against this host's daemon - the Kubernetes stages run on this host (O(kubernetes)) - and no limit elsewhere
        (a lab without Kubernetes would hold every client to a replica's share for nothing). The plan says which
        rule applied and why in C(daemon.limits_rule).
      - V(memory_and_threads) - per GPU, a default pinned memory limit of that GPU's memory divided by its replicas
        (whole MiB, rounded down), and a default active thread percentage of 100 divided by the replicas (one value
        for every GPU of the daemon), as the device plugin's own MPS daemon does. V(memory) - only the memory limit. V(none) - neither.
      - An explicit O(default_pinned_memory_limit) or O(default_active_thread_percentage) wins; where it differs from
        the replicas' share the plan warns.
    type: str
    choices: [auto, memory_and_threads, memory, none]
    default: auto
    version_added: 0.3.0
  kubernetes:
    description:
      - Whether the Kubernetes stages run on this host (C(gpulab_kubernetes)) - V(auto) runs them against an existing
        cluster (O(kubernetes_target=existing)) or where a Docker engine's socket is there for a Kind cluster; V(true)
        and V(false) decide. Planned as C(kubernetes.enabled) with the reason; O(replica_limits=auto) follows it.
    type: str
    choices: [auto, "true", "false"]
    default: auto
    version_added: 0.4.0
  kubernetes_target:
    description: V(kind) (a Kind lab on this host) or V(existing) (a cluster you run; C(kind_cluster_target)).
    type: str
    choices: [kind, existing]
    default: kind
    version_added: 0.4.0
  multiuser_server:
    description:
      - Run the host daemon as a multi-user server (C(nvidia-cuda-mps-control -d -M)), for hosts where several Unix
        users run CUDA clients (C(mps_host_multiuser_server); docs/qos.md). Planned as C(daemon.multiuser_server),
        with what it means for a second user in C(daemon.users_rule).
      - V(true) (the default since 0.4.0) - one root server serves every user's clients at once; a client's fatal GPU
        error (FAULT) then reaches every user's clients of that server. V(false) - a server per user, one user at a
        time - on the H200 a second user's client waited, silently, until the first user's clients had all exited.
    type: bool
    default: true
  service_manager:
    description: V(systemd) (a unit), V(direct) (the module runs the daemon) or V(auto) (systemd where it runs).
    type: str
    choices: [auto, systemd, direct]
    default: auto
  service_name:
    description:
      - The systemd service of the host daemon, without C(.service) (C(mps_host_service_name)); a systemd unit name
        (letters, digits and C(:_.-)), since it goes into the unit's files. Planned as C(daemon.service_name).
    type: str
    default: nvidia-mps
    version_added: 0.4.0
  lib_directory:
    description:
      - Where the collection keeps its client and the entry point the unit runs (and the metrics collector), root's.
    type: str
    default: /usr/local/lib/gpulab-mps
    version_added: 0.4.0
  config_directory:
    description: Where the collection keeps the plan the unit and the collector read (C(plan.json)), root's.
    type: str
    default: /etc/gpulab-mps
    version_added: 0.4.0
  unit_directory:
    description: Where the systemd units of the collection go.
    type: str
    default: /etc/systemd/system
    version_added: 0.4.0
  tmpfiles_directory:
    description: Where the C(tmpfiles.d) entry of the pipe and log directories goes.
    type: str
    default: /etc/tmpfiles.d
    version_added: 0.4.0
  qos_classes:
    description:
      - The QoS classes of this host's MPS clients, declared once - a dict from class name (lower-case letters,
        digits, dashes) to its settings. Each client runs in a class through its environment (the file
        O(qos_directory)/<class>.env on a host, the env of a pod); see C(docs/qos.md).
      - C(active_thread_percentage) (1 to 100, or null for what the client's server allows) becomes
        C(CUDA_MPS_ACTIVE_THREAD_PERCENTAGE); a client can only lower its server's share, so a class above
        O(default_active_thread_percentage) is refused (the default classes only warn). C(client_priority) (0 normal, 1 below normal) becomes
        C(CUDA_MPS_CLIENT_PRIORITY). C(pinned_memory_limit) (one size, at most the smallest GPU's memory) becomes
        C(CUDA_MPS_PINNED_DEVICE_MEM_LIMIT) for every device. C(description) is one line for the file's header.
      - An unknown setting is refused (a misspelt key would otherwise be a class without its limit). V({}) plans
        no class.
    type: dict
    default:
      latency:
        active_thread_percentage: null
        client_priority: 0
        pinned_memory_limit: null
        description: "a latency-critical service: normal priority, the SMs its server allows"
      batch:
        active_thread_percentage: 12
        client_priority: 1
        pinned_memory_limit: null
        description: "throughput work beside a latency-critical service: 12 % of the SMs, below-normal priority"
  qos_directory:
    description:
      - Where the role C(gpulab.mps.mps_host) writes each class's environment, C(<class>.env) (root's, 0644), for a
        systemd service (C(EnvironmentFile=)) or a job script (C(set -a; . FILE; set +a)) to run in its class.
    type: str
    default: /etc/gpulab-mps/qos
  min_driver_version:
    description: Oldest driver accepted, as a branch (V(550)) or a full version (V(550.54.15)).
    type: str
    default: "550"
  sharing:
    description:
      - What the NVIDIA device plugin advertises on this host. Omit it when no device plugin is planned.
    type: dict
    suboptions:
      mode:
        description:
          - V(aggregate) - one resource C(nvidia.com/gpu) for every GPU; V(individual) - one resource per GPU
            (C(nvidia.com/gpu0), ...).
        type: str
        choices: [aggregate, individual]
        default: aggregate
      replicas:
        description: Replicas (pods sharing it) per GPU, 2 up to the MPS client cap (48 from Volta on, 16 before).
        type: int
        default: 4
      replicas_per_gpu:
        description: Individual mode - replicas of some GPUs, by index.
        type: dict
        default: {}
      name_pattern:
        description: Individual mode - the resource name of GPU N under C(nvidia.com/) (C(%d) is the index).
        type: str
        default: gpu%d
requirements:
  - nvidia-ml-py (module pynvml) on the target
  - the NVIDIA driver (libnvidia-ml.so.1)
author:
  - gpulab.mps contributors (@gpulab)
"""

EXAMPLES = r"""
- name: Plan MPS on this host (the preflight role does this)
  gpulab.mps.mps_plan:
    pipe_directory: /tmp/nvidia-mps
    default_active_thread_percentage: 50
    default_pinned_memory_limit: 20G
    sharing: {mode: aggregate, replicas: 4}
  register: plan

- name: Apply it
  gpulab.mps.mps_daemon:
    plan: "{{ plan.plan }}"
"""

RETURN = r"""
plan:
  description:
    - The plan. C(driver) and C(gpus) as M(gpulab.mps.gpu_info) reports them; C(host) (whether systemd runs, the
      Python the unit's entry point runs with); C(files) (the collection's directories and C(plan_file));
      C(kubernetes) (C(enabled), C(reason), C(target)); C(daemon) with C(state), C(service_manager),
      C(service_name), C(multiuser_server), C(users_rule) and C(limits_rule) (what several users and the replicas
      mean for this daemon, in one sentence each), C(visible_devices) (UUIDs or null), C(active_thread_percentage),
      C(pinned_memory_limit) (exact bytes by MPS device ordinal), C(pinned_memory_limit_mps) (the sizes sent to
      the CLI), C(devices) (ordinal to UUID), C(environment) and C(replica_limits) (what the replicas ask of the
      daemon - O(replica_limits), C(pinned_memory_limit) by ordinal, C(active_thread_percentage) - or null where
      they do not apply); C(sharing), the device plugin's plan (null without O(sharing)); C(qos), the classes (their
      checked values, C(environment), C(env_file) and C(env_file_environment), which adds the pipe directory when
      the host daemon serves clients); C(warnings), among them every mismatch between an explicit default and the
      replicas' share.
  returned: success
  type: dict
  sample:
    version: 2
    owner: host
    host: {systemd: true, python: /usr/bin/python3}
    kubernetes: {enabled: true, target: kind, reason: "a Docker engine's socket is here for a Kind cluster"}
    files: {lib_directory: /usr/local/lib/gpulab-mps, config_directory: /etc/gpulab-mps, plan_file: /etc/gpulab-mps/plan.json,
            unit_directory: /etc/systemd/system, tmpfiles_directory: /etc/tmpfiles.d}
    control_binary: /usr/local/nvidia/bin/nvidia-cuda-mps-control
    pipe_directory: /tmp/nvidia-mps
    log_directory: /var/log/nvidia-mps
    state_directory: /var/lib/gpulab-mps
    driver: {driver_version: 580.159.04, driver_branch: 580, cuda_driver_version: "13.0"}
    gpus: [{index: 0, uuid: GPU-3a1b8d4e-0000-0000-0000-000000000000, name: NVIDIA H200, memory_total_mib: 143771}]
    daemon:
      state: started
      service_manager: systemd
      service_name: nvidia-mps
      multiuser_server: true
      users_rule: "Several users: one multi-user server (-M) serves every user's clients at once; ..."
      limits_rule: "Replica limits: the device plugin counts 20 replicas per GPU against this host's daemon ..."
      visible_devices: null
      active_thread_percentage: 5.0
      pinned_memory_limit: {"0": 7537164288}
      pinned_memory_limit_mps: {"0": 7188M}
      replica_limits: {mode: memory_and_threads, pinned_memory_limit: {"0": 7537164288}, active_thread_percentage: 5.0}
      devices: {"0": GPU-3a1b8d4e-0000-0000-0000-000000000000}
      environment: {CUDA_MPS_PIPE_DIRECTORY: /tmp/nvidia-mps, CUDA_MPS_LOG_DIRECTORY: /var/log/nvidia-mps}
    sharing:
      mode: aggregate
      resources: {nvidia.com/gpu: 20}
    qos:
      directory: /etc/gpulab-mps/qos
      classes:
        batch:
          active_thread_percentage: 12.0
          client_priority: 1
          pinned_memory_limit: null
          environment: {CUDA_MPS_ACTIVE_THREAD_PERCENTAGE: "12", CUDA_MPS_CLIENT_PRIORITY: "1"}
          env_file: /etc/gpulab-mps/qos/batch.env
    warnings: []
"""

import os
import stat
import sys

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.gpulab.mps.plugins.module_utils._common import query_gpus
from ansible_collections.gpulab.mps.plugins.module_utils._mps_control import (
    default_state_directory, find_control_binary)
from ansible_collections.gpulab.mps.plugins.module_utils._mps_output import BINARY_DIRECTORIES
from ansible_collections.gpulab.mps.plugins.module_utils._plan import (
    FILE_DIRECTORIES, PlanError, build_plan, host_problems, library_path, trusted_python)
from ansible_collections.gpulab.mps.plugins.module_utils._qos import DEFAULT_CLASSES, DEFAULT_DIRECTORY, qos_plan
from ansible_collections.gpulab.mps.plugins.module_utils._trust import directory_problem


def is_socket(path):
    try:
        return stat.S_ISSOCK(os.stat(path).st_mode)
    except OSError:
        return False


def main():
    module = AnsibleModule(
        argument_spec=dict(
            owner=dict(type="str", default="host", choices=["host", "plugin"]),
            host_state=dict(type="str", default="started", choices=["started", "stopped", "absent"]),
            pipe_directory=dict(type="str", default="/tmp/nvidia-mps"),
            log_directory=dict(type="str", default="/var/log/nvidia-mps"),
            state_directory=dict(type="str"),
            control_binary=dict(type="path"),
            binary_directories=dict(type="list", elements="path", default=list(BINARY_DIRECTORIES)),
            visible_devices=dict(type="list", elements="str"),
            default_active_thread_percentage=dict(type="raw"),
            default_pinned_memory_limit=dict(type="raw"),
            replica_limits=dict(type="str", default="auto", choices=["auto", "memory_and_threads", "memory", "none"]),
            kubernetes=dict(type="str", default="auto", choices=["auto", "true", "false"]),
            kubernetes_target=dict(type="str", default="kind", choices=["kind", "existing"]),
            service_manager=dict(type="str", default="auto", choices=["auto", "systemd", "direct"]),
            service_name=dict(type="str", default="nvidia-mps"),
            lib_directory=dict(type="str", default=dict(FILE_DIRECTORIES)["lib_directory"]),
            config_directory=dict(type="str", default=dict(FILE_DIRECTORIES)["config_directory"]),
            unit_directory=dict(type="str", default=dict(FILE_DIRECTORIES)["unit_directory"]),
            tmpfiles_directory=dict(type="str", default=dict(FILE_DIRECTORIES)["tmpfiles_directory"]),
            multiuser_server=dict(type="bool", default=True),
            qos_classes=dict(type="dict", default=DEFAULT_CLASSES),
            qos_directory=dict(type="str", default=DEFAULT_DIRECTORY),
            min_driver_version=dict(type="str", default="550"),
            sharing=dict(type="dict", options=dict(
                mode=dict(type="str", default="aggregate", choices=["aggregate", "individual"]),
                replicas=dict(type="int", default=4),
                replicas_per_gpu=dict(type="dict", default={}),
                name_pattern=dict(type="str", default="gpu%d"),
            )),
        ),
        supports_check_mode=True,
    )
    p = module.params
    driver, gpus = query_gpus(module)
    binary, binary_error = find_control_binary(p["control_binary"], p["binary_directories"])
    problems = host_problems(driver, gpus, p["min_driver_version"]) + ([binary_error] if binary_error else [])
    if problems:
        module.fail_json(msg="This host cannot run MPS: " + "; ".join(problems), errors=problems,
                         driver=driver, gpus=gpus)
    # What the plan reads of this host, once: whether systemd runs, an interpreter root may run for the unit's entry
    # point, and the trusted directories of LD_LIBRARY_PATH (the daemon gets exactly these, never a later task's).
    settings = dict(p, control_binary=binary, systemd_running=os.path.isdir("/run/systemd/system"),
                    state_directory=p["state_directory"] or default_state_directory(),
                    python=trusted_python(["/usr/bin/python3", sys.executable]),
                    library_path=library_path(os.environ.get("LD_LIBRARY_PATH")),
                    docker_socket=is_socket("/var/run/docker.sock"))
    errors = []
    try:
        plan = build_plan(driver, gpus, settings)
    except PlanError as error:
        plan, errors = None, list(error.errors)
    # The classes are checked against the daemon's defaults when those resolved; every bad setting is named at once.
    qos, qos_errors, qos_warnings = qos_plan(
        p["qos_classes"], p["qos_directory"], gpus, plan["daemon"] if plan else None,
        plan["pipe_directory"] if plan and plan["owner"] == "host" else None,
        strict=p["qos_classes"] != DEFAULT_CLASSES)
    errors.extend(qos_errors)
    if plan:
        # A directory another user made (or can write) is refused here already, so that a fleet excludes the node
        # in preflight; mps_daemon checks again when it uses them.
        errors.extend("%s: %s" % (option, problem) for option, problem in (
            (option, directory_problem(plan[option], os.geteuid(), creatable=True))
            for option in ("pipe_directory", "log_directory", "state_directory")) if problem)
    if plan and plan["daemon"]["service_manager"] == "systemd" and not plan["host"]["python"]:
        errors.append("the host's systemd unit runs the collection's entry point with Python, and no python3 that "
                      "root may run was found (/usr/bin/python3, owned by root and writable by nobody else)")
    if errors:
        module.fail_json(msg="Invalid MPS settings, nothing was changed: " + "; ".join(errors),
                         errors=errors, driver=driver, gpus=gpus)
    plan["qos"] = qos
    plan["warnings"].extend(qos_warnings)
    for warning in plan["warnings"]:
        module.warn(warning)
    module.exit_json(changed=False, plan=plan)


if __name__ == "__main__":
    main()
