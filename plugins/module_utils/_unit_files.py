# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""The systemd files of the collection, rendered from checked values: the host daemon's unit, its defaults drop-in
and its tmpfiles.d entry (from the host's plan, for mps_unit), and the metrics collector's service and timer (for
the mps_metrics role, through the filter gpulab.mps.mps_metrics_units).

This is a private module_utils of gpulab.mps: its API may change without notice. STANDARD LIBRARY ONLY. Pure: data
in, text out.

Every value passes its format's function in _formats (unit names, paths and words of Exec*= and Environment= lines,
tmpfiles.d lines, comments): a value a format cannot carry raises FormatError, naming it, before anything is
written. The only text that is not a checked value is written here, as constants. The units call the collection's
entry point (gpulab_mps.py, installed by the role gpulab.mps.mps_client) for everything they ask of MPS - never a
shell line piped into the control binary - and carry no PIDFile=: MPS makes its pid file writable by every user
(MPS-FACTS), so systemd takes the forked daemon's PID itself (GuessMainPID=yes: the daemon is the one process
of the service left once `nvidia-cuda-mps-control -d` returns).
"""

from __future__ import annotations

import os

from ansible_collections.gpulab.mps.plugins.module_utils._formats import (
    FormatError, comment_line, tmpfiles_line, unit_command, unit_environment, unit_name, unit_path)

# The first line of every systemd file the collection renders starts with it: what tells the collection's files from
# files someone else put there (they alone are removed).
MARKER = "# gpulab.mps: "
DROPIN_NAME = "gpulab-defaults.conf"
ENTRY_POINT = "gpulab_mps.py"
# Seconds systemd waits past the daemon's own stop (quit -t N forces the servers down after N s).
STOP_GRACE = 30


def _int(value, option, low, high):
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise FormatError("%s must be a whole number from %d to %d, got %r" % (option, low, high, value))
    return value


def _get(data, *keys):
    for key in keys:
        if not isinstance(data, dict) or key not in data:
            raise FormatError("the plan has no %s: run the gpulab.mps.preflight role of this collection again"
                              % ".".join(keys))
        data = data[key]
    return data


def daemon_paths(plan):
    """Where the daemon's files go: {"unit", "dropin_directory", "dropin", "tmpfiles"} (paths checked)."""
    name = unit_name(_get(plan, "daemon", "service_name"), "mps_host_service_name")
    units = unit_path(_get(plan, "files", "unit_directory"), "mps_host_unit_directory")
    tmpfiles = unit_path(_get(plan, "files", "tmpfiles_directory"), "mps_host_tmpfiles_directory")
    return {"unit": "%s/%s.service" % (units, name), "dropin_directory": "%s/%s.service.d" % (units, name),
            "dropin": "%s/%s.service.d/%s" % (units, name, DROPIN_NAME),
            "tmpfiles": "%s/gpulab-%s.conf" % (tmpfiles, name)}


def client_files(plan):
    """(entry point, plan file): what the unit runs and reads, installed by the role mps_client."""
    lib = unit_path(_get(plan, "files", "lib_directory"), "gpulab_mps_lib_directory")
    return "%s/%s" % (lib, ENTRY_POINT), unit_path(_get(plan, "files", "plan_file"), "the plan file")


def entry_point(plan):
    """The argv that runs the collection's entry point with the plan file. -I: Python isolated from the environment
    and the working directory (the entry point puts its own directory on sys.path)."""
    python = unit_path(_get(plan, "host", "python") or "", "the plan's host.python (an interpreter root may run)")
    script, plan_file = client_files(plan)
    return [python, "-I", script, "--plan", plan_file]


def has_defaults(plan):
    daemon = _get(plan, "daemon")
    return daemon.get("active_thread_percentage") is not None or bool(daemon.get("pinned_memory_limit_mps"))


def _marked(text, option):
    """The first line of a file the collection renders: MARKER, then one line of text."""
    return comment_line(MARKER[2:] + text, option)


def _text(lines):
    return "\n".join(lines) + "\n"


