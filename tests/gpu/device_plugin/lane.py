# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The device-plugin lane of the GPU host: the REAL NVIDIA device plugin, run against the configs this collection
renders, with the project's kubelet stand-in, both owners of MPS, both modes, upstream and the seed-004 fork.

    python3 tests/gpu/device_plugin/lane.py --bin DIR --out "$OUT" [--sha256 FILE]   # as root, on the GPU host, < 5 min

The project builds none of the binaries: DIR holds what the user took from the released images (BINARIES below:
upstream/ from nvcr.io/nvidia/k8s-device-plugin:v0.20.0, fork/ from the seed-004 fork's image, each file plain or
gzipped as NAME.gz) and the device plugin API's api.proto of k8s.io/kubelet; binaries.take() checks what each prints
for --version and, with --sha256, their checksums, and names everything missing before anything starts. Per
scenario the lane writes the config that _device_plugin.plugin_config
renders (the code the device_plugin role runs), starts what that owner runs (owner plugin: the plugin's
mps-control-daemon; owner host: the host daemon with the defaults of the host's plan, _plan.build_plan, sent as
mps_daemon sends them), starts nvidia-device-plugin, and as the kubelet (kubelet_standin.py, on
/var/lib/kubelet/device-plugins/kubelet.sock) checks: the resources registered and their device counts; Allocate's
env and mounts; a request for 2 replicas; the daemon's defaults read back through the real CLI; and CUDA clients
(plugins/module_utils/_cuda_client.py) started with exactly the env a pod would get (Allocate's, plus the pipe
directory of the pod spec for owner host): 7000 MiB must run as an MPS client, 8000 MiB must fail (20 replicas of
143771 MiB on the H200 are 7188 MiB each).

The GPU is shared: both binaries run `nvidia-smi -c` through PATH (EXCLUSIVE_PROCESS at start, DEFAULT at stop), so
a guard nvidia-smi comes first on PATH: it refuses (exit 0, so that the daemon goes on; it logs each refusal)
every option that changes the GPU (-c, -pm, -pl, -ac, -rac, -lgc, -rgc, -lmc, -rmc, -mig, -r and their long forms)
and passes everything else to the real one. Compute mode is read before and after every scenario. Every daemon the
lane started is stopped (by its pid, or `quit` on its pipe directory); MPS processes that appeared during the run
and are still there at the end are reported and ended by pid.

Output in --out: summary.txt (one line per check and a verdict), results.json (everything seen), logs.tar.gz (the
binaries' logs, the MPS logs, the configs, the guard's log). Exit 0 only when every check holds.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tarfile
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(HERE)))
sys.path.insert(0, HERE)

import binaries  # noqa: E402

# Where the real nvidia-smi and nvidia-cuda-mps-control are (GPULAB_LANE_NVIDIA_BIN: another directory, for a dry
# run on a machine without a GPU).
REAL_SMI_DIRS = tuple(filter(None, [os.environ.get("GPULAB_LANE_NVIDIA_BIN")])) or ("/usr/local/nvidia/bin", "/usr/bin")
SOCKET_DIR = "/var/lib/kubelet/device-plugins"
MPS_HOST_ROOT = "/run/nvidia/mps"   # the chart's mps.root (MPS_ROOT of the plugin: the host side of its mounts)
MPS_CONTAINER_ROOT = "/mps"         # hard-coded in both binaries: here a symlink to MPS_HOST_ROOT, as a mount would be
WORK = "/tmp/gpulab-dp-lane"
# What --bin must hold. A user extracts a release image's binaries without running it:
#   docker create --name dp nvcr.io/nvidia/k8s-device-plugin:v0.20.0
#   docker cp dp:/usr/bin/nvidia-device-plugin DIR/upstream/; docker cp dp:/usr/bin/mps-control-daemon DIR/upstream/
#   docker rm dp
_IMAGE = "docker cp from the release image %s (/usr/bin/%s)"
_UPSTREAM = "nvcr.io/nvidia/k8s-device-plugin:v0.20.0"
_FORK = "the seed-004 fork's image (linskybing/k8s-device-plugin, branch mps-individual-gpu, commit 52596d72)"
PROTO = "deviceplugin-v1beta1.proto"
BINARIES = (
    binaries.Wanted("upstream/nvidia-device-plugin", ["--version"], r"\bv0\.20\.0\b",
                    _IMAGE % (_UPSTREAM, "nvidia-device-plugin")),
    binaries.Wanted("upstream/mps-control-daemon", ["--version"], r"\bv0\.20\.0\b",
                    _IMAGE % (_UPSTREAM, "mps-control-daemon")),
    # The fork publishes no release: its version string is whatever its image was built with (pin it with --sha256).
    binaries.Wanted("fork/nvidia-device-plugin", ["--version"], None, _IMAGE % (_FORK, "nvidia-device-plugin")),
    binaries.Wanted("fork/mps-control-daemon", ["--version"], None, _IMAGE % (_FORK, "mps-control-daemon")),
    binaries.Wanted(PROTO, None, None, "pkg/apis/deviceplugin/v1beta1/api.proto of kubernetes/kubelet, at the release "
                    "that the plugin's go.mod names for k8s.io/kubelet"),
)

