# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Per-GPU pinned limits on a host with N >= 1 GPUs (issue 15), through the collection's own code, on the real GPUs.

    python3 tests/gpu/multi_gpu_check.py --out OUT          # as root on the GPU host; < 120 s on one H200
    python3 tests/gpu/multi_gpu_check.py --simulate --out OUT   # CI, no GPU: stand-ins, NOT a GPU result

No Ansible on the GPU host: the collection's module_utils are imported through a temporary
ansible_collections/gpulab/mps link to this checkout (as tests/gpu/device_plugin/lane.py does). Per round the check
starts its OWN control daemon in a private 0700 pipe directory (never /tmp/nvidia-mps), resolves the round's settings
with _plan.daemon_plan (mps_daemon's validation: devices by NVML index or UUID, each once, MPS ordinal = position in
CUDA_VISIBLE_DEVICES), sends the limits as mps_daemon does (_mps_control.MpsControl, set, then read back), and per
MPS ordinal starts two clients (plugins/module_utils/_cuda_client.py, the driver through ctypes) that report the UUID
of the GPU they really use, from inside, and allocate just under and just over that GPU's limit. Then it reads the
limits back by ordinal (get_default_device_pinned_mem_limit <ordinal>, get_device_pinned_mem_limit <server>
<ordinal>) and from server.log (_mps_output.parse_server_log), releases the clients and stops its daemon.

Rounds: with one GPU, the limit by index, then by UUID; with N >= 2, every GPU (even ones by index, odd ones by UUID)
and a subset in reverse order (visible_devices [UUID of GPU 2 (or 1), "0"], one limit by index, one by UUID, so that
NVML index 0 is MPS ordinal 1). Last, the plan (_plan.build_plan) with DIFFERENT replica counts per GPU (20, 10, 7, 4,
cycling): each GPU's share must be its memory // its replicas, in the plan and in the fork's config; the plan refuses
per-GPU counts with owner host (the host daemon never gets them: per-GPU counts need mode individual, which owner
host refuses), so the shares are applied by index on this check's daemon, as the plugin's own daemon sets them.

It never changes compute mode, clocks, power, persistence or MIG (it runs no nvidia-smi at all, and reads the compute
modes through NVML before and after). Output: one ok/FAIL line per check and a VERDICT on stdout and in OUT/summary.txt,
everything seen in OUT/results.json. Exit 0 only when every check holds.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
STANDINS = os.path.join(ROOT, "tests", "standins")
sys.path.insert(0, os.path.join(HERE, "device_plugin"))
from lane import check, collection_path  # noqa: E402  (stdlib only: the link, and the lane's check record)

MIB = 1 << 20
REPLICA_CYCLE = (20, 10, 7, 4)
# Just under and just over a limit: the driver-API client's context took ~58 MiB under MPS on the H200 at 5 % of the
# SMs (7188M limit: 7130 MiB free), so limit - 256 fits and limit + 256 does not.
THREAD_PERCENTAGE = 5
MARGIN_MIB = 256
# How far below its limit a client may see its free memory; each round's limits differ by >= 512 MiB per GPU.
FREE_BAND_MIB = 448
BINARY_DIRS = ("/usr/local/nvidia/bin", "/usr/bin", "/usr/local/bin")


# --- the rounds (pure: tested on the CPU, tests/unit/gpu/test_multi_gpu_check.py) ------------------------------

def replica_counts(gpus):
    """{NVML index: replicas}: 20, 10, 7, 4, cycling, so that neighbouring GPUs differ."""
    return dict((g["index"], REPLICA_CYCLE[pos % len(REPLICA_CYCLE)]) for pos, g in enumerate(gpus))


def limit_rounds(gpus):
    """[{name, visible_devices, pinned, note}] for N GPUs: the settings as a user gives them to mps_daemon."""
    uuid = dict((g["index"], g["uuid"]) for g in gpus)
    if len(gpus) == 1:
        return [{"name": "one-gpu-by-index", "visible_devices": None, "pinned": {"0": "2560M"}},
                {"name": "one-gpu-by-uuid", "visible_devices": None, "pinned": {uuid[0]: "3072M"}}]
    every = dict(((str(g["index"]) if g["index"] % 2 == 0 else g["uuid"]), "%dM" % (2048 + 512 * g["index"]))
                 for g in gpus)
    other = min(2, len(gpus) - 1)
    return [{"name": "all-gpus-index-and-uuid", "visible_devices": None, "pinned": every},
            {"name": "subset-%d,0-reversed" % other, "visible_devices": [uuid[other], "0"],
             "pinned": {str(other): "3584M", uuid[0]: "3072M"}}]