def daemon_files(plan, timeout):
    """[(path, text)] of the host daemon: its tmpfiles.d entry, its unit and its defaults drop-in, in that order.

    timeout: the seconds of the entry point's calls, and after which `stop` forces the servers down (quit -t)."""
    timeout = _int(timeout, "timeout", 1, 3600)
    paths = daemon_paths(plan)
    name = unit_name(_get(plan, "daemon", "service_name"), "mps_host_service_name")
    pipe = unit_path(_get(plan, "pipe_directory"), "pipe_directory")
    log = unit_path(_get(plan, "log_directory"), "log_directory")
    binary = unit_path(_get(plan, "control_binary"), "control_binary")
    environment = _get(plan, "daemon", "environment")
    if not isinstance(environment, dict):
        raise FormatError("the plan's daemon.environment must be a dict, got %r" % (environment,))
    client = entry_point(plan)
    where = "%s.service" % name

    # Mode, user and group "-": made root's 0755 when missing, and an existing directory is left as it is (a "d" line
    # with them given would chown and chmod a directory another user made first; the unit's check then refuses it).
    tmpfiles = [_marked("the pipe and log directories of %s, made by systemd-tmpfiles at boot, before any user could "
                        "make them, and at every start of the unit (role gpulab.mps.mps_host), root's 0755 when "
                        "missing; an existing one is never adopted. Age -: never cleaned." % where, "tmpfiles")]
    for directory in list(dict.fromkeys([pipe, log])):
        tmpfiles.append(tmpfiles_line("d", directory, "-", "-", "-", "-", "pipe/log directory"))

    unit = [_marked("%s, the NVIDIA MPS control daemon of %s (role gpulab.mps.mps_host)." % (where, pipe), "unit"),
            "# Rendered by gpulab.mps.mps_unit from the host's plan, every value checked for this format; changes",
            "# here are overwritten. The defaults of new MPS servers are in the drop-in %s." % DROPIN_NAME,
            "[Unit]",
            "Description=NVIDIA MPS control daemon (%s)" % pipe,
            "After=local-fs.target systemd-tmpfiles-setup.service",
            "Wants=local-fs.target",
            "",
            "[Service]",
            "Type=forking",
            "# No PIDFile=: MPS makes its pid file writable by every user. The daemon is the one process of the",
            "# service left when `-d` returns, and systemd takes it for the main process.",
            "GuessMainPID=yes",
            "# The daemon's whole environment, from the plan (never the environment of whoever starts the unit)."]
    unit += ["Environment=%s" % unit_environment(key, environment[key], "daemon.environment.%s" % key)
             for key in sorted(environment)]
    unit += ["# The pipe and log directories: made by systemd-tmpfiles, then proved root's real directories that",
             "# nobody else can write, by the collection's entry point (the daemon starts only then).",
             "ExecStartPre=%s" % unit_command(["systemd-tmpfiles", "--create", paths["tmpfiles"]], "ExecStartPre"),
             "ExecStartPre=%s" % unit_command(client + ["check-directories"], "ExecStartPre"),
             "ExecStart=%s" % unit_command([binary, "-d"] + (["-M"] if _get(plan, "daemon").get("multiuser_server")
                                                             else []), "ExecStart"),
             "# quit -t %d: the servers are forced down after %d s of waiting for their clients." % (timeout, timeout),
             "ExecStop=%s" % unit_command(client + ["--timeout", str(timeout), "stop"], "ExecStop"),
             "TimeoutStopSec=%d" % (timeout + STOP_GRACE),
             "Restart=on-failure",
             "RestartSec=2",
             "",
             "[Install]",
             "WantedBy=multi-user.target"]

    dropin = [_marked("the defaults of the MPS servers of %s (role gpulab.mps.mps_host)." % where, "drop-in"),
              "# They live in the daemon's memory: the collection's entry point sets them from the plan at every",
              "# start, reads them back and records the exact bytes, as gpulab.mps.mps_daemon does.",
              "[Service]"]
    if has_defaults(plan):
        dropin.append("ExecStartPost=%s" % unit_command(client + ["--timeout", str(timeout), "apply-defaults"],
                                                        "ExecStartPost"))
    else:
        dropin.append("# The plan sets no default: nothing to apply.")
    return [(paths["tmpfiles"], _text(tmpfiles)), (paths["unit"], _text(unit)), (paths["dropin"], _text(dropin))]


def metrics_units(unit_directory, service_name, python, script, config, lib_directory, interval, timeout):
    """[{"path", "content"}] of the metrics collector's oneshot service and its timer (role mps_metrics)."""
    units = unit_path(unit_directory, "mps_metrics_unit_directory")
    name = unit_name(service_name, "mps_metrics_service_name")
    interval = _int(interval, "mps_metrics_interval", 2, 3600)
    timeout = _int(timeout, "mps_metrics_timeout", 1, 300)
    command = unit_command([unit_path(python, "the collector's python"), "-I", unit_path(script, "the collector"),
                            "--config", unit_path(config, "the collector's configuration"),
                            "--lib", unit_path(lib_directory, "gpulab_mps_lib_directory")], "ExecStart")
    service = [_marked("%s.service, one reading of MPS for node_exporter's textfile collector (role "
                       "gpulab.mps.mps_metrics, docs/metrics.md)." % name, "service"),
               "[Unit]",
               "Description=gpulab.mps MPS metrics collector",
               "After=local-fs.target",
               "",
               "[Service]",
               "Type=oneshot",
               "# 1: the file was written and says what could not be read (gpulab_mps_collector_success 0).",
               "SuccessExitStatus=1",
               "UMask=0022",
               "ExecStart=%s" % command,
               "# Every call of the control binary is bounded by mps_metrics_timeout; this bounds the whole run.",
               "TimeoutStartSec=%d" % max(interval * 4, timeout * 8),
               "Nice=10",
               "NoNewPrivileges=yes",
               "ProtectHome=read-only",
               "PrivateNetwork=yes"]
    timer = [_marked("%s.timer, the MPS metrics every %d s (role gpulab.mps.mps_metrics)." % (name, interval), "timer"),
             "[Unit]",
             "Description=gpulab.mps MPS metrics every %d s" % interval,
             "",
             "[Timer]",
             "OnBootSec=%ds" % interval,
             "OnUnitActiveSec=%ds" % interval,
             "AccuracySec=1s",
             "",
             "[Install]",
             "WantedBy=timers.target"]
    return [{"path": os.path.join(units, name + ".service"), "content": _text(service)},
            {"path": os.path.join(units, name + ".timer"), "content": _text(timer)}]