# Options of nvidia-smi that change the GPU: the guard refuses them.
REFUSED = ("-c", "--compute-mode", "-pm", "--persistence-mode", "-pl", "--power-limit", "-ac", "--applications-clocks",
           "-rac", "--reset-applications-clocks", "-lgc", "--lock-gpu-clocks", "-rgc", "--reset-gpu-clocks", "-lmc",
           "--lock-memory-clocks", "-rmc", "--reset-memory-clocks", "-mig", "--multi-instance-gpu", "-r", "--gpu-reset",
           "-e", "--ecc-config", "-am", "--accounting-mode", "-caa", "--clear-accounted-apps")

GUARD = r'''#!/usr/bin/env python3
# gpulab.mps device-plugin lane: nvidia-smi that refuses every option changing the GPU (it is shared), logs it, and
# exits 0 so that the caller goes on; everything else goes to the real nvidia-smi.
import json, os, sys, time
REAL = %(real)r
LOG = %(log)r
REFUSED = %(refused)r
args = sys.argv[1:]
hit = [a for a in args if a in REFUSED or a.split("=", 1)[0] in REFUSED]
if hit:
    with open(LOG, "a") as log:
        log.write(json.dumps({"time": time.time(), "argv": args, "refused": hit, "ppid": os.getppid()}) + "\n")
    sys.stderr.write("gpulab guard: refused nvidia-smi %%s (the GPU is shared)\n" %% " ".join(args))
    sys.exit(0)
os.execv(REAL, [REAL] + args)
'''


def guard_script(real, log):
    """The text of the guard nvidia-smi (tests/unit/gpu/test_device_plugin_lane.py runs it)."""
    return GUARD % {"real": real, "log": log, "refused": REFUSED}


def collection_path():
    """A directory from which `ansible_collections.gpulab.mps` is this checkout (made at run time, no ansible)."""
    base = tempfile.mkdtemp(prefix="gpulab-collection-")
    os.makedirs(os.path.join(base, "ansible_collections", "gpulab"))
    os.symlink(ROOT, os.path.join(base, "ansible_collections", "gpulab", "mps"))
    return base


# --- the scenarios: what the collection renders and what must be seen (pure; tested on the CPU) -------------------

# fork-individual-host ran once on the H200 (2026-12-03) and failed: the fork registers nothing without its own MPS
# daemon; the collection now refuses individual mode with owner host, so the lane no longer runs it.
SCENARIOS = ("upstream-aggregate-plugin", "upstream-aggregate-host", "upstream-per-gpu-rename-host",
             "fork-individual-plugin", "fork-individual-plugin-seed-config")


def scenario(name, driver, gpus, replicas, dp, plan_module, pipe_directory):
    """{config, source, owner, mode, expect, host_daemon} of one scenario, from the collection's own code."""
    source, rest = name.split("-", 1)
    owner = "host" if name.endswith("-host") else "plugin"
    # The rename scenario is upstream's aggregate config with per-GPU renames: aggregate for the plan.
    mode = "aggregate" if "aggregate" in name or "rename" in name else "individual"
    if name == "upstream-per-gpu-rename-host":
        # What the issue asked to try: per-GPU names with upstream's timeSlicing rename/devices.
        config = dp.plugin_config(gpus, mode="aggregate", owner="host", replicas=replicas)
        config["sharing"]["timeSlicing"]["resources"] = [
            {"name": dp.DEFAULT_RESOURCE, "rename": "nvidia.com/gpu%d" % g["index"], "devices": [g["index"]],
             "replicas": replicas} for g in gpus]
        node = dp.plan(gpus, mode="aggregate", owner="host", replicas=replicas)
    else:
        config = dp.plugin_config(gpus, mode=mode, owner=owner, replicas=replicas)
        node = dp.plan(gpus, mode=mode, owner=owner, replicas=replicas)
    if name == "fork-individual-plugin-seed-config":
        # The config as this collection rendered it before (and as the seed wrote it): no pinnedMemoryLimit.
        for gpu in config["individualGPU"]["gpuConfigs"]:
            gpu["mps"].pop("pinnedMemoryLimit", None)
    share = node["gpus"][0]["memory_per_replica_mib"]
    expect = {
        "resources": dict(node["resources"]),
        "share_mib": share,
        # Upstream refuses a 2-device request with sharing; the fork commented that check out for MPS.
        "two_replicas": "accepted" if (source == "fork" and owner == "plugin") else "refused",
        # 7000 MiB fits the share, 8000 MiB does not, when the share is enforced.
        "alloc_ok": {7000: True, 8000: name == "fork-individual-plugin-seed-config"},
        "pipe_env": owner == "plugin",
    }
    host_daemon = None
    if owner == "host":
        settings = {"owner": "host", "pipe_directory": pipe_directory, "log_directory": pipe_directory + "-log",
                    "state_directory": WORK + "/state", "control_binary": "/usr/local/nvidia/bin/nvidia-cuda-mps-control",
                    "sharing": {"mode": "aggregate" if mode == "aggregate" else "individual", "replicas": replicas},
                    "kubernetes": "true"}  # the plugin counts replicas against the host daemon: the lane is that node
        host_daemon = plan_module.build_plan(driver, gpus, settings)["daemon"]
    if name == "upstream-per-gpu-rename-host":
        expect["resources"] = {dp.DEFAULT_RESOURCE: replicas * len(gpus)}   # the renames are dropped
        expect["warning"] = "Setting the 'rename' field in sharing.timeSlicing.resources is not yet supported"
        expect["alloc_ok"] = {}
    return {"name": name, "source": source, "owner": owner, "mode": mode, "config": config, "expect": expect,
            "host_daemon": host_daemon, "node": node}