def expected_ordinals(gpus, visible_devices):
    """{MPS ordinal: UUID}, worked out apart from _plan: the position in CUDA_VISIBLE_DEVICES, else the NVML index."""
    if not visible_devices:
        return dict((str(g["index"]), g["uuid"]) for g in gpus)
    out = {}
    for pos, selector in enumerate(visible_devices):
        match = [g for g in gpus if (selector.isdigit() and g["index"] == int(selector)) or g["uuid"] == selector]
        out[str(pos)] = match[0]["uuid"]
    return out


def plan_settings(pipe, log, state, binary, gpus, owner="plugin"):
    return {"owner": owner, "pipe_directory": pipe, "log_directory": log, "state_directory": state,
            "control_binary": binary, "sharing": {"mode": "individual", "replicas": REPLICA_CYCLE[0],
                                                  "replicas_per_gpu": dict((str(i), r) for i, r in
                                                                           replica_counts(gpus).items())}}


class Check(object):
    def __init__(self, args):
        self.args = args
        self.simulated = args.simulate
        self.results = {"started": time.time(), "simulated": self.simulated, "rounds": [], "skipped": []}
        self.made = []          # directories this run made (removed at the end)
        self.children = []      # client processes this run started
        self.daemons = []       # (MpsControl, pid) of the daemons this run started

    def log(self, message):
        print("[%5.1fs] %s" % (time.time() - self.results["started"], message), flush=True)

    # set-up -------------------------------------------------------------------------------------------------
    def setup(self):
        if self.simulated:
            # Stand-ins (tests/standins): the recorded H100's NVML and CLI. NOT a GPU result.
            os.environ.setdefault("GPULAB_STANDIN_GPUS", "4")
            sys.path.insert(0, STANDINS)
            tools = self.private_dir("gpulab-multigpu-tools-")
            self.binary = os.path.join(tools, "nvidia-cuda-mps-control")
            with open(self.binary, "w") as handle:
                # The daemon gets the plan's environment only: the stand-in's GPU count travels in its wrapper.
                handle.write('#!/bin/sh\nGPULAB_STANDIN_GPUS=%s exec %s %s "$@"\n'
                             % (os.environ["GPULAB_STANDIN_GPUS"], sys.executable,
                                os.path.join(STANDINS, "nvidia-cuda-mps-control")))
            os.chmod(self.binary, 0o700)
        else:
            if os.geteuid() != 0:
                raise SystemExit("run as root on the GPU host (the MPS server of root's clients is checked)")
            self.binary = self.args.control_binary or next(
                (os.path.join(d, "nvidia-cuda-mps-control") for d in BINARY_DIRS
                 if os.access(os.path.join(d, "nvidia-cuda-mps-control"), os.X_OK)), None)
            if not self.binary:
                raise SystemExit("nvidia-cuda-mps-control not found in %s (give --control-binary)"
                                 % ", ".join(BINARY_DIRS))
        sys.path.insert(0, collection_path())
        from ansible_collections.gpulab.mps.plugins.module_utils import (
            _cuda_client, _device_plugin, _mps_control, _mps_output, _nvml, _plan, _sizes)
        self.cuda, self.dp, self.mc, self.output, self.nvml, self.plan, self.sizes = (
            _cuda_client, _device_plugin, _mps_control, _mps_output, _nvml, _plan, _sizes)
        self.driver, self.gpus = self.read_nvml()
        self.results.update(driver=self.driver, gpus=self.gpus, control_binary=self.binary,
                            compute_modes_before=self.modes(self.gpus))
        # The clients' and the daemon's environment: no CUDA_* or NVIDIA_* of the caller's.
        self.env = dict((k, v) for k, v in os.environ.items() if not k.startswith(("CUDA_", "NVIDIA_")))
        self.log("%d GPU(s): %s%s" % (len(self.gpus), "; ".join("%d %s %s %d MiB" % (
            g["index"], g["name"], g["uuid"], g["memory_total_mib"]) for g in self.gpus),
            " [SIMULATED: stand-ins, no GPU]" if self.simulated else ""))

    def read_nvml(self):
        if self.simulated:
            import pynvml as standin  # tests/standins/pynvml.py, first on sys.path
            self.nvml.pynvml, self.nvml.HAS_PYNVML = standin, True
        with self.nvml.Nvml() as nvml:
            return nvml.driver(), nvml.gpus()

    @staticmethod
    def modes(gpus):
        return dict((g["uuid"], (g.get("compute_mode"), g.get("mig_mode_current"))) for g in gpus)

    def private_dir(self, prefix):
        path = tempfile.mkdtemp(prefix=prefix)   # 0700, made exclusively: no other user can have planted it
        self.made.append(path)
        return path

    def mps_pids(self):
        """MPS processes (control daemons, servers) of this run's pipe directories or daemons: others' are left alone
        (another lane or user may run its own at the same time)."""
        ours = set(p for _c, p in self.daemons if p)
        pipes = set(c.pipe_directory.encode() for c, _p in self.daemons)
        pids = set()
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open("/proc/%s/comm" % entry) as handle:
                    if not handle.read().strip().startswith("nvidia-cuda-mps"):
                        continue
                with open("/proc/%s/stat" % entry) as handle:
                    fields = handle.read().rsplit(")", 1)[1].split()
                with open("/proc/%s/environ" % entry, "rb") as handle:
                    env = dict(i.split(b"=", 1) for i in handle.read().split(b"\0") if b"=" in i)
            except OSError:
                continue
            if fields[0] != "Z" and (int(entry) in ours or int(fields[1]) in ours
                                     or env.get(b"CUDA_MPS_PIPE_DIRECTORY") in pipes):
                pids.add(int(entry))
        return pids

    # one round ----------------------------------------------------------------------------------------------
    def run_round(self, name, visible, pinned, note=None):
        checks = []
        record = {"name": name, "visible_devices": visible, "pinned_memory_limit": pinned, "checks": checks}
        if note:
            record["note"] = note
        self.results["rounds"].append(record)
        self.log("=== %s: visible_devices %s, pinned %s" % (name, visible, pinned))
        daemon, errors = self.plan.daemon_plan(self.gpus, visible, None, pinned)
        record["daemon"] = daemon
        want = expected_ordinals(self.gpus, visible)
        check(checks, "daemon_plan accepts the settings", not errors, errors)
        check(checks, "MPS ordinals -> GPUs (position in CUDA_VISIBLE_DEVICES, else NVML index)",
              daemon["devices"] == want, daemon["devices"], want)
        if errors:
            return
        pipe = self.private_dir("gpulab-multigpu-pipe-")
        log = self.private_dir("gpulab-multigpu-log-")
        env = self.mc.daemon_environment(pipe, log, daemon["visible_devices"])
        control = self.mc.MpsControl(self.binary, pipe, log, environment=env, timeout=30, trusted_uids=[os.geteuid()])
        record["daemon_environment"] = env
        clients = []
        try:
            rc, out, err = control.start_daemon()
            up = rc == 0 and control.wait(control.is_running, 20)
            pid = control.daemon_pid()
            self.daemons.append((control, pid))
            if not check(checks, "control daemon started in a private 0700 pipe directory",
                         up and os.stat(pipe).st_mode & 0o777 == 0o700, {"rc": rc, "out": (out + err).strip(),
                                                                         "pid": pid, "pipe_directory": pipe}):
                return
            limits = dict((int(o), b) for o, b in daemon["pinned_memory_limit"].items())
            # The thread share of 20 replicas, as the lab's daemon has it (replica limits "memory_and_threads"). A
            # client's context counts against its pinned limit and grows with its share of the SMs: on the H200 it
            # took ~58 MiB at 5 % and ~514 MiB at 100 % (docs/evidence/2026-12-04-h200-multi-gpu.md).
            control.set_default_active_thread_percentage(THREAD_PERCENTAGE)
            for ordinal, size in sorted(limits.items()):
                control.set_default_pinned_limit(ordinal, self.sizes.mps_size(size))
                shown = control.default_pinned_limit(ordinal)
                check(checks, "ordinal %d: get_default_device_pinned_mem_limit after set %s" % (
                    ordinal, self.sizes.mps_size(size)), self.sizes.readback_matches(size, shown), shown,
                    "%s, read back rounded down" % self.sizes.mps_size(size))
            # One kind at a time: every GPU's "under" clients, released, then the "over" ones.
            for kind in ("under", "over"):
                batch = self.start_clients(limits, control, checks, len(want), kind)
                clients.extend(batch)
                self.judge_clients(batch, want, limits, control, checks)
                for client in batch:
                    self.release(client)
            self.read_server(limits, control, log, checks)
        except (self.mc.MpsControlError, RuntimeError) as error:
            check(checks, "round ran", False, "%s: %s" % (type(error).__name__, error))
        finally:
            for client in clients:
                self.release(client)
            self.stop_daemon(control, checks)

    def start_clients(self, limits, control, checks, device_count, kind):
        clients = []
        for ordinal, size in sorted(limits.items()):
            for mib in ([size // MIB - MARGIN_MIB] if kind == "under" else [size // MIB + MARGIN_MIB]):
                entry = {"ordinal": ordinal, "kind": kind, "alloc_mib": mib, "limit_mib": size // MIB}
                if self.simulated:
                    # A stand-in "client": a live process the stand-in daemon counts (its hidden test hook).
                    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
                    control.run("standin_attach_client %d %d" % (proc.pid, ordinal))
                    entry.update(proc=proc, report={"pid": proc.pid, "simulated": True})
                else:
                    argv = self.cuda.client_argv(sys.executable, device=ordinal, alloc_mib=mib, hold=60,
                                                 release_on_stdin=True)
                    env = dict(self.env, CUDA_MPS_PIPE_DIRECTORY=control.pipe_directory,
                               CUDA_MPS_LOG_DIRECTORY=control.log_directory)
                    entry["client"] = self.cuda.ClientProcess(argv, env)
                self.children.append(entry)
                clients.append(entry)
        deadline = time.time() + 60
        for entry in clients:
            if "client" in entry:
                try:
                    entry["report"] = entry["client"].report(deadline)
                except (self.cuda.ClientTimeout, ValueError) as error:
                    entry["report"] = {"error": "%s: %s" % (type(error).__name__, entry["client"].output())}
        return clients

    def judge_clients(self, clients, want, limits, control, checks):
        ps = control.ps()
        listed = set(c["pid"] for c in ps)
        for entry in clients:
            report, ordinal = entry["report"], entry["ordinal"]
            label = "ordinal %d (%s) client %s %d MiB" % (ordinal, want[str(ordinal)], entry["kind"], entry["alloc_mib"])
            check(checks, "%s: an MPS client (its pid in ps)" % label, report.get("pid") in listed,
                  {"pid": report.get("pid"), "ps": [c["pid"] for c in ps]})
            if self.simulated:
                continue
            seen = {k: report.get(k) for k in ("uuid", "device_count", "alloc", "error")}
            seen["free_mib"] = report.get("free_bytes", 0) // MIB
            check(checks, "%s: the GPU it really uses (UUID from inside)" % label,
                  report.get("uuid") == want[str(ordinal)] and report.get("device_count") == len(want), seen,
                  {"uuid": want[str(ordinal)], "device_count": len(want)})
            limit = entry["limit_mib"]
            check(checks, "%s: sees its GPU's limit as free memory" % label,
                  limit - FREE_BAND_MIB < seen["free_mib"] <= limit, seen["free_mib"],
                  "(%d, %d] MiB" % (limit - FREE_BAND_MIB, limit))
            alloc = report.get("alloc") or {}
            if entry["kind"] == "under":
                check(checks, "%s: allocation succeeds" % label, alloc.get("ok") is True and not report.get("error"),
                      alloc or report.get("error"))
            else:
                check(checks, "%s: allocation fails with out of memory" % label,
                      alloc.get("ok") is False and alloc.get("error") == "CUDA_ERROR_OUT_OF_MEMORY", alloc or
                      report.get("error"))

    def read_server(self, limits, control, log, checks):
        servers = control.server_list()
        check(checks, "one MPS server for the round's clients", len(servers) == 1, servers)
        logged = self.output.parse_server_log(control.read_log("server.log"))
        for server in servers:
            for ordinal, size in sorted(limits.items()):
                exact = (logged.get(server) or {}).get("pinned_memory_limit", {}).get(ordinal)
                check(checks, "ordinal %d: server.log of server %d" % (ordinal, server), exact == size,
                      exact, size)
                if self.simulated:
                    continue   # the stand-in CLI has no get_device_pinned_mem_limit
                shown = control.server_pinned_limit(server, ordinal)
                check(checks, "ordinal %d: get_device_pinned_mem_limit %d %d" % (ordinal, server, ordinal),
                      self.sizes.readback_matches(size, shown), shown, self.sizes.mps_size(size))

    def release(self, entry):
        try:
            if "client" in entry:
                entry["client"].release(time.time() + 30)
            elif entry.get("proc") is not None:
                entry["proc"].kill()
                entry["proc"].wait()
        except self.cuda.ClientTimeout:
            entry["client"].kill()

    def stop_daemon(self, control, checks):
        try:
            if control.is_running():
                control.quit()
        except self.mc.MpsControlError as error:
            self.log("quit on %s: %s" % (control.pipe_directory, error))
        pid = next((p for c, p in self.daemons if c is control), None)
        gone = control.wait(lambda: not control.is_running(), 30) and \
            control.wait(lambda: not (pid and self.mc.pid_alive(pid)), 15)
        check(checks, "control daemon stopped (quit) and its process gone", gone,
              {"pipe_directory": control.pipe_directory, "pid": pid})

    # the plan -------------------------------------------------------------------------------------------------
    def plan_round(self):
        checks = []
        record = {"name": "plan-per-gpu-replicas", "checks": checks}
        self.results["rounds"].append(record)
        counts = replica_counts(self.gpus)
        self.log("=== plan: replicas per GPU %s" % counts)
        state = self.private_dir("gpulab-multigpu-state-")
        settings = plan_settings("/run/gpulab-multigpu/pipe", "/run/gpulab-multigpu/log", state, self.binary, self.gpus)
        try:
            plan = self.plan.build_plan(self.driver, self.gpus, settings)
        except self.plan.PlanError as error:
            check(checks, "the plan with per-GPU replicas (owner plugin, mode individual)", False, error.errors)
            return None
        rows = dict((r["index"], r) for r in plan["sharing"]["gpus"])
        want = dict((g["index"], g["memory_total_mib"] // counts[g["index"]]) for g in self.gpus)
        record["shares_mib"] = want
        check(checks, "plan: each GPU's memory per replica = its memory // its replicas",
              dict((i, r["memory_per_replica_mib"]) for i, r in rows.items()) == want,
              dict((i, [r["replicas"], r["memory_per_replica_mib"]]) for i, r in rows.items()), want)
        config = self.dp.plugin_config(self.gpus, mode="individual", owner="plugin", replicas=REPLICA_CYCLE[0],
                                       per_gpu_replicas=counts)
        rendered = dict((c["index"], c["mps"].get("pinnedMemoryLimit")) for c in config["individualGPU"]["gpuConfigs"])
        check(checks, "fork config: gpuConfigs[].mps.pinnedMemoryLimit per GPU", rendered == want, rendered, want)
        check(checks, "plan: the host daemon is stopped with owner plugin (the plugin's daemon sets the shares)",
              plan["daemon"]["state"] == "stopped" and plan["daemon"]["pinned_memory_limit"] == {},
              {"state": plan["daemon"]["state"], "pinned": plan["daemon"]["pinned_memory_limit"]})
        try:
            self.plan.build_plan(self.driver, self.gpus, plan_settings("/run/x/pipe", "/run/x/log", state, self.binary,
                                                                       self.gpus, owner="host"))
            refused = None
        except self.plan.PlanError as error:
            refused = error.errors
        check(checks, "plan: per-GPU replicas with owner host are refused (the host daemon never gets them)",
              bool(refused) and "cannot work with owner host" in refused[0], refused)
        return dict((str(i), "%dM" % mib) for i, mib in want.items())

    # the whole run --------------------------------------------------------------------------------------------
    def main(self):
        os.makedirs(self.args.out, exist_ok=True)
        try:
            self.setup()
            if len(self.gpus) < 2:
                self.results["skipped"] = [
                    "N < 2: no subset of GPUs in another order, no two GPUs with different limits at once, no GPU "
                    "whose index differs from its MPS ordinal; the 4-GPU run (kind nvidia-h200-x4) shows those"]
            if self.simulated:
                self.results["skipped"].append(
                    "SIMULATED: no CUDA client ran (stand-in clients only): no UUID from inside, no allocation, no "
                    "get_device_pinned_mem_limit; nothing here is a GPU result")
            for r in limit_rounds(self.gpus):
                self.run_round(r["name"], r["visible_devices"], r["pinned"])
            shares = self.plan_round()
            if shares:
                self.run_round("plan-shares-by-index", None, shares,
                               note="each GPU's share of its own replica count, as the plugin's daemon sets it")
        except SystemExit as error:
            self.results["setup_error"] = str(error)
        finally:
            self.teardown()
            self.report()
        return 0 if self.results.get("ok") else 1

    def teardown(self):
        for entry in self.children:
            proc = entry["client"].proc if "client" in entry else entry.get("proc")
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
        for control, pid in self.daemons:
            if pid and self.mc.pid_alive(pid) and control.is_daemon_process(pid):
                self.log("daemon %d of %s still there: SIGTERM" % (pid, control.pipe_directory))
                os.kill(pid, signal.SIGTERM)
        deadline = time.time() + 15    # a server exits a moment after its daemon's quit
        while self.mps_pids() and time.time() < deadline:
            time.sleep(0.5)
        left = sorted(self.mps_pids())
        self.results["mps_processes_left"] = left
        if hasattr(self, "gpus") and not self.simulated:
            self.results["compute_modes_after"] = self.modes(self.read_nvml()[1])
        elif hasattr(self, "gpus"):
            self.results["compute_modes_after"] = self.results["compute_modes_before"]
        for path in reversed(self.made):
            shutil.rmtree(path, ignore_errors=True)

    def report(self):
        r = self.results
        r["finished"] = time.time()
        modes_ok = r.get("compute_modes_before") == r.get("compute_modes_after")
        simulated = " -- SIMULATED (stand-ins, no GPU): NOT A GPU RESULT" if self.simulated else ""
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(r["started"]))
        lines = ["gpulab.mps multi-GPU check, %s%s" % (started, simulated),
                 "driver %s; GPUs: %s" % ((r.get("driver") or {}).get("driver_version"), "; ".join(
                     "%d %s %s %d MiB" % (g["index"], g["name"], g["uuid"], g["memory_total_mib"])
                     for g in r.get("gpus", []))), ""]
        for rnd in r["rounds"]:
            rnd["ok"] = bool(rnd["checks"]) and all(c["ok"] for c in rnd["checks"])
            lines.append("%s %s" % ("PASS" if rnd["ok"] else "FAIL", rnd["name"]))
            for c in rnd["checks"]:
                expected = (" (expected %s)" % json.dumps(c["expected"])
                            if not c["ok"] and "expected" in c else "")
                lines.append("  %s %s: %s%s" % ("ok  " if c["ok"] else "FAIL", c["check"], json.dumps(c["seen"])[:240],
                                                expected))
        lines += ["", "skipped: %s" % ("; ".join(r["skipped"]) or "nothing"),
                  "compute and MIG modes before/after: %s" % ("unchanged" if modes_ok else "CHANGED %s -> %s" % (
                      r.get("compute_modes_before"), r.get("compute_modes_after"))),
                  "MPS processes left: %s" % (r["mps_processes_left"] or "none")]
        if r.get("setup_error"):
            lines.append("setup_error: %s" % r["setup_error"])
        r["ok"] = bool(r["rounds"]) and all(x["ok"] for x in r["rounds"]) and modes_ok \
            and not r["mps_processes_left"] and not r.get("setup_error")
        lines.append("VERDICT: %s%s (%d rounds, %.0f s)" % (
            "SIMULATED, NOT A GPU RESULT: " if self.simulated else "", "PASS" if r["ok"] else "FAIL",
            len(r["rounds"]), r["finished"] - r["started"]))
        text = "\n".join(lines) + "\n"
        print(text)
        with open(os.path.join(self.args.out, "summary.txt"), "w") as handle:
            handle.write(text)
        with open(os.path.join(self.args.out, "results.json"), "w") as handle:
            json.dump(r, handle, indent=1, sort_keys=True, default=str)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--out", required=True, help="where summary.txt and results.json go")
    parser.add_argument("--control-binary", help="nvidia-cuda-mps-control (default: found in %s)" % ", ".join(BINARY_DIRS))
    parser.add_argument("--simulate", action="store_true",
                        help="no GPU: the NVML and CLI stand-ins of tests/standins (GPULAB_STANDIN_GPUS, default 4), "
                             "no CUDA client; checks the plumbing only and says SIMULATED, NOT A GPU RESULT")
    return Check(parser.parse_args(argv)).main()


if __name__ == "__main__":
    sys.exit(main())
