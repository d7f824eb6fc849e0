# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""The MPS metrics of a host for Prometheus, built in one place (docs/metrics.md lists every series).

This is a private module_utils of gpulab.mps: its API may change without notice. It needs the Python package
prometheus-client, imported inside the functions that use it, so that the modules of the collection (which never
import this file) and the sanity tests need only the standard library.

Nothing is judged here: what the daemon runs and whether it is healthy come from _mps_control.MpsControl.health()
(_mps_health.assess, the one judgement), the logs from _mps_output (the one parser), whether the defaults hold the
plan from _plan.defaults_gaps, and each client's GPU memory from _nvml.Nvml.compute_processes(). This file only
turns those into series.

The collector of roles/mps_metrics (files/gpulab_mps_metrics.py) calls run(): it reads the host, builds the
registry and writes <textfile directory>/gpulab_mps.prom atomically (Textfile) for node_exporter's textfile
collector.
"""

from __future__ import annotations

import json
import os
import stat
import time

from ansible_collections.gpulab.mps.plugins.module_utils._files import replace_file
from ansible_collections.gpulab.mps.plugins.module_utils._mps_cli import PlanFileError, load_plan
from ansible_collections.gpulab.mps.plugins.module_utils._mps_control import MpsControl
from ansible_collections.gpulab.mps.plugins.module_utils._mps_health import DIED, RUNNING, STOPPED, UNRESPONSIVE
from ansible_collections.gpulab.mps.plugins.module_utils._plan import defaults_gaps
from ansible_collections.gpulab.mps.plugins.module_utils._sizes import SizeError, parse_size
from ansible_collections.gpulab.mps.plugins.module_utils._trust import inspect_directory, read_small_file

PREFIX = "gpulab_mps_"
TEXTFILE_NAME = "gpulab_mps.prom"
DAEMON_STATES = (RUNNING, STOPPED, DIED, UNRESPONSIVE)
# The kinds of problem _mps_health.assess reports; each is exported, 0 when absent, so that an alert needs no absent().
PROBLEM_KINDS = ("daemon_not_running", "daemon_died", "daemon_unresponsive", "server_fault", "server_exited",
                 "client_waiting")
# What the collector reads; a source it could not read is gpulab_mps_collector_error{source} 1.
SOURCES = ("config", "control", "nvml")


class MetricsError(Exception):
    """The collector cannot run as configured: the message says what and how to fix it."""


def _bytes(shown):
    """Bytes of a limit as the daemon holds it ("7188M" exact, or the CLI's "7G"), None when unset or unreadable."""
    if shown is None:
        return None
    try:
        return parse_size(shown)
    except SizeError:
        return None


def device_map(plan, gpus=None):
    """{MPS device ordinal (str): GPU UUID}: the plan's (the daemon's numbering), else NVML's indexes."""
    devices = ((plan or {}).get("daemon") or {}).get("devices") or {}
    if devices:
        return dict((str(k), v) for k, v in devices.items())
    return dict((str(g["index"]), g["uuid"]) for g in gpus or [])


def _resolve(devices, shown):
    """(ordinal, uuid) of a GPU as `ps` shows it (a truncated UUID), ("", shown) when no known GPU matches."""
    for ordinal, uuid in sorted(devices.items()):
        if shown and uuid and uuid.lower().startswith(shown.lower()):
            return ordinal, uuid
    return "", shown or ""


def build_registry(state, health, control_log=None, plan=None, nvml_processes=None, devices=None, now=None,
                   duration=None, errors=(), last_success=None):
    """A prometheus_client CollectorRegistry with every series of one reading of the host.

    state, health: MpsControl.health() (the snapshot, with defaults made exact where recorded, and the judgement).
    control_log: _mps_output.parse_control_log of control.log (who each server runs for).
    plan: the host's plan (preflight_mps_plan), or None. nvml_processes: _nvml.Nvml.compute_processes(), or None when
    NVML could not be read. devices: device_map(). now: the time of the reading (seconds since the epoch).
    duration: seconds the reading took. errors: the SOURCES that could not be read. last_success: when a reading
    last read every source (kept while errors; a reading without errors is the last success itself).
    """
    from prometheus_client import CollectorRegistry, Gauge

    registry = CollectorRegistry(auto_describe=True)
    now = time.time() if now is None else now
    devices = dict(devices or device_map(plan))

    def gauge(name, documentation, labels=()):
        return Gauge(PREFIX + name, documentation, list(labels), registry=registry)

    daemon = health["daemon"]
    expected = ((plan or {}).get("daemon") or {}).get("state", "started") == "started"
    gauge("control_daemon_up", "1 when the MPS control daemon answers, else 0").set(int(daemon == RUNNING))
    gauge("daemon_expected", "1 when the host's plan runs the MPS control daemon here (no plan: 1), else 0").set(
        int(expected))
    states = gauge("daemon_state", "The MPS control daemon's state: 1 for the current one", ["state"])
    for name in DAEMON_STATES:
        states.labels(name).set(int(daemon == name))
    gauge("healthy", "1 when MPS is healthy here (the judgement of mps_info's health), else 0").set(
        int(bool(health["healthy"])))
    problems = gauge("problems", "Problems found, by kind (server_exited: servers that exited without a shutdown "
                                 "being asked since the daemon started)", ["kind"])
    counts = dict((kind, 0) for kind in PROBLEM_KINDS)
    for problem in health["problems"]:
        counts[problem["kind"]] = counts.get(problem["kind"], 0) + 1
    for kind, count in sorted(counts.items()):
        problems.labels(kind).set(count)

    # Servers, from the snapshot; who each runs for, from the current daemon's control.log.
    logged_servers = {}
    if control_log and control_log.get("daemon_pid") in (None, state.get("pid")):
        logged_servers = control_log.get("servers") or {}
    info = gauge("server_info", "An MPS server of the daemon, with the uid it serves (empty when not logged)",
                 ["server", "uid"])
    status = gauge("server_status", "The status of an MPS server (ACTIVE, FAULT, ...): 1", ["server", "status"])
    fault = gauge("server_fault", "1 when the MPS server is in FAULT, else 0", ["server"])
    server_clients = gauge("server_clients", "Clients of an MPS server (get_client_list)", ["server"])
    server_threads = gauge("server_active_thread_percentage",
                           "Active thread percentage the MPS server runs with", ["server"])
    server_pinned = gauge("server_pinned_memory_limit_bytes",
                          "Pinned device memory limit the MPS server runs with, per device", ["server", "device", "uuid"])
    faulted = set(health.get("faulted_servers") or [])
    for server in state.get("servers") or []:
        pid = str(server["pid"])
        uid = (logged_servers.get(server["pid"]) or {}).get("uid")
        info.labels(pid, "" if uid is None else str(uid)).set(1)
        status.labels(pid, server.get("status") or "UNKNOWN").set(1)
        fault.labels(pid).set(int(server["pid"] in faulted))
        server_clients.labels(pid).set(len(server.get("clients") or []))
        logged = server.get("logged") or {}
        threads = logged.get("active_thread_percentage")
        if threads is None:
            threads = server.get("active_thread_percentage")
        if threads is not None:
            server_threads.labels(pid).set(float(threads))
        limits = dict((str(k), v) for k, v in (server.get("pinned_memory_limit") or {}).items())
        limits.update((str(k), v) for k, v in (logged.get("pinned_memory_limit") or {}).items())
        for ordinal, value in sorted(limits.items()):
            size = value if isinstance(value, int) else _bytes(value)
            if size is not None:
                server_pinned.labels(pid, ordinal, devices.get(ordinal, "")).set(size)

    # Clients, from ps (one row per client context and GPU); their memory from NVML, matched by PID and GPU.
    clients = gauge("clients", "MPS client contexts per GPU (ps)", ["device", "uuid"])
    per_device = dict((key, 0) for key in ((o, u) for o, u in sorted(devices.items())))
    memory = gauge("client_memory_bytes", "GPU memory an MPS client process uses on a GPU (NVML per-process)",
                   ["pid", "server", "device", "uuid"])
    used = dict(((p["pid"], p["uuid"]), p["used_memory_bytes"]) for p in nvml_processes or []
                if p.get("used_memory_bytes") is not None)
    for row in state.get("clients") or []:
        ordinal, uuid = _resolve(devices, row.get("device"))
        per_device[(ordinal, uuid)] = per_device.get((ordinal, uuid), 0) + 1
        if (row["pid"], uuid) in used:
            memory.labels(str(row["pid"]), str(row["server"]), ordinal, uuid).set(used[(row["pid"], uuid)])
    for (ordinal, uuid), count in sorted(per_device.items()):
        clients.labels(ordinal, uuid).set(count)

    # The defaults in force (exact where gpulab.mps recorded what it set), and the plan beside them.
    defaults = state.get("defaults") or {}
    if daemon == RUNNING:
        if defaults.get("active_thread_percentage") is not None:
            gauge("default_active_thread_percentage", "The daemon's default active thread percentage for new "
                  "servers").set(float(defaults["active_thread_percentage"]))
        pinned = gauge("default_pinned_memory_limit_bytes", "The daemon's default pinned device memory limit for new "
                       "servers, per device (absent when unset)", ["device", "uuid"])
        for ordinal, shown in sorted((defaults.get("pinned_memory_limit") or {}).items()):
            size = _bytes(shown)
            if size is not None:
                pinned.labels(str(ordinal), devices.get(str(ordinal), "")).set(size)
    planned_daemon = (plan or {}).get("daemon") or {}
    if plan:
        if planned_daemon.get("active_thread_percentage") is not None:
            gauge("planned_active_thread_percentage", "The default active thread percentage the host's plan asks").set(
                float(planned_daemon["active_thread_percentage"]))
        planned_pinned = gauge("planned_pinned_memory_limit_bytes", "The default pinned device memory limit the "
                               "host's plan asks, per device", ["device", "uuid"])
        for ordinal, size in sorted((planned_daemon.get("pinned_memory_limit") or {}).items()):
            planned_pinned.labels(str(ordinal), devices.get(str(ordinal), "")).set(int(size))
        replicas = gauge("planned_replicas", "Replicas the device plugin advertises per GPU, as planned",
                         ["device", "uuid"])
        ordinal_of = dict((u, o) for o, u in devices.items())
        for row in ((plan.get("sharing") or {}).get("gpus")) or []:
            replicas.labels(ordinal_of.get(row["uuid"], ""), row["uuid"]).set(int(row["replicas"]))
        if daemon == RUNNING:
            gauge("limits_as_planned", "1 when the daemon's defaults hold every limit the plan asks, else 0 (only "
                  "while the daemon runs)").set(int(not defaults_gaps(planned_daemon, defaults)))

    error = gauge("collector_error", "1 when the collector could not read this source, else 0", ["source"])
    for source in SOURCES:
        error.labels(source).set(int(source in errors))
    gauge("collector_success", "1 when the last run of the collector read every source, else 0").set(int(not errors))
    last = gauge("collector_last_success_timestamp_seconds",
                 "When the collector last read every source (seconds since the epoch)")
    if not errors:
        last.set(now)
    elif last_success is not None:
        last.set(last_success)
    gauge("collector_duration_seconds", "Seconds the last run of the collector took").set(duration or 0.0)
    return registry


def failure_registry(error_source, now, duration, last_success=None):
    """The registry of a run that could not read the daemon at all: what failed, and when it last succeeded."""
    from prometheus_client import CollectorRegistry, Gauge

    registry = CollectorRegistry(auto_describe=True)
    error = Gauge(PREFIX + "collector_error", "1 when the collector could not read this source, else 0", ["source"],
                  registry=registry)
    for source in SOURCES:
        error.labels(source).set(int(source == error_source))
    Gauge(PREFIX + "collector_success", "1 when the last run of the collector read every source, else 0",
          registry=registry).set(0)
    last = Gauge(PREFIX + "collector_last_success_timestamp_seconds",
                 "When the collector last read every source (seconds since the epoch)", registry=registry)
    if last_success is not None:
        last.set(last_success)
    Gauge(PREFIX + "collector_duration_seconds", "Seconds the last run of the collector took",
          registry=registry).set(duration)
    return registry


def previous_success(text):
    """collector_last_success_timestamp_seconds in the text the last run wrote, or None."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        for family in text_string_to_metric_families(text or ""):
            if family.name == PREFIX + "collector_last_success_timestamp_seconds":
                for sample in family.samples:
                    return sample.value
    except ValueError:
        return None
    return None


# --- the collector --------------------------------------------------------------------------------

def load_config(path):
    """The collector's configuration (the role writes it): {"textfile_directory", "timeout", "plan_file"}, with
    "plan" added: the host's plan, read from plan_file as the unit's entry point reads it (_mps_cli.load_plan).

    Both are read only from a directory of root's that nobody else can write, and never through a symlink.
    """
    missing, reason = inspect_directory(os.path.dirname(path) or "/", (0, os.geteuid()))
    if missing or reason:
        raise MetricsError("configuration %s cannot be trusted: %s" % (path, reason or "%s is missing" % missing))
    text = read_small_file(path, limit=1 << 20)
    if text is None:
        raise MetricsError("configuration %s is missing or not a regular file: run the gpulab.mps.mps_metrics role"
                           % path)
    try:
        config = json.loads(text)
    except ValueError as error:
        raise MetricsError("configuration %s is not JSON: %s" % (path, error))
    if not isinstance(config, dict) or not isinstance(config.get("plan_file"), str):
        raise MetricsError("configuration %s names no plan_file (the host's plan, written by the role "
                           "gpulab.mps.mps_client): run the gpulab.mps.mps_metrics role" % path)
    if not isinstance(config.get("textfile_directory"), str) or not config["textfile_directory"].startswith("/"):
        raise MetricsError("configuration %s has no absolute textfile_directory" % path)
    try:
        config["plan"] = load_plan(config["plan_file"])
    except PlanFileError as error:
        raise MetricsError(str(error))
    return config


def read_host(config, nvml=None):
    """(state, health, control_log, nvml_processes, devices, errors) of one reading of the host."""
    plan = config["plan"]
    errors = []
    gpus, processes = None, None
    if nvml is not None:
        try:
            with nvml() as session:
                gpus = session.gpus()
                processes = session.compute_processes()
        except Exception:  # NVML of a broken driver raises its own errors: the reading goes on without it
            errors.append("nvml")
    devices = device_map(plan, gpus)
    control = MpsControl.from_plan(plan, timeout=float(config.get("timeout") or 10), trusted_uids=(0, os.geteuid()))
    ordinals = sorted(int(o) for o in devices) or [0]
    expect = ((plan.get("daemon") or {}).get("state", "started")) == "started"
    # control.log is read once: for the health (servers that exited unasked) and for the series (whose server).
    control_log = control.control_log(control.daemon_pid())
    state, health = control.health(ordinals, expect_running=expect, control_log=control_log)
    return state, health, control_log, processes, devices, errors


class Textfile(object):
    """<directory>/gpulab_mps.prom, written atomically in a directory that only root (or this user) can write.

    The directory is opened once, without following a symlink, and checked through its descriptor (a directory of
    root or this user, writable by nobody else); the file is then written through that descriptor: a temporary file
    made with O_EXCL | O_NOFOLLOW (its name does not end in .prom, so node_exporter never reads it half written),
    then renamed over the .prom file. Whoever can rename entries of the directory's parent (on Debian,
    /var/lib/prometheus is the prometheus user's) cannot redirect the write: it goes to the directory checked.
    """

    def __init__(self, directory):
        self.directory = directory
        try:
            self.fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        except OSError as error:
            raise MetricsError("textfile directory %s cannot be used: %s (it must be a real directory, not a link; the "
                               "mps_metrics role makes it)" % (directory, error.strerror))
        st = os.fstat(self.fd)
        if st.st_uid not in (0, os.geteuid()) or stat.S_IMODE(st.st_mode) & 0o022:
            os.close(self.fd)
            raise MetricsError("textfile directory %s is owned by uid %d, mode %04o: node_exporter exports every .prom "
                               "file in it, so it must be root's and writable by nobody else (chown root; chmod "
                               "go-w)" % (directory, st.st_uid, stat.S_IMODE(st.st_mode)))
        self.path = os.path.join(directory, TEXTFILE_NAME)

    def close(self):
        os.close(self.fd)

    def read(self):
        """What the last run wrote, or None."""
        try:
            fd = os.open(TEXTFILE_NAME, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=self.fd)
        except OSError:
            return None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return None
            return os.read(fd, 4 << 20).decode("utf-8", "replace")
        finally:
            os.close(fd)

    def write(self, registry):
        from prometheus_client import generate_latest

        # node_exporter reads it as its own user: 0644.
        replace_file(self.fd, TEXTFILE_NAME, generate_latest(registry), 0o644)


def run(config_path, nvml=None, clock=time.time):
    """One run of the collector: returns (ok, message). Writes the .prom file whatever it found."""
    started = clock()
    try:
        config = load_config(config_path)
        textfile = Textfile(config["textfile_directory"])
    except MetricsError as error:
        return False, str(error)
    try:
        try:
            state, health, control_log, processes, devices, errors = read_host(config, nvml)
        except Exception as error:  # whatever it is (an untrusted pipe, a binary that fails), the file must say so
            textfile.write(failure_registry("control", clock(), clock() - started, previous_success(textfile.read())))
            return False, "cannot read the MPS control daemon of %s: %s" % (config["plan"]["pipe_directory"], error)
        registry = build_registry(state, health, control_log, config["plan"], processes, devices, now=clock(),
                                  duration=clock() - started, errors=errors,
                                  last_success=previous_success(textfile.read()) if errors else None)
        textfile.write(registry)
    finally:
        textfile.close()
    if errors:
        return False, "wrote %s, but could not read %s" % (textfile.path, ", ".join(errors))
    return True, "wrote %s: daemon %s, %d server(s), %d client(s)" % (
        textfile.path, health["daemon"], len(state.get("servers") or []), len(state.get("clients") or []))