def binary_line(entry):
    """One binary of binaries.take's report, for the summary: its path, SHA-256 prefix and first version line."""
    version = (entry.get("version") or "").splitlines()
    return "%s sha256 %s (%s)" % (entry["path"], entry["sha256"][:12], version[0] if version else "not run")


def check(results, name, ok, seen, expected=None, note=None):
    entry = {"check": name, "ok": bool(ok), "seen": seen}
    if expected is not None:
        entry["expected"] = expected
    if note:
        entry["note"] = note
    results.append(entry)
    return bool(ok)


def devices_per_gpu(ids, gpus):
    """{GPU UUID: count} of ListAndWatch device IDs ("GPU-<uuid>::<replica>"); IDs of no GPU count under "other"."""
    counts = {}
    for device_id in ids:
        uuid = device_id.split("::", 1)[0]
        key = uuid if any(g["uuid"] == uuid for g in gpus) else "other"
        counts[key] = counts.get(key, 0) + 1
    return counts


def container_gpus(gpus, envs):
    """The GPUs (UUIDs, in CUDA's order) that a pod with Allocate's `envs` would use: the lane runs no container
    runtime, so it does what nvidia-container-runtime does with NVIDIA_VISIBLE_DEVICES (host indexes or UUIDs; all)
    and then what CUDA does with the CUDA_VISIBLE_DEVICES of the answer (positions among those)."""
    def pick(pool, value):
        chosen = []
        for item in [v.strip() for v in value.split(",") if v.strip()]:
            match = [u for pos, u in enumerate(pool) if (item.isdigit() and pos == int(item)) or u.startswith(item)]
            chosen.extend(match[:1])
        return chosen
    host = [g["uuid"] for g in sorted(gpus, key=lambda g: g["index"])]
    runtime = envs.get("NVIDIA_VISIBLE_DEVICES", "all")
    pool = host if runtime == "all" else [] if runtime in ("", "none", "void") else pick(host, runtime)
    return pick(pool, envs["CUDA_VISIBLE_DEVICES"]) if envs.get("CUDA_VISIBLE_DEVICES") else pool


def fork_refusal(dp, gpus, replicas, message=False):
    """Whether the collection refuses the fork (mode individual) on one node with all these GPUs (or why)."""
    try:
        dp.node_plans(gpus, [{"name": "lane", "gpus": "all"}], mode="individual", owner="plugin", replicas=replicas)
    except dp.DevicePluginError as error:
        return str(error) if message else True
    return None if message else False


# --- the host ----------------------------------------------------------------------------------------------------

