# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""The MPS plan of one host: every fact about it that the roles need, computed once.

This is a private module_utils of gpulab.mps: its API may change without notice.

The module gpulab.mps.mps_plan reads NVML once and calls build_plan(); the preflight role publishes
the result as the fact preflight_mps_plan, and everything after it reads that fact: mps_host (its unit,
its drop-in and the defaults it applies, through mps_daemon's `plan` option), the fleet's drain
decision, the device plugin, both pod builders, the workloads. mps_daemon without a plan resolves its
own options with daemon_plan(), the same code. Pure: data in, data out; nothing here touches the host.
"""

from __future__ import annotations

import json
import os

from ansible_collections.gpulab.mps.plugins.module_utils import _device_plugin as dp
from ansible_collections.gpulab.mps.plugins.module_utils._formats import FormatError, unit_name
from ansible_collections.gpulab.mps.plugins.module_utils._mps_control import (
    daemon_environment, default_state_directory, find_control_binary)
from ansible_collections.gpulab.mps.plugins.module_utils._mps_output import BINARY_DIRECTORIES
from ansible_collections.gpulab.mps.plugins.module_utils._nvml import driver_problem, resolve_devices
from ansible_collections.gpulab.mps.plugins.module_utils._sizes import (
    MIB, SizeError, mps_size, parse_size, readback_matches)
from ansible_collections.gpulab.mps.plugins.module_utils._trust import (
    executable_problem, inspect_directory, normalize_path)

PLAN_VERSION = 2
OWNERS = ("host", "plugin")
HOST_STATES = ("started", "stopped", "absent")
SERVICE_MANAGERS = ("auto", "systemd", "direct")
MPS_COMPUTE_MODES = ("default", "exclusive_process")
# What the host daemon takes from the device plugin's replicas (owner host, sharing planned): the pinned memory
# limit per GPU (its memory // its replicas) and the active thread percentage (100 // replicas), like upstream's own
# MPS daemon; only the memory limit; or nothing.
REPLICA_LIMITS = ("auto", "memory_and_threads", "memory", "none")
KUBERNETES = ("auto", "true", "false")
# Where the collection keeps its own files on a host: the client and its entry point (lib), the plan the unit and the
# collector read (config), the units, the tmpfiles.d entries. All root's, made under the trust rules (_files).
FILE_DIRECTORIES = (("lib_directory", "/usr/local/lib/gpulab-mps"), ("config_directory", "/etc/gpulab-mps"),
                    ("unit_directory", "/etc/systemd/system"), ("tmpfiles_directory", "/etc/tmpfiles.d"))


class PlanError(ValueError):
    """Settings that cannot make a plan: `errors` lists every one, each saying what to change."""

    def __init__(self, errors):
        super(PlanError, self).__init__("; ".join(errors))
        self.errors = list(errors)


def percentage(value, option="default_active_thread_percentage"):
    """(float or None, error or None): an active thread percentage, 1 to 100. Booleans are refused."""
    if value is None or value == "":
        return None, None
    if isinstance(value, bool):
        return None, "%s must be a number between 1 and 100, got %r" % (option, value)
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None, "%s must be a number between 1 and 100, got %r" % (option, value)
    if not 1 <= number <= 100:
        return None, ("%s must be between 1 and 100, got %g (the CLI would silently keep its old value)"
                      % (option, number))
    return number, None


def pinned_request(value):
    """default_pinned_memory_limit as ({selector: bytes}, errors); {"*": bytes} for one size for every GPU."""
    if value is None or value == "":
        return None, []
    items = value.items() if isinstance(value, dict) else [("*", value)]
    request, errors = {}, []
    for selector, size in items:
        where = "" if selector == "*" else " for device %s" % selector
        try:
            size_bytes = parse_size(size)
            mps_size(size_bytes)
        except SizeError as error:
            errors.append("default_pinned_memory_limit%s: %s" % (where, error))
            continue
        request[str(selector)] = size_bytes
    return request, errors


def _unique_indexes(gpus, selectors, option):
    """NVML indexes for selectors, each GPU once: naming one GPU twice (by index and UUID) is an error."""
    indexes, errors = resolve_devices(gpus, selectors)
    errors = ["%s: %s" % (option, e) for e in errors]
    seen = {}
    for selector, index in zip([s for s in selectors if _resolves(gpus, s)], indexes):
        if index in seen:
            errors.append("%s names GPU %d twice (as %s and %s): give each GPU once" % (
                option, index, seen[index], selector))
        else:
            seen[index] = selector
    return list(dict.fromkeys(indexes)), errors


def _resolves(gpus, selector):
    return not resolve_devices(gpus, [selector])[1]


def daemon_plan(gpus, visible_devices=None, active_thread_percentage=None, pinned_memory_limit=None):
    """What the control daemon gets: its devices, and its defaults by MPS device ordinal, exact bytes.

    gpus: the NVML list (needed when visible_devices or a pinned limit is given; None otherwise).
    With visible_devices the daemon numbers the devices by their position in that list
    (CUDA_VISIBLE_DEVICES), so the limits are planned by that ordinal. Returns (daemon, errors).
    """
    errors = []
    atp, error = percentage(active_thread_percentage)
    if error:
        errors.append(error)
    pinned, pinned_errors = pinned_request(pinned_memory_limit)
    errors.extend(pinned_errors)
    daemon = {"visible_devices": None, "active_thread_percentage": atp, "pinned_memory_limit": {}, "devices": {}}
    if gpus is None:
        return daemon, errors
    if visible_devices:
        visible, visible_errors = _unique_indexes(gpus, [str(v) for v in visible_devices], "visible_devices")
        errors.extend(visible_errors)
    else:
        visible = [g["index"] for g in gpus]
    ordinal_of = dict((index, pos) for pos, index in enumerate(visible)) if visible_devices \
        else dict((index, index) for index in visible)
    by_index = dict((g["index"], g) for g in gpus)
    daemon["devices"] = dict((str(ordinal), by_index[index]["uuid"]) for index, ordinal in sorted(ordinal_of.items()))
    if visible_devices:
        daemon["visible_devices"] = [by_index[i]["uuid"] for i in visible]
    limits, named = {}, {}
    for selector, size_bytes in sorted((pinned or {}).items(), key=lambda kv: kv[0] != "*"):
        if selector == "*":
            targets = sorted(ordinal_of)
        else:
            targets, device_errors = resolve_devices(gpus, [selector])
            errors.extend("default_pinned_memory_limit: %s" % e for e in device_errors)
            for index in targets:
                if index not in ordinal_of:
                    errors.append("default_pinned_memory_limit: device %s (GPU %d) is not in visible_devices"
                                  % (selector, index))
                elif index in named and limits[ordinal_of[index]] != size_bytes:
                    errors.append("default_pinned_memory_limit names GPU %d twice with different sizes (%s as %s, %s "
                                  "as %s): give each GPU one size" % (
                                      index, mps_size(limits[ordinal_of[index]]), named[index], mps_size(size_bytes),
                                      selector))
                named.setdefault(index, selector)
            targets = [i for i in targets if i in ordinal_of]
        for index in targets:
            total = int(by_index[index].get("memory_total_bytes") or 0)
            if total and size_bytes > total:
                errors.append("default_pinned_memory_limit for GPU %d: %s is more than the %d MiB it has"
                              % (index, mps_size(size_bytes), total // MIB))
                continue
            limits[ordinal_of[index]] = size_bytes
    daemon["pinned_memory_limit"] = dict((str(o), b) for o, b in sorted(limits.items()))
    return daemon, errors


def replica_limits(daemon, sharing, which):
    """Give the host daemon the per-replica limits of the device plugin's plan; returns the warnings.

    daemon: a daemon_plan() result, whose pinned limits and thread percentage are the explicit settings (they win);
    sharing: the device plugin's plan of the host (_device_plugin.plan, every GPU by its NVML index). Per GPU the
    daemon sees, the pinned limit is that GPU's memory_per_replica_mib in bytes. The active thread percentage is one
    default for every GPU of the daemon, so it is 100 // the largest replica count (with owner host every GPU has
    the same count: per-GPU counts need mode individual, which owner host refuses). Fills
    daemon["replica_limits"] with what the replicas ask, and daemon's limits where no explicit value was given.
    """
    warnings = []
    ordinal_of = dict((uuid, ordinal) for ordinal, uuid in daemon["devices"].items())
    explicit = dict(daemon["pinned_memory_limit"])
    wanted = {}
    for row in sharing["gpus"]:
        ordinal = ordinal_of.get(row["uuid"])
        if ordinal is None:
            warnings.append("GPU %d is shared by the device plugin (%d replicas) but is not one of the host daemon's "
                            "visible_devices: its pods get no MPS and no memory limit" % (row["index"], row["replicas"]))
            continue
        share = row["memory_per_replica_mib"] * MIB
        wanted[ordinal] = share
        if ordinal in explicit:
            if explicit[ordinal] != share:
                warnings.append(
                    "default_pinned_memory_limit gives GPU %d %s per client, but the device plugin shares it among %d "
                    "replicas of %d MiB: %s. Remove mps_host_default_pinned_memory_limit to take the replicas' share, "
                    "or set it to %dM" % (
                        row["index"], mps_size(explicit[ordinal]), row["replicas"], row["memory_per_replica_mib"],
                        "the replicas together may ask more than the GPU has" if explicit[ordinal] > share
                        else "each pod gets less than its share", row["memory_per_replica_mib"]))
        else:
            daemon["pinned_memory_limit"][ordinal] = share
    daemon["pinned_memory_limit"] = dict(sorted(daemon["pinned_memory_limit"].items()))
    counts = sorted(set(row["replicas"] for row in sharing["gpus"] if row["uuid"] in ordinal_of))
    threads = None
    if which == "memory_and_threads" and counts:
        threads = float(100 // counts[-1])
        if daemon["active_thread_percentage"] is None:
            daemon["active_thread_percentage"] = threads
        elif abs(daemon["active_thread_percentage"] - threads) > 0.05:
            warnings.append(
                "default_active_thread_percentage is %g, but %d replicas per GPU give each %g %%: remove "
                "mps_host_default_active_thread_percentage to take the replicas' share, or set "
                "mps_host_replica_limits: memory" % (daemon["active_thread_percentage"], counts[-1], threads))
    daemon["replica_limits"] = {"mode": which, "pinned_memory_limit": dict(sorted(wanted.items())),
                                "active_thread_percentage": threads}
    return warnings


def defaults_gaps(daemon, defaults):
    """What a running daemon's defaults (mps_info's `defaults`: the CLI's read-back, or the exact value recorded) lack
    against its plan (the plan's `daemon`), as sentences; [] when it holds every planned value."""
    gaps = []
    defaults = defaults or {}
    want = daemon.get("active_thread_percentage")
    have = defaults.get("active_thread_percentage")
    if want is not None and (have is None or abs(float(have) - float(want)) > 0.05):
        gaps.append("the host MPS daemon's default active thread percentage is %s, the plan asks %g"
                    % ("unset" if have is None else "%g" % float(have), float(want)))
    shown = defaults.get("pinned_memory_limit") or {}
    for ordinal, size_bytes in sorted(daemon.get("pinned_memory_limit", {}).items()):
        if not readback_matches(size_bytes, shown.get(str(ordinal))):
            gaps.append("the host MPS daemon's default pinned memory limit of device %s is %s, the plan asks %s"
                        % (ordinal, shown.get(str(ordinal)) or "unset", mps_size(size_bytes)))
    return gaps


def mps_sizes(daemon):
    """The pinned limits of a daemon plan as the CLI is sent them ("7188M")."""
    return dict((o, mps_size(b)) for o, b in sorted(daemon["pinned_memory_limit"].items()))


def library_path(value):
    """The directories of LD_LIBRARY_PATH (as the target's environment has it when the plan is made) that the daemon
    may load from: absolute, and trusted (root's, writable by nobody else). None when none is left. Read once, here:
    the daemon gets it from the plan, never from the environment of a later task."""
    kept = []
    for directory in (value or "").split(":"):
        if directory.startswith("/") and normalize_path("LD_LIBRARY_PATH", directory)[1] is None:
            missing, reason = inspect_directory(os.path.normpath(directory), (0,), follow_last=True)
            if not missing and not reason and directory not in kept:
                kept.append(directory)
    return ":".join(kept) or None


def trusted_python(candidates):
    """The first interpreter of `candidates` that root may run (see _trust.executable_problem), for the unit's entry
    point; None when none may."""
    for path in candidates:
        if path and not executable_problem(path, (0,)):
            return path
    return None


def local_plan(options, gpus=None, environ=None):
    """(plan, errors) for a module called WITHOUT the host's plan (mps_daemon, mps_info, mps_client_probe used on
    their own): the same checks and the same shape as build_plan's, for what a client of one daemon needs - the
    binary (find_control_binary), the pipe, log and state directories, and the daemon's defaults and environment.

    options: the module's parameters (pipe_directory, log_directory, state_directory, control_binary,
    visible_devices, default_active_thread_percentage, default_pinned_memory_limit, multiuser_server).
    gpus: NVML's list when devices or pinned limits must be resolved, else None."""
    errors = []
    paths = {}
    for option in ("pipe_directory", "log_directory", "state_directory"):
        value = options.get(option) or (default_state_directory() if option == "state_directory" else None)
        paths[option], error = normalize_path(option, value)
        if error:
            errors.append(error)
    binary, error = find_control_binary(options.get("control_binary"), options.get("binary_directories")
                                        or BINARY_DIRECTORIES)
    if error:
        errors.append(error)
    daemon, daemon_errors = daemon_plan(gpus, options.get("visible_devices"),
                                        options.get("default_active_thread_percentage"),
                                        options.get("default_pinned_memory_limit"))
    errors.extend(daemon_errors)
    if errors:
        return None, errors
    daemon.update(state="started", service_manager="direct", replica_limits=None,
                  multiuser_server=bool(options.get("multiuser_server")))
    daemon["pinned_memory_limit_mps"] = mps_sizes(daemon)
    daemon["environment"] = daemon_environment(
        paths["pipe_directory"], paths["log_directory"], daemon["visible_devices"],
        library_path((environ if environ is not None else os.environ).get("LD_LIBRARY_PATH")))
    return {"version": PLAN_VERSION, "owner": "host", "local": True, "control_binary": binary,
            "pipe_directory": paths["pipe_directory"], "log_directory": paths["log_directory"],
            "state_directory": paths["state_directory"], "daemon": daemon, "gpus": gpus, "sharing": None,
            "warnings": []}, []


def kubernetes_decision(setting, target, docker_socket):
    """({"enabled", "reason", "target"}, error): whether the Kubernetes stages run on this host (gpulab_kubernetes:
    auto runs them against an existing cluster, or where a Docker engine's socket is there for a Kind cluster)."""
    setting = str(setting if setting is not None else "auto").lower()
    setting = {"yes": "true", "1": "true", "no": "false", "0": "false"}.get(setting, setting)
    target = target or "kind"
    if setting not in KUBERNETES:
        return None, "gpulab_kubernetes must be auto, true or false, got %r" % setting
    if target not in ("kind", "existing"):
        return None, "kind_cluster_target must be kind or existing, got %r" % target
    if setting == "true":
        return {"enabled": True, "target": target, "reason": "gpulab_kubernetes is true"}, None
    if setting == "false":
        return {"enabled": False, "target": target, "reason": "gpulab_kubernetes is false"}, None
    if target == "existing":
        return {"enabled": True, "target": target, "reason": "an existing cluster is the target"}, None
    if docker_socket:
        return {"enabled": True, "target": target, "reason": "a Docker engine's socket is here for a Kind cluster"}, None
    return {"enabled": False, "target": target,
            "reason": "no Docker engine answers here (gpulab_kubernetes auto, no /var/run/docker.sock)"}, None


def limits_rule(which, owner, sharing, kubernetes):
    """(the replica limits to apply - a REPLICA_LIMITS value or None, the sentence that says why): replica limits
    only where a device plugin counts replicas against this host's daemon, or where the user says so."""
    counted = sharing is not None and owner == "host" and bool(kubernetes and kubernetes["enabled"])
    if which == "none":
        return None, "No replica limits: mps_host_replica_limits is none."
    if sharing is None or owner != "host":
        return None, ("No replica limits: %s." % (
            "no device plugin is planned on this host (gpulab_device_plugin false)" if sharing is None else
            "the device plugin's own MPS daemon owns MPS (gpulab_mps_owner plugin), not this host's daemon"))
    replicas = max(row["replicas"] for row in sharing["gpus"]) if sharing.get("gpus") else 0
    if which == "auto":
        if counted:
            return "memory_and_threads", ("Replica limits: the device plugin counts %d replicas per GPU against this "
                                          "host's daemon (owner host, and the Kubernetes stages run here: %s), so "
                                          "each client gets a replica's share." % (replicas, kubernetes["reason"]))
        return None, ("No replica limits: nothing counts replicas against this host's daemon, since the Kubernetes "
                      "stages do not run here (%s); set mps_host_replica_limits to memory_and_threads to hold clients "
                      "to a replica's share anyway." % kubernetes["reason"])
    return which, ("Replica limits (%s, as mps_host_replica_limits says): the device plugin's %d replicas per GPU "
                   "give each client a replica's share%s." % (
                       which, replicas, "" if counted else ", although no device plugin counts them here (%s)"
                       % kubernetes["reason"]))


def defaults_sentence(daemon):
    """What the daemon's defaults are, in words (for the plan's limits_rule)."""
    pinned = mps_sizes(daemon)
    threads = daemon.get("active_thread_percentage")
    if not pinned and threads is None:
        return "The daemon gets no default limits: each client may use every SM and all the memory of its GPU."
    return "The daemon's defaults: %s; %s." % (
        "pinned memory %s per client" % ", ".join("%s on device %s" % (size, o) for o, size in sorted(pinned.items()))
        if pinned else "no pinned memory limit",
        "%g %% of the SMs per client" % threads if threads is not None else "every SM")


def users_sentence(multiuser):
    """What several Unix users on this host get from the daemon, in one sentence (the plan's users_rule)."""
    if multiuser:
        return ("Several users: one multi-user server (-M) serves every user's clients at once; a fatal GPU error "
                "(FAULT) of one client then reaches every user's clients of that server.")
    return ("Several users: each user gets a server of their own, one at a time: a second user's client waits, "
            "silently, until every client of the first user has exited (set mps_host_multiuser_server true to "
            "share).")


def host_problems(driver, gpus, min_driver_version):
    """Why this host cannot run MPS at all (driver, GPUs, compute modes), as sentences; [] when it can."""
    try:
        problem = driver_problem(driver["driver_version"], min_driver_version)
    except ValueError as error:
        return ["min_driver_version: %s" % error]
    errors = [problem] if problem else []
    if not gpus:
        errors.append("driver %s is loaded but NVML lists no GPU; check `nvidia-smi` and the GPU's PCI passthrough"
                      % driver["driver_version"])
    blocked = [str(g["index"]) for g in gpus if g.get("compute_mode") not in MPS_COMPUTE_MODES]
    if blocked:
        errors.append("GPU(s) %s are in a compute mode in which MPS cannot run (MPS needs DEFAULT or "
                      "EXCLUSIVE_PROCESS; see `nvidia-smi -q | grep -i \"compute mode\"`)" % ", ".join(blocked))
    return errors


def build_plan(driver, gpus, settings):
    """The plan of a host (a dict), or PlanError listing every bad setting.

    driver, gpus: what NVML said (_nvml.Nvml.driver() and .gpus()), on a host without host_problems().
    settings: the options of gpulab.mps.mps_plan (owner, host_state, pipe_directory, log_directory,
    state_directory, control_binary, visible_devices, default_active_thread_percentage, default_pinned_memory_limit,
    service_manager, service_name, multiuser_server, sharing, the collection's directories lib_directory,
    config_directory, unit_directory, tmpfiles_directory), and what the module read of the host: systemd_running,
    python (an interpreter root may run, or None) and library_path (LD_LIBRARY_PATH's trusted directories).
    """
    errors = []
    owner = settings.get("owner") or "host"
    if owner not in OWNERS:
        errors.append("gpulab_mps_owner must be one of %s, got %r" % (", ".join(OWNERS), owner))
    host_state = settings.get("host_state") or "started"
    if host_state not in HOST_STATES:
        errors.append("mps_host_state must be one of %s, got %r" % (", ".join(HOST_STATES), host_state))
    paths = {}
    for option in ("pipe_directory", "log_directory", "state_directory"):
        paths[option], error = normalize_path(option, settings.get(option))
        if error:
            errors.append(error)
    files = {}
    for option, default in FILE_DIRECTORIES:
        files[option], error = normalize_path(option, settings.get(option) or default)
        if error:
            errors.append(error)
    try:
        service_name = unit_name(settings.get("service_name") or "nvidia-mps", "mps_host_service_name")
    except FormatError as error:
        errors.append(str(error))
    if settings.get("control_binary"):
        _binary, error = normalize_path("control_binary", settings["control_binary"])
        if error:
            errors.append(error)
    which = settings.get("replica_limits") or REPLICA_LIMITS[0]
    if which not in REPLICA_LIMITS:
        errors.append("mps_host_replica_limits must be one of %s, got %r" % (", ".join(REPLICA_LIMITS), which))
    kubernetes, error = kubernetes_decision(settings.get("kubernetes"), settings.get("kubernetes_target"),
                                            settings.get("docker_socket"))
    if error:
        errors.append(error)
    manager = settings.get("service_manager") or "auto"
    if manager not in SERVICE_MANAGERS:
        errors.append("service_manager must be one of %s, got %r" % (", ".join(SERVICE_MANAGERS), manager))
    elif manager == "auto":
        manager = "systemd" if settings.get("systemd_running") else "direct"
    daemon, daemon_errors = daemon_plan(gpus, settings.get("visible_devices"),
                                        settings.get("default_active_thread_percentage"),
                                        settings.get("default_pinned_memory_limit"))
    errors.extend(daemon_errors)
    sharing = None
    wanted = settings.get("sharing")
    if wanted and gpus and owner in OWNERS:
        settings_used = {"mode": wanted.get("mode") or dp.AGGREGATE, "replicas": wanted.get("replicas", 4),
                         "replicas_per_gpu": dict(wanted.get("replicas_per_gpu") or {}),
                         "name_pattern": wanted.get("name_pattern") or dp.DEFAULT_NAME_PATTERN}
        try:
            sharing = dp.plan(gpus, mode=settings_used["mode"], replicas=settings_used["replicas"],
                              per_gpu_replicas=settings_used["replicas_per_gpu"], owner=owner,
                              name_pattern=settings_used["name_pattern"])
            sharing["settings"] = settings_used
            # The resource a pod asks one replica of (the dial-tone and workload pods): the first GPU's.
            sharing["pod_resource"] = sharing["gpus"][0]["resource"] if sharing["gpus"] else None
        except dp.DevicePluginError as error:
            errors.append("device plugin: %s" % error)
    if errors:
        raise PlanError(errors)
    warnings = ["GPU %d has MIG enabled: MPS then runs per MIG instance, which this collection does not configure. "
                "Disable MIG or expect MPS to see the MIG instances only." % g["index"]
                for g in gpus if g.get("mig_mode_current") == "enabled"]
    # Owner host with the device plugin counting replicas against this daemon: the host daemon enforces the replicas'
    # share (seed 004: memory per replica = GPU memory / replicas), since the plugin only counts them. Nowhere else:
    # a lab without Kubernetes would hold every client to a quarter of the GPU for nothing (issue 21).
    daemon["replica_limits"] = None
    applied, daemon["limits_rule"] = limits_rule(which, owner, sharing, kubernetes)
    if applied:
        warnings.extend(replica_limits(daemon, sharing, applied))
    daemon["limits_rule"] += " " + defaults_sentence(daemon)
    # The plugin owns MPS: the host daemon must not run (absent stays absent).
    daemon["state"] = host_state if owner == "host" or host_state == "absent" else "stopped"
    daemon["service_manager"] = manager
    daemon["service_name"] = service_name
    daemon["multiuser_server"] = bool(settings.get("multiuser_server"))
    daemon["users_rule"] = users_sentence(daemon["multiuser_server"])
    daemon["pinned_memory_limit_mps"] = mps_sizes(daemon)
    daemon["environment"] = daemon_environment(paths["pipe_directory"], paths["log_directory"],
                                               daemon["visible_devices"], settings.get("library_path"))
    files["plan_file"] = files["config_directory"] + "/plan.json"
    return {
        "version": PLAN_VERSION,
        "owner": owner,
        "host": {"systemd": bool(settings.get("systemd_running")), "python": settings.get("python")},
        "kubernetes": kubernetes,
        "files": files,
        "driver": dict(driver),
        "gpus": [dict(g) for g in gpus],
        "control_binary": settings.get("control_binary"),
        "pipe_directory": paths["pipe_directory"],
        "log_directory": paths["log_directory"],
        "state_directory": paths["state_directory"],
        "daemon": daemon,
        "sharing": sharing,
        "warnings": warnings,
    }


REQUIRED = {"version": int, "owner": str, "control_binary": str, "pipe_directory": str, "log_directory": str,
            "state_directory": str, "daemon": dict}


def plan_problems(plan):
    """Why `plan` is not a plan of this collection's version (for mps_daemon's `plan` option), or []."""
    if not isinstance(plan, dict):
        return ["plan must be the preflight_mps_plan fact (a dict) set by the preflight role"]
    problems = ["plan has no %s (%s)" % (k, t.__name__) for k, t in REQUIRED.items() if not isinstance(plan.get(k), t)]
    if not problems and plan["version"] != PLAN_VERSION:
        problems.append("plan is of version %s, this collection reads version %d: run the preflight role of "
                        "this collection again" % (plan["version"], PLAN_VERSION))
    return problems


# What NVML said of a GPU's memory in use at the moment the plan was made: not a fact of the host, and left out of the
# plan file, which must not change from one run to the next while nothing changes.
MOMENTARY_GPU_KEYS = ("memory_used_bytes", "memory_free_bytes", "memory_used_mib", "memory_free_mib")


def plan_file_text(plan):
    """The plan as the host keeps it (plan.files.plan_file, written by the role mps_client; read by the unit's entry
    point and the metrics collector, _mps_cli.load_plan): JSON, keys sorted, without what NVML said at the moment
    (memory in use). Raises PlanError for what is not a plan of this collection's version."""
    problems = plan_problems(plan)
    if problems:
        raise PlanError(problems)
    kept = dict(plan)
    kept["gpus"] = [dict((k, v) for k, v in gpu.items() if k not in MOMENTARY_GPU_KEYS)
                    for gpu in plan.get("gpus") or []]
    return json.dumps(kept, indent=1, sort_keys=True) + "\n"
