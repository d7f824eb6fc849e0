# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""QoS classes on a shared GPU: what a client of each class gets, declared once, checked once.

This is a private module_utils of gpulab.mps: its API may change without notice.

A class is what this driver's MPS lets one client ask for itself, through its environment:
- CUDA_MPS_ACTIVE_THREAD_PERCENTAGE: the share of the GPU's SMs its kernels may occupy. It can only lower what the
  client's server allows (NVIDIA: "will only further constrain the limit set by the control daemon"), so a class
  above the daemon's default_active_thread_percentage is refused: it would get the daemon's value.
- CUDA_MPS_CLIENT_PRIORITY: 0 (normal) or 1 (below normal), the order in which the server schedules work.
- CUDA_MPS_PINNED_DEVICE_MEM_LIMIT: a pinned device memory limit per device ("0=16G,1=16G"), which a client can
  set lower than its server's (docs/evidence, MPS-FACTS).
This driver has no static SM partitioning: isolation comes from the thread limit of the neighbours, not from
priority (measured, docs/qos.md). gpulab.mps.mps_plan calls qos_plan() and carries the result in the host's plan
(preflight_mps_plan.qos); the role mps_host writes each class's environment to <directory>/<class>.env, the pod
builders take a class's environment (pod_env), and the benchmark reads the files the host has. Pure: data in,
data out.
"""

from __future__ import annotations

import re

from ansible_collections.gpulab.mps.plugins.module_utils._formats import (
    FormatError, comment_line, env_assignment, file_name)
from ansible_collections.gpulab.mps.plugins.module_utils._plan import percentage
from ansible_collections.gpulab.mps.plugins.module_utils._sizes import SizeError, mps_size, parse_size
from ansible_collections.gpulab.mps.plugins.module_utils._trust import normalize_path

ENV_THREADS = "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"
ENV_PRIORITY = "CUDA_MPS_CLIENT_PRIORITY"
ENV_PINNED = "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"
ENV_PIPE = "CUDA_MPS_PIPE_DIRECTORY"
CLASS_KEYS = ("active_thread_percentage", "client_priority", "pinned_memory_limit", "description")
PRIORITIES = (0, 1)
DEFAULT_DIRECTORY = "/etc/gpulab-mps/qos"
# A class name is a file name (<class>.env) and a word in a pod's YAML: lower-case letters, digits and dashes.
_NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,30}\Z")
# The default classes: written here once, used as mps_plan's default (its DOCUMENTATION repeats them; sanity
# checks that the two agree). batch: 12 % of the SMs, so that 7 batch clients (7 x 16 of 132 SMs on an H200) leave
# room for a latency client's 16-block kernels (docs/qos.md has the arithmetic and the measurement).
DEFAULT_CLASSES = {
    "latency": {"active_thread_percentage": None, "client_priority": 0, "pinned_memory_limit": None,
                "description": "a latency-critical service: normal priority, the SMs its server allows"},
    "batch": {"active_thread_percentage": 12, "client_priority": 1, "pinned_memory_limit": None,
              "description": "throughput work beside a latency-critical service: 12 % of the SMs, below-normal priority"},
}


class QosError(ValueError):
    """A class that does not exist, asked for by a pod or a role."""


def _priority(value, option):
    if value is None or value == "":
        return None, None
    if isinstance(value, bool):
        return None, "%s must be 0 (normal) or 1 (below normal), got %r" % (option, value)
    try:
        number = int(str(value).strip())
    except ValueError:
        return None, "%s must be 0 (normal) or 1 (below normal), got %r" % (option, value)
    if number not in PRIORITIES:
        return None, "%s must be 0 (normal) or 1 (below normal), got %r" % (option, value)
    return number, None


def _device_count(gpus, daemon):
    """How many devices a client of this host may see: the daemon's devices, else NVML's GPUs, else one."""
    if daemon and daemon.get("devices"):
        return len(daemon["devices"])
    return len(gpus or []) or 1


def _pinned(value, option, gpus):
    """(bytes, MPS size, error): one size for every device a client uses."""
    if value is None or value == "":
        return None, None, None
    if isinstance(value, dict):
        return None, None, ("%s must be one size (a client numbers its devices itself: CUDA_VISIBLE_DEVICES, the "
                            "one GPU of a pod), got a dict" % option)
    try:
        size_bytes = parse_size(value)
        shown = mps_size(size_bytes)
    except SizeError as error:
        return None, None, "%s: %s" % (option, error)
    smallest = min([int(g.get("memory_total_bytes") or 0) for g in gpus or [] if g.get("memory_total_bytes")] or [0])
    if smallest and size_bytes > smallest:
        return None, None, "%s: %s is more than the %d MiB of the smallest GPU" % (option, shown, smallest >> 20)
    return size_bytes, shown, None


def class_environment(values, device_count):
    """The environment variables of one checked class (only those it sets), as strings."""
    env = {}
    if values.get("active_thread_percentage") is not None:
        env[ENV_THREADS] = "%g" % values["active_thread_percentage"]
    if values.get("client_priority") is not None:
        env[ENV_PRIORITY] = str(values["client_priority"])
    if values.get("pinned_memory_limit_mps"):
        env[ENV_PINNED] = ",".join("%d=%s" % (i, values["pinned_memory_limit_mps"]) for i in range(device_count))
    return env


def qos_plan(classes, directory=None, gpus=None, daemon=None, pipe_directory=None, strict=True):
    """The QoS part of a host's plan: (qos, errors, warnings).

    classes: {name: {active_thread_percentage, client_priority, pinned_memory_limit, description}}.
    daemon: the plan's daemon (its default active thread percentage and pinned limits bound the classes), or None
    when the rest of the plan did not resolve (then only the classes themselves are checked).
    pipe_directory: written into every class file (a host client must reach the host daemon), or None when the
    host daemon does not serve clients (the device plugin owns MPS).
    qos = {"directory", "classes": {name: {values..., "environment": {VAR: value}, "env_file": path,
    "env_file_environment": {VAR: value}}}}.
    """
    errors, warnings = [], []
    directory, error = normalize_path("qos_directory", directory or DEFAULT_DIRECTORY)
    if error:
        errors.append(error)
    if classes is None:
        classes = {}
    if not isinstance(classes, dict):
        return None, errors + ["qos_classes must be a dict from class name to its settings, got %r" % (classes,)], []
    daemon_threads = (daemon or {}).get("active_thread_percentage")
    daemon_pinned = (daemon or {}).get("pinned_memory_limit") or {}
    count = _device_count(gpus, daemon)
    planned = {}
    for name in sorted(classes, key=str):
        settings = classes[name]
        where = "qos_classes.%s" % name
        if not isinstance(name, str) or not _NAME_RE.match(name):
            errors.append("qos class name %r must be lower-case letters, digits and dashes, starting with a letter "
                          "(it names the file <class>.env)" % (name,))
            continue
        if settings is None:
            settings = {}
        if not isinstance(settings, dict):
            errors.append("%s must be a dict of %s, got %r" % (where, ", ".join(CLASS_KEYS), settings))
            continue
        unknown = sorted(str(k) for k in settings if k not in CLASS_KEYS)
        if unknown:
            errors.append("%s: unknown setting%s %s (known: %s)" % (
                where, "s" if len(unknown) > 1 else "", ", ".join(unknown), ", ".join(CLASS_KEYS)))
            continue
        threads, error = percentage(settings.get("active_thread_percentage"), where + ".active_thread_percentage")
        if error:
            errors.append(error)
        elif threads is not None and daemon_threads is not None and threads > daemon_threads + 1e-9 and strict:
            errors.append("%s.active_thread_percentage %g is above the daemon's default_active_thread_percentage %g: a "
                          "client can only lower its share below its server's, so this class would get %g. Lower the "
                          "class or raise mps_host_default_active_thread_percentage"
                          % (where, threads, daemon_threads, daemon_threads))
        elif threads is not None and daemon_threads is not None and threads > daemon_threads + 1e-9:
            # The default classes, which nobody declared, take the daemon's share where it is smaller (a replicas'
            # share, 5 % for 20 replicas, is below the default batch class): the file then says what clients get.
            warnings.append("%s.active_thread_percentage %g (a default class) is above the daemon's default %g: the "
                            "class takes %g" % (where, threads, daemon_threads, daemon_threads))
            threads = daemon_threads
        priority, error = _priority(settings.get("client_priority"), where + ".client_priority")
        if error:
            errors.append(error)
        pinned, pinned_mps, error = _pinned(settings.get("pinned_memory_limit"), where + ".pinned_memory_limit", gpus)
        if error:
            errors.append(error)
        elif pinned is not None:
            above = sorted(o for o, b in daemon_pinned.items() if pinned > b)
            if above:
                warnings.append("%s.pinned_memory_limit %s is above the daemon's default pinned limit on device(s) %s: "
                                "a client can lower its limit below its server's; do not count on it going above"
                                % (where, pinned_mps, ", ".join(str(o) for o in above)))
        description = settings.get("description")
        if description is not None:
            try:
                comment_line(description, where + ".description")
            except FormatError as error:
                errors.append(str(error))
        values = {"active_thread_percentage": threads, "client_priority": priority, "pinned_memory_limit": pinned,
                  "pinned_memory_limit_mps": pinned_mps, "description": description or ""}
        values["environment"] = class_environment(values, count)
        file_env = dict(values["environment"])
        if pipe_directory:
            file_env[ENV_PIPE] = pipe_directory
        values["env_file_environment"] = file_env
        values["env_file"] = "%s/%s.env" % (directory, name) if directory else None
        planned[name] = values
    return {"directory": directory, "classes": planned}, errors, warnings


def pod_env(plan, name):
    """A class's environment as a container's `env` list, from the host's plan (preflight_mps_plan).

    The pipe directory is not in it: the pod builder mounts and names it (owner host), or the device plugin does.
    """
    qos = (plan or {}).get("qos") or {}
    classes = qos.get("classes") or {}
    if name not in classes:
        raise QosError("no QoS class %r in this host's plan: it has %s (gpulab_mps_qos_classes)" % (
            name, ", ".join(sorted(classes)) or "none"))
    return [{"name": k, "value": v} for k, v in sorted(classes[name]["environment"].items())]


# The first line of every class file the collection writes: what tells its files from files someone else put there.
FILE_MARKER = "# gpulab.mps QoS class "


class ClassFileError(ValueError):
    """A class that cannot be written as a file: the message names the class and what to change."""


def class_file_name(name):
    """<class>.env, for a class name that is a plain file name (never a path) and a word of the file's comment; raises
    ClassFileError. The plan's names pass (qos_plan); a plan edited on its way to mps_qos_files may not."""
    try:
        return file_name(name, "QoS class name") + ".env"
    except FormatError as error:
        raise ClassFileError("%s (a class name names its file <class>.env in the QoS directory)" % error)


def env_file_text(name, values, directory):
    """The environment file of one class, as the collection writes it (one format, written in one place): every line
    through _formats (comments through comment_line, NAME=VALUE through env_assignment), so that sh (set -a; . FILE)
    and systemd (EnvironmentFile=) read exactly the class's variables and nothing else. Raises ClassFileError."""
    path = "%s/%s" % (directory, class_file_name(name))
    description = values.get("description") or ""
    try:
        lines = [comment_line("gpulab.mps QoS class %s%s" % (name, (": " + description) if description else ""),
                              "qos class %s: description" % name),
                 comment_line("From the host's plan (gpulab.mps.mps_plan, gpulab_mps_qos_classes). A systemd service "
                              "runs in this class with", "qos"),
                 comment_line("EnvironmentFile=%s; a job script with: set -a; . %s; set +a" % (path, path),
                              "qos directory")]
        environment = values.get("env_file_environment") or {}
        if not isinstance(environment, dict):
            raise FormatError("the environment of QoS class %s must be a dict, got %r" % (name, environment))
        lines += [env_assignment(key, value, "QoS class %s" % name) for key, value in sorted(environment.items())]
    except FormatError as error:
        raise ClassFileError(str(error))
    return "\n".join(lines) + "\n"