class Lane(object):
    def __init__(self, args):
        self.args = args
        self.out = args.out
        self.logs = os.path.join(WORK, "logs")
        self.created = []            # paths this run made, removed at the end (newest first)
        self.processes = []          # Popen objects this run started
        self.results = {"scenarios": [], "started": time.time()}
        self.mps_before = set()

    # helpers
    def log(self, message):
        line = "[%6.1fs] %s" % (time.time() - self.results["started"], message)
        print(line, flush=True)
        with open(os.path.join(self.logs, "lane.log"), "a") as handle:
            handle.write(line + "\n")

    def run(self, argv, env=None, timeout=30, stdin=None):
        proc = subprocess.run(argv, env=env, input=stdin, capture_output=True, text=True, timeout=timeout, check=False)
        return proc.returncode, proc.stdout, proc.stderr

    def control(self, pipe, command, timeout=15):
        env = {"PATH": self.path, "CUDA_MPS_PIPE_DIRECTORY": pipe}
        env.update(self.libs)
        rc, out, err = self.run([self.mps_control], env=env, stdin=command + "\n", timeout=timeout)
        return rc, (out + err).strip()

    def compute_modes(self):
        rc, out, err = self.run([self.real_smi, "--query-gpu=index,uuid,compute_mode", "--format=csv,noheader"])
        return out.strip() if rc == 0 else "error: %s" % err.strip()

    def mps_pids(self):
        pids = set()
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open("/proc/%s/cmdline" % entry, "rb") as handle:
                    argv0 = handle.read().split(b"\0")[0].decode("utf-8", "replace")
            except OSError:
                continue
            if os.path.basename(argv0) in ("nvidia-cuda-mps-control", "nvidia-cuda-mps-server"):
                pids.add(int(entry))
        return pids

    def start(self, argv, env, name):
        out = open(os.path.join(self.logs, name + ".log"), "w")
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        proc.gpulab_name = name
        self.processes.append(proc)
        self.log("started %s (pid %d)" % (name, proc.pid))
        return proc

    def stop(self, proc, timeout=40):
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.log("%s (pid %d) did not stop in %ds: SIGKILL" % (proc.gpulab_name, proc.pid, timeout))
                proc.kill()
                proc.wait()
        self.log("stopped %s (pid %d, exit %s)" % (proc.gpulab_name, proc.pid, proc.returncode))
        return proc.returncode

    def wait_for(self, predicate, timeout, proc=None, step=0.2):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if predicate():
                return True
            if proc is not None and proc.poll() is not None:
                return False
            time.sleep(step)
        return predicate()

    # set-up and tear-down
    def setup(self):
        if os.geteuid() != 0:
            raise SystemExit("run the lane as root (it serves /var/lib/kubelet/device-plugins/kubelet.sock)")
        if os.path.lexists(WORK):
            shutil.rmtree(WORK)
        os.makedirs(self.logs)
        os.chmod(WORK, 0o755)
        self.real_smi = next((os.path.join(d, "nvidia-smi") for d in REAL_SMI_DIRS
                              if os.access(os.path.join(d, "nvidia-smi"), os.X_OK)), None)
        self.mps_control = next((os.path.join(d, "nvidia-cuda-mps-control") for d in REAL_SMI_DIRS
                                 if os.access(os.path.join(d, "nvidia-cuda-mps-control"), os.X_OK)), None)
        if not self.real_smi or not self.mps_control:
            raise SystemExit("nvidia-smi or nvidia-cuda-mps-control not found in %s" % ", ".join(REAL_SMI_DIRS))
        guard_dir = os.path.join(WORK, "guard")
        os.makedirs(guard_dir)
        self.guard_log = os.path.join(self.logs, "guard-nvidia-smi.jsonl")
        with open(os.path.join(guard_dir, "nvidia-smi"), "w") as handle:
            handle.write(guard_script(self.real_smi, self.guard_log))
        os.chmod(os.path.join(guard_dir, "nvidia-smi"), 0o755)
        self.path = ":".join([guard_dir, os.path.dirname(self.mps_control), "/usr/local/sbin", "/usr/local/bin",
                              "/usr/sbin", "/usr/bin", "/sbin", "/bin", os.path.dirname(sys.executable)])
        self.libs = dict((k, os.environ[k]) for k in ("LD_LIBRARY_PATH",) if os.environ.get(k))
        # The binaries, checked and unpacked (the report: what each printed for --version, its SHA-256).
        found, self.results["binaries"] = binaries.take(self.args.bin, BINARIES, os.path.join(WORK, "bin"),
                                                        checksums=self.args.sha256)
        self.bins = dict((tuple(path.split("/", 1)), target) for path, target in found.items() if path != PROTO)
        # The kubelet's socket directory and the plugin's MPS root (the chart's hostPath) seen at /mps.
        for path in ("/var/lib/kubelet", SOCKET_DIR, "/run/nvidia", MPS_HOST_ROOT):
            if not os.path.lexists(path):
                os.mkdir(path, 0o755)
                self.created.append(path)
        self.mps_host_root = MPS_HOST_ROOT
        if os.path.islink(MPS_CONTAINER_ROOT):
            if os.readlink(MPS_CONTAINER_ROOT) != MPS_HOST_ROOT:
                raise SystemExit("%s is a symlink to %s, not the lane's (to %s): remove it first"
                                 % (MPS_CONTAINER_ROOT, os.readlink(MPS_CONTAINER_ROOT), MPS_HOST_ROOT))
        elif os.path.isdir(MPS_CONTAINER_ROOT):
            # A real /mps (an earlier run of the binaries made it): use it as the host root too (MPS_ROOT=/mps).
            self.mps_host_root = MPS_CONTAINER_ROOT
        elif os.path.lexists(MPS_CONTAINER_ROOT):
            raise SystemExit("%s exists and is neither a directory nor the lane's symlink: remove it first"
                             % MPS_CONTAINER_ROOT)
        else:
            os.symlink(MPS_HOST_ROOT, MPS_CONTAINER_ROOT)
            self.created.append(MPS_CONTAINER_ROOT)
        self.results["mps_host_root"] = self.mps_host_root
        live = []
        for name in sorted(os.listdir(SOCKET_DIR)):
            path = os.path.join(SOCKET_DIR, name)
            if not stat.S_ISSOCK(os.lstat(path).st_mode):
                continue
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            probe.settimeout(2)
            try:
                probe.connect(path)
                live.append(name)
            except OSError:
                os.unlink(path)   # nobody listens: left by a run that was killed
            finally:
                probe.close()
        if live:
            raise SystemExit("%s already holds live sockets %s: another kubelet or plugin runs here" % (SOCKET_DIR, live))
        self.mps_before = self.mps_pids()
        self.results["mps_processes_before"] = sorted(self.mps_before)
        self.results["compute_mode_before"] = self.compute_modes()
        sys.path.insert(0, collection_path())
        from ansible_collections.gpulab.mps.plugins.module_utils import _device_plugin, _nvml, _plan, _sizes
        from ansible_collections.gpulab.mps.plugins.module_utils import _cuda_client, _mps_output, _pods
        self.dp, self.plan_module, self.sizes, self.output = _device_plugin, _plan, _sizes, _mps_output
        self.cuda, self.pods = _cuda_client, _pods
        with _nvml.Nvml() as nvml:
            self.driver = nvml.driver()
            self.gpus = nvml.gpus()
        self.results["driver"] = self.driver
        self.results["gpus"] = self.gpus
        import kubelet_standin
        self.ks = kubelet_standin
        self.api = kubelet_standin.Api.from_file(found[PROTO])
        self.kubelet = kubelet_standin.KubeletStandin(self.api, SOCKET_DIR).start()
        self.log("kubelet stand-in on %s; %d GPU(s): %s" % (self.kubelet.socket, len(self.gpus), ", ".join(
            "%s %d MiB" % (g["name"], g["memory_total_mib"]) for g in self.gpus)))

    def teardown(self):
        for proc in reversed(self.processes):
            if proc.poll() is None:
                self.stop(proc)
        try:
            self.kubelet.stop()
        except AttributeError:
            pass
        left = sorted(self.mps_pids() - self.mps_before)
        self.results["mps_processes_left"] = left
        for pid in left:
            self.log("MPS process %d started during the lane is still there: SIGTERM" % pid)
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        if left:
            time.sleep(3)
            for pid in sorted(self.mps_pids() - self.mps_before):
                self.log("MPS process %d still there: SIGKILL" % pid)
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        self.results["compute_mode_after"] = self.compute_modes()
        for name in os.listdir(SOCKET_DIR) if os.path.isdir(SOCKET_DIR) else []:
            self.ks.remove_socket(os.path.join(SOCKET_DIR, name))
        root = getattr(self, "mps_host_root", MPS_HOST_ROOT)
        if os.path.isdir(root):
            shutil.copytree(root, os.path.join(self.logs, "mps-root"), symlinks=True,
                            ignore=lambda d, names: [n for n in names if not stat.S_ISDIR(os.lstat(os.path.join(d, n)).st_mode)
                                                     and not stat.S_ISREG(os.lstat(os.path.join(d, n)).st_mode)],
                            dirs_exist_ok=True)
        for path in reversed(self.created):
            if os.path.islink(path):
                os.unlink(path)
            elif os.path.isdir(path):
                shutil.rmtree(path)

    # one scenario
    def scenario(self, name):
        host_pipe = os.path.join(WORK, "host-pipe")
        s = scenario(name, self.driver, self.gpus, self.args.replicas, self.dp, self.plan_module, host_pipe)
        checks = []
        record = {"name": name, "config": s["config"], "expect": s["expect"], "checks": checks}
        self.results["scenarios"].append(record)
        self.log("=== %s" % name)
        if s["source"] == "fork":
            check(checks, "the collection %s the fork on a node with %d GPU(s)" % (
                  "refuses" if len(self.gpus) > 1 else "accepts", len(self.gpus)),
                  fork_refusal(self.dp, self.gpus, self.args.replicas) == (len(self.gpus) > 1),
                  fork_refusal(self.dp, self.gpus, self.args.replicas, message=True) or "accepted",
                  note="device_plugin_fork_allow_multi_gpu_nodes: true runs it anyway, as the lane does")
        config_path = os.path.join(self.logs, "config-%s.yaml" % name)
        with open(config_path, "w") as handle:
            handle.write(self.dp._yaml_dump(s["config"]))
        env = dict((k, v) for k, v in os.environ.items() if not k.startswith("CUDA_") and k != "NVIDIA_VISIBLE_DEVICES")
        env.update({"PATH": self.path, "CONFIG_FILE": config_path, "NODE_NAME": "gpulab-lane",
                    "MPS_ROOT": self.mps_host_root, "FAIL_ON_INIT_ERROR": "true"})
        started = []
        modes_before = self.compute_modes()
        pipes = {}
        try:
            if s["owner"] == "plugin":
                ready_file = os.path.join(MPS_CONTAINER_ROOT, ".ready")
                if os.path.lexists(ready_file):
                    os.unlink(ready_file)   # left by a daemon that was killed: it must not count for this one
                daemon = self.start([self.bins[s["source"], "mps-control-daemon"]], env, name + "-mps-control-daemon")
                started.append(daemon)
                ready = self.wait_for(lambda: os.path.exists(os.path.join(MPS_CONTAINER_ROOT, ".ready")), 60, daemon)
                for resource in s["expect"]["resources"]:
                    pipes[resource] = os.path.join(MPS_CONTAINER_ROOT, resource, "pipe")
                if not check(checks, "mps-control-daemon ready (/mps/.ready)", ready, ready):
                    return self.finish(record, checks)
            else:
                pipes = self.start_host_daemon(s, host_pipe, checks)
            for resource, pipe in sorted(pipes.items()):
                self.read_back(s, resource, pipe, checks)
            self.kubelet.reset()
            plugin = self.start([self.bins[s["source"], "nvidia-device-plugin"]], env, name + "-nvidia-device-plugin")
            started.append(plugin)
            for resource, count in sorted(s["expect"]["resources"].items()):
                registration = self.kubelet.wait_for(resource, self.args.registration_timeout)
                if not check(checks, "registered %s" % resource, registration is not None,
                             registration and {k: registration[k] for k in ("resource_name", "endpoint", "version")}):
                    continue
                self.serve_resource(s, resource, count, registration, pipes.get(resource, host_pipe), checks)
            extra = sorted(set(r["resource_name"] for r in self.kubelet.wait_quiet(2)) - set(s["expect"]["resources"]))
            check(checks, "no other resource registered", not extra, extra)
            if "warning" in s["expect"]:
                with open(os.path.join(self.logs, name + "-nvidia-device-plugin.log")) as handle:
                    text = handle.read()
                check(checks, "plugin log says the rename is ignored", s["expect"]["warning"] in text,
                      s["expect"]["warning"] in text)
        except Exception as error:  # noqa: BLE001 - a scenario that breaks is a failed check, and the lane goes on
            check(checks, "scenario ran", False, "%s: %s" % (type(error).__name__, error))
        finally:
            # The plugin's daemon removes its log directory when it stops: keep a copy first.
            for resource in sorted(pipes):
                log_dir = os.path.join(MPS_CONTAINER_ROOT, resource, "log") if s["owner"] == "plugin" else host_pipe + "-log"
                if os.path.isdir(log_dir):
                    shutil.copytree(log_dir, os.path.join(self.logs, "%s-mps-log-%s" % (name, resource.replace("/", "_"))),
                                    dirs_exist_ok=True)
            for proc in reversed(started):
                self.stop(proc)
            if s["owner"] == "host":
                rc, text = self.control(host_pipe, "quit")
                self.log("host daemon quit: %s" % (text or rc))
            for resource, pipe in sorted(pipes.items()):
                gone = self.wait_for(lambda: self.output.no_daemon(*self.control(pipe, "get_server_list")), 30, step=1)
                check(checks, "no MPS daemon left on %s" % pipe, gone, self.control(pipe, "get_server_list")[1])
            modes_after = self.compute_modes()
            check(checks, "compute mode unchanged", modes_after == modes_before, modes_after, modes_before)
        return self.finish(record, checks)

    @staticmethod
    def finish(record, checks):
        record["ok"] = all(c["ok"] for c in checks)
        return record

    def start_host_daemon(self, s, pipe, checks):
        """The host daemon of owner host, with the host plan's defaults sent as mps_daemon sends them."""
        for path in (pipe, pipe + "-log"):
            if os.path.lexists(path):
                shutil.rmtree(path)
            os.mkdir(path, 0o755)
        env = {"PATH": self.path, "CUDA_MPS_PIPE_DIRECTORY": pipe, "CUDA_MPS_LOG_DIRECTORY": pipe + "-log"}
        env.update(self.libs)
        rc, out, err = self.run([self.mps_control, "-d"], env=env)
        check(checks, "host daemon started (%s -d)" % self.mps_control, rc == 0, (out + err).strip() or rc)
        daemon = s["host_daemon"]
        if daemon["active_thread_percentage"] is not None:
            self.control(pipe, "set_default_active_thread_percentage %g" % daemon["active_thread_percentage"])
        for ordinal, size in sorted(daemon["pinned_memory_limit_mps"].items()):
            self.control(pipe, "set_default_device_pinned_mem_limit %s %s" % (ordinal, size))
        return dict((resource, pipe) for resource in s["expect"]["resources"])

    def read_back(self, s, resource, pipe, checks):
        rc, text = self.control(pipe, "get_default_device_pinned_mem_limit 0")
        shown = None
        try:
            shown = self.output.parse_pinned_limit(text)
        except self.output.OutputError:
            pass
        share = s["expect"]["share_mib"] << 20
        if s["name"] == "fork-individual-plugin-seed-config":
            total = self.gpus[0]["memory_total_mib"]
            check(checks, "%s: pinned limit read back (seed config: the fork sets TOTAL)" % resource,
                  self.sizes.readback_matches(total << 20, shown), shown, "%dM, read back rounded down" % total)
        else:
            check(checks, "%s: pinned limit read back" % resource, self.sizes.readback_matches(share, shown), shown,
                  "%dM (read back rounded down to whole units)" % s["expect"]["share_mib"])
        rc, text = self.control(pipe, "get_default_active_thread_percentage")
        try:
            percentage = self.output.parse_percentage(text)
        except self.output.OutputError:
            percentage = None
        replicas = self.args.replicas
        if s["source"] == "fork" and s["owner"] == "plugin":
            # The fork sets no server default: it injects CUDA_MPS_ACTIVE_THREAD_PERCENTAGE per request (checked below).
            check(checks, "%s: active thread percentage read back (fork: no server default)" % resource, True,
                  percentage)
        else:
            check(checks, "%s: active thread percentage read back" % resource,
                  percentage is not None and abs(percentage - 100 // replicas) < 0.05, percentage, float(100 // replicas))

    def serve_resource(self, s, resource, count, registration, pipe, checks):
        client = self.kubelet.plugin(registration)
        try:
            options = client.options()
            check(checks, "%s: GetDevicePluginOptions" % resource, True, options)
            devices, updates = client.list_and_watch(timeout=30, until=lambda d: len(d) >= count)
            ids = [d["ID"] for d in devices or []]
            healthy = all(d.get("health") == "Healthy" for d in devices or [])
            check(checks, "%s: ListAndWatch devices" % resource, len(ids) == count and healthy,
                  {"count": len(ids), "healthy": healthy, "first": ids[:2]}, count)
            rows = [r for r in s["node"]["gpus"] if r["resource"] == resource]
            per_gpu = dict((r["uuid"], r["replicas"]) for r in rows)
            check(checks, "%s: ListAndWatch devices per GPU" % resource, devices_per_gpu(ids, self.gpus) == per_gpu,
                  devices_per_gpu(ids, self.gpus), per_gpu)
            if not s["expect"]["alloc_ok"] or not ids:
                return
            for row in rows:
                mine = [i for i in ids if i.startswith(row["uuid"] + "::")] or ids
                label = resource if len(self.gpus) == 1 else "%s (a device of GPU %d)" % (resource, row["index"])
                self.allocate_and_run(s, resource, label, row, client, [mine[0]] + [i for i in ids if i != mine[0]],
                                      pipe, checks)
        finally:
            client.close()

    def allocate_and_run(self, s, resource, label, row, client, ids, pipe, checks):
        """Allocate one device of the GPU of `row` (ids[0]), check the answer, run the clients with the pod's env.
        Check names say `label` (the resource, and the GPU on a host with several)."""
        responses, error = client.allocate([[ids[0]]])
        if not check(checks, "%s: Allocate 1 replica" % label, error is None and len(responses) == 1,
                     error or responses):
            return
        response = responses[0]
        envs, mounts = response.get("envs", {}), response.get("mounts", [])
        uuid = row["uuid"]
        if s["expect"]["pipe_env"]:
            want_pipe = os.path.join(MPS_CONTAINER_ROOT, resource, "pipe")
            check(checks, "%s: Allocate env CUDA_MPS_PIPE_DIRECTORY" % label,
                  envs.get("CUDA_MPS_PIPE_DIRECTORY") == want_pipe, envs.get("CUDA_MPS_PIPE_DIRECTORY"), want_pipe)
            pipe_mount = [m for m in mounts if m.get("container_path") == want_pipe]
            check(checks, "%s: Allocate mounts the pipe from %s" % (label, self.mps_host_root),
                  bool(pipe_mount)
                  and pipe_mount[0]["host_path"] == os.path.join(self.mps_host_root, resource, "pipe")
                  and os.path.exists(os.path.join(pipe_mount[0]["host_path"], "control")), mounts)
        else:
            check(checks, "%s: Allocate gives no MPS pipe (the host daemon's comes from the pod spec)" % label,
                  "CUDA_MPS_PIPE_DIRECTORY" not in envs, envs)
        visible = envs.get("NVIDIA_VISIBLE_DEVICES")
        if s["source"] == "upstream":
            check(checks, "%s: Allocate env NVIDIA_VISIBLE_DEVICES is the GPU's UUID" % label, visible == uuid,
                  visible, uuid)
        else:
            check(checks, "%s: Allocate env NVIDIA_VISIBLE_DEVICES (fork: a relative index, the multi-GPU fault)"
                  % label, visible == "0", visible, "0", note="on a node with several GPUs gpuN gets GPU 0")
        if s["source"] == "fork" and s["owner"] == "plugin":
            check(checks, "%s: Allocate env CUDA_MPS_ACTIVE_THREAD_PERCENTAGE" % label,
                  envs.get("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE") == str(100 // self.args.replicas),
                  envs.get("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"), str(100 // self.args.replicas))
        record = {"envs": envs, "mounts": mounts, "devices": response.get("devices", []),
                  "annotations": response.get("annotations", {})}
        record["container_gpus"] = container_gpus(self.gpus, envs)
        self.results["scenarios"][-1].setdefault("allocate", {})[label] = record
        two, refusal = client.allocate([[ids[0], ids[1]]]) if len(ids) > 1 else (None, "only one device")
        seen = "refused: %s" % refusal if two is None else "accepted"
        check(checks, "%s: a request for 2 replicas is %s" % (label, s["expect"]["two_replicas"]),
              seen.startswith(s["expect"]["two_replicas"]), seen,
              note="fork fault: its ValidateRequest check for MPS is commented out"
              if s["expect"]["two_replicas"] == "accepted" else None)
        # A pod's env: Allocate's, and for owner host the pipe directory of the pod spec (_pods.mps_pod).
        pod_env = {}
        if s["owner"] == "host":
            pod = self.pods.mps_pod("lane", "default", "none", ["true"], "c", "lane", source="host",
                                    pipe_directory=pipe, resource=resource)
            pod_env = dict((e["name"], e["value"]) for e in pod["spec"]["containers"][0]["env"] if "value" in e)
        client_env = {"PATH": self.path}
        client_env.update(self.libs)
        client_env.update(pod_env)
        client_env.update(envs)
        # What the container runtime would hand the pod (no runtime here): those GPUs, by UUID.
        client_env["CUDA_VISIBLE_DEVICES"] = ",".join(record["container_gpus"])
        # Upstream hands out the GPU asked for; the fork's NVIDIA_VISIBLE_DEVICES=0 is GPU 0 whatever was asked.
        want_uuid = self.gpus[0]["uuid"] if s["source"] == "fork" else uuid
        for mib, ok in sorted(s["expect"]["alloc_ok"].items()):
            self.cuda_client(label, client_env, client_env.get("CUDA_MPS_PIPE_DIRECTORY", pipe), mib, ok, checks,
                             want_uuid, row["index"])

    def cuda_client(self, resource, env, pipe, mib, want_ok, checks, want_uuid=None, asked=0):
        argv = self.cuda.client_argv(sys.executable, alloc_mib=mib, hold=30, release_on_stdin=True)
        proc = self.cuda.ClientProcess(argv, env)
        deadline = time.time() + 60
        try:
            report = proc.report(deadline)
            rc, ps = self.control(pipe, "ps")
            try:
                listed = report["pid"] in [c["pid"] for c in self.output.parse_ps(ps)]
            except self.output.OutputError:
                listed = False
            proc.release(deadline)
        except (self.cuda.ClientTimeout, ValueError) as error:
            proc.kill()
            out, err = proc.output()
            check(checks, "%s: client of %d MiB" % (resource, mib), False, "%s: %s %s" % (type(error).__name__, out, err))
            return
        alloc = report.get("alloc") or {}
        seen_index = next((g["index"] for g in self.gpus if g["uuid"] == report.get("uuid")), None)
        check(checks, "%s: the GPU the client really uses (UUID from inside)" % resource,
              report.get("uuid") == want_uuid, {"uuid": report.get("uuid"), "gpu": seen_index,
                                                "device_count": report.get("device_count")}, want_uuid,
              note="fork fault: a device of GPU %d runs on GPU 0" % asked if seen_index == 0 and asked else None)
        check(checks, "%s: client with the pod's env is an MPS client (its pid in ps)" % resource, listed,
              {"pid": report["pid"], "ps": ps.splitlines()[:4]})
        check(checks, "%s: client allocating %d MiB %s" % (resource, mib, "succeeds" if want_ok else "fails"),
              alloc.get("ok") is want_ok and "error" not in report, {"alloc": alloc, "free_mib": report.get(
                  "free_bytes", 0) >> 20, "error": report.get("error")},
              note="the seed's config: the fork sets the GPU's TOTAL memory" if want_ok and mib > 7188 else None)

    # the whole run
    def main(self):
        os.makedirs(self.out, exist_ok=True)
        try:
            self.setup()
            for name in self.args.only or SCENARIOS:
                if time.time() - self.results["started"] > self.args.budget:
                    self.log("=== %s skipped: the lane's budget of %d s is spent" % (name, self.args.budget))
                    self.results["scenarios"].append({"name": name, "checks": [], "ok": False, "skipped": True})
                    continue
                self.scenario(name)
        except SystemExit as error:
            self.results["setup_error"] = str(error)
        finally:
            try:
                self.teardown()
            except Exception as error:  # noqa: BLE001 - the record must still be written
                self.results["teardown_error"] = "%s: %s" % (type(error).__name__, error)
            self.report()
        return 0 if self.results.get("ok") else 1

    def report(self):
        r = self.results
        lines = ["gpulab.mps device-plugin lane, %s" % time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(r["started"])),
                 "binaries: %s" % "; ".join(binary_line(b) for b in r.get("binaries") or []),
                 "driver %s; GPUs: %s" % ((r.get("driver") or {}).get("driver_version"), "; ".join(
                     "%s %s %d MiB" % (g["index"], g["name"], g["memory_total_mib"]) for g in r.get("gpus", []))),
                 "replicas %d" % self.args.replicas, ""]
        for sc in r["scenarios"]:
            # From the checks themselves (a scenario's clean-up adds checks after it returned).
            sc["ok"] = bool(sc["checks"]) and all(c["ok"] for c in sc["checks"]) and not sc.get("skipped")
            lines.append("%s %s" % ("PASS" if sc.get("ok") else "FAIL", sc["name"]))
            for c in sc["checks"]:
                lines.append("  %s %s: %s%s%s" % ("ok  " if c["ok"] else "FAIL", c["check"], json.dumps(c["seen"])[:300],
                                                  " (expected %s)" % json.dumps(c["expected"]) if not c["ok"]
                                                  and "expected" in c else "", " [%s]" % c["note"] if c.get("note") else ""))
        guard = []
        if os.path.exists(getattr(self, "guard_log", "")):
            with open(self.guard_log) as handle:
                guard = [json.loads(line) for line in handle if line.strip()]
        r["guard_refused"] = guard
        modes_ok = r.get("compute_mode_before") == r.get("compute_mode_after")
        left_ok = not r.get("mps_processes_left")
        lines += ["", "nvidia-smi calls refused by the guard: %d (%s)" % (len(guard), "; ".join(
            sorted(set(" ".join(g["argv"]) for g in guard)))[:400]),
            "compute mode before: %s; after: %s -> %s" % (r.get("compute_mode_before"), r.get("compute_mode_after"),
                                                          "unchanged" if modes_ok else "CHANGED"),
            "MPS processes left by the lane: %s" % (r.get("mps_processes_left") or "none")]
        for key in ("setup_error", "teardown_error"):
            if r.get(key):
                lines.append("%s: %s" % (key, r[key]))
        r["ok"] = bool(r["scenarios"]) and all(sc.get("ok") for sc in r["scenarios"]) and modes_ok and left_ok \
            and not r.get("setup_error") and not r.get("teardown_error")
        r["finished"] = time.time()
        lines.append("VERDICT: %s (%d scenarios, %.0f s)" % (
            "PASS" if r["ok"] else "FAIL", len(r["scenarios"]), r["finished"] - r["started"]))
        text = "\n".join(lines) + "\n"
        print(text)
        with open(os.path.join(self.out, "summary.txt"), "w") as handle:
            handle.write(text)
        with open(os.path.join(self.out, "results.json"), "w") as handle:
            json.dump(r, handle, indent=1, sort_keys=True, default=str)
        if os.path.isdir(self.logs):
            with tarfile.open(os.path.join(self.out, "logs.tar.gz"), "w:gz") as tar:
                tar.add(self.logs, arcname="logs")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--bin", required=True,
                        help="the released binaries: upstream/ and fork/ (nvidia-device-plugin, mps-control-daemon, "
                             "plain or .gz) and %s" % PROTO)
    parser.add_argument("--sha256", help="a sha256sum-format file of the binaries (paths as in --bin); checked first")
    parser.add_argument("--out", required=True, help="where summary.txt, results.json and logs.tar.gz go")
    parser.add_argument("--replicas", type=int, default=20)
    parser.add_argument("--registration-timeout", type=float, default=60, help="seconds to wait for each resource")
    parser.add_argument("--budget", type=int, default=420,
                        help="seconds after which no new scenario starts (the report is always written)")
    parser.add_argument("--only", nargs="*", choices=SCENARIOS, help="run only these scenarios")
    return Lane(parser.parse_args(argv)).main()


if __name__ == "__main__":
    sys.exit(main())
