# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The cluster lane: a real single-node Kubernetes on this machine, and the collection's device plugin on it.

    python tests/cluster/lane.py --kube-bin DIR --dp-bin DIR --nvml-mock DIR --out OUT [--keep-going]   # as root
    make cluster-lane KUBE_BIN=DIR DP_BIN=DIR NVML_MOCK=DIR [OUT=dir]
    python tests/cluster/lane.py --recover      # after a lane that was killed (SIGKILL) before its teardown

The project builds none of the binaries; each folder holds what a user takes from a release (BINARIES below names
every file and where it comes from), plain or gzipped as NAME.gz. binaries.take() (tests/gpu/device_plugin) checks
what each prints for its version, and everything missing is named at once before anything starts.

What it does (cluster.py, images.py; the host check in hostclean.py):
1. renders the device plugin through the collection (render.yml: gpulab.mps.mps_plan on NVIDIA's mock NVML with
   --gpus GPUs of --gpu-memory-mib MiB, then the device_plugin role in render-only mode, --owner, aggregate,
   --replicas);
2. makes the images (pause, tools, and the device-plugin image under the tag the manifests name);
3. starts the cluster and checks: the node Ready (timed from an empty cluster), a hostPath pod Running, exec through
   the API server (stdout and stdin);
4. labels the node as the role's deploy stage does (plans.yaml), applies the rendered manifests unchanged with
   kubectl, and watches what the real cluster says about them: every Warning event and every container that waits
   or fails is recorded with its exact text. What another stage of the collection would have done first is done
   only when the cluster asks for it, and recorded (the RuntimeClass `nvidia` that kind_cluster adds); the node's
   allocatable must reach the plan (`nvidia.com/gpu: 80` for 4 x 20), judged by the role's own check
   (_device_plugin.resource_gaps); then a pod asking for one replica gets a GPU, one asking for two is refused;
5. tears everything down and checks that the host is as it was (--keep-going: the checks after a failed one still
   run, otherwise the lane goes straight to the teardown).

Output in OUT: summary.txt (one line per check, the disagreements found, the timings, a VERDICT), results.json
(everything seen), logs/ (every daemon's log, the rendered objects, the pods' logs, events, the node). Exit 0 only
when every check holds and the host is clean.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(ROOT, "tests", "gpu", "device_plugin"))

import binaries  # noqa: E402
import cluster as cluster_mod  # noqa: E402
import collection  # noqa: E402
import hostclean  # noqa: E402
import images  # noqa: E402
import scenarios as scenarios_mod  # noqa: E402

KUBE_VERSION = "v1.36.2"
_KUBE_TARBALL = ("kubernetes/server/bin/%%s of the official release tarball kubernetes-server-linux-amd64.tar.gz of "
                 "%s (https://dl.k8s.io/%s/kubernetes-server-linux-amd64.tar.gz)" % (KUBE_VERSION, KUBE_VERSION))
_DP_IMAGE = "/usr/bin/%s of the release image nvcr.io/nvidia/k8s-device-plugin:v0.20.0 (docker create, docker cp)"
_MOCK = ("NVIDIA's mock NVML (NVIDIA/k8s-test-infra, pkg/gpu/mocknvml; published in the image ghcr.io/nvidia/nvml-mock, "
         "/usr/local/lib/libnvidia-ml.so.*)")
_MOCK_PROFILE = ("the mock's HGX H100 profile, pkg/gpu/mocknvml/configs/mock-nvml-config-h100.yaml of "
                 "NVIDIA/k8s-test-infra (also profiles/h100.yaml of its nvml-mock chart)")
KUBE_BINARIES = tuple(
    binaries.Wanted(name, ["--version"], r"Kubernetes %s\b" % re.escape(KUBE_VERSION), _KUBE_TARBALL % name)
    for name in ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet")) + (
    binaries.Wanted("kubectl", ["version", "--client"], r"Client Version: %s\b" % re.escape(KUBE_VERSION),
                    _KUBE_TARBALL % "kubectl"),)
DP_BINARIES = (
    binaries.Wanted("upstream/nvidia-device-plugin", ["--version"], r"\bv0\.20\.0\b", _DP_IMAGE % "nvidia-device-plugin"),
    binaries.Wanted("upstream/mps-control-daemon", ["--version"], r"\bv0\.20\.0\b", _DP_IMAGE % "mps-control-daemon"),
    # config-manager has no --version (an urfave/cli app without one): its help must name its node-label flag.
    binaries.Wanted("upstream/config-manager", ["--help"], r"--node-label", _DP_IMAGE % "config-manager"),
)
_FORK_IMAGE = ("/usr/bin/%s of the seed-004 fork's image (linskybing/k8s-device-plugin, branch mps-individual-gpu, "
               "commit 52596d72; the image you name in device_plugin_image), as for the device-plugin lane")
# Only for the scenario fork (individual mode); the fork does not change config-manager: the upstream one serves it.
FORK_BINARIES = (
    binaries.Wanted("fork/nvidia-device-plugin", ["--version"], r"\b52596d72", _FORK_IMAGE % "nvidia-device-plugin"),
    binaries.Wanted("fork/mps-control-daemon", ["--version"], r"\b52596d72", _FORK_IMAGE % "mps-control-daemon"),
)
NVML_FILES = (
    binaries.Wanted("usr/lib64/libnvidia-ml.so.1", None, None, _MOCK + ", as usr/lib64/libnvidia-ml.so.1"),
    binaries.Wanted("config/config.yaml", None, None, _MOCK_PROFILE + ", as config/config.yaml"),
)
FOLDERS = (("--kube-bin", "kube_bin", KUBE_BINARIES), ("--dp-bin", "dp_bin", DP_BINARIES),
           ("--nvml-mock", "nvml_mock", NVML_FILES))
# What each scenario runs (scenarios.py; `rendered` is the first part of the lane: the role's render-only output
# applied with kubectl): host, plugin and fork run the collection itself (site.yml, fleet.yml, teardown.yml).
SCENARIOS = ("host", "plugin", "fork", "rendered")


def folders(scenarios=SCENARIOS):
    """The folders and their files, for the scenarios asked (the fork's binaries only for `fork`)."""
    if "fork" not in scenarios:
        return FOLDERS
    return tuple((option, attr, wanted + FORK_BINARIES if attr == "dp_bin" else wanted)
                 for option, attr, wanted in FOLDERS)


GPU_NAME = "NVIDIA H100 32GB HBM3"
RESOURCE = "nvidia.com/gpu"


# --- pure helpers (tests/unit/cluster) ---------------------------------------------------------------------------

def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--kube-bin", default="", help="kube-apiserver, kube-controller-manager, kube-scheduler, "
                        "kubelet, kubectl of Kubernetes %s (plain or .gz)" % KUBE_VERSION)
    parser.add_argument("--dp-bin", default="", help="upstream/nvidia-device-plugin, upstream/mps-control-daemon, "
                        "upstream/config-manager of the device plugin v0.20.0 (plain or .gz)")
    parser.add_argument("--nvml-mock", default="", help="NVIDIA's mock NVML: usr/lib64/libnvidia-ml.so.1 and its "
                        "H100 profile as config/config.yaml")
    parser.add_argument("--sha256", help="a sha256sum-format file of the binaries (paths relative to their folder)")
    parser.add_argument("--out", help="where summary.txt, results.json and logs/ go (required but with --recover)")
    parser.add_argument("--recover", action="store_true",
                        help="only tear down a lane run that was killed before its teardown, and check the host")
    parser.add_argument("--keep-going", action="store_true", help="run every check even after one failed")
    parser.add_argument("--owner", choices=("host", "plugin"), default="host", help="the MPS owner rendered")
    parser.add_argument("--replicas", type=int, default=20)
    parser.add_argument("--gpus", type=int, default=4)
    parser.add_argument("--gpu-memory-mib", type=int, default=32601, help="per GPU (seed 004: 31.84 GiB)")
    parser.add_argument("--without-nvidia-handler", action="store_true",
                        help="give containerd no runtime handler nvidia (to see what a node without the NVIDIA "
                             "runtime says to runtimeClassName: nvidia)")
    parser.add_argument("--plugin-timeout", type=int, default=240,
                        help="seconds for the rendered device plugin to bring the node's resources to the plan")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS),
                        help="comma-separated, in this order: host (site.yml aggregate with owner host, fleet.yml, "
                             "the pod dial-tone's diagnoses, teardown.yml), plugin (site.yml with owner plugin, "
                             "teardown.yml), fork (individual mode with the seed-004 fork: refused, then opted in; "
                             "teardown.yml), rendered (the role's render-only objects applied with kubectl, --owner) "
                             "(default: all)")
    args = parser.parse_args(argv)
    if not args.out and not args.recover:
        parser.error("the following arguments are required: --out")
    args.scenarios = [name.strip() for name in args.scenarios.split(",") if name.strip()]
    unknown = [name for name in args.scenarios if name not in SCENARIOS]
    if unknown:
        parser.error("unknown scenario(s) %s (known: %s)" % (", ".join(unknown), ", ".join(SCENARIOS)))
    args.scenarios = [name for name in SCENARIOS if name in args.scenarios]
    return args


def missing_folders(args):
    """Sentences for the folders not given or not there (before looking inside them)."""
    problems = []
    for option, attr, wanted in folders(getattr(args, "scenarios", SCENARIOS)):
        folder = getattr(args, attr)
        if not folder or not os.path.isdir(folder):
            problems.append("%s %s: %s. It must hold:\n%s" % (
                option, repr(folder) if folder else "is not given", "no such folder" if folder else "required",
                "\n".join("      %s  (%s)" % (w.path, w.where) for w in wanted)))
    return problems


def take_all(args, work):
    """Every folder's files, checked; one BinariesError naming everything missing or wrong in all of them."""
    problems = missing_folders(args)
    if problems:
        raise binaries.BinariesError("the cluster lane needs three folders of released binaries:\n  " +
                                     "\n  ".join(problems))
    found, report, errors = {}, [], []
    for option, attr, wanted in folders(getattr(args, "scenarios", SCENARIOS)):
        sums = None
        if args.sha256:
            # binaries.take checks every path a checksum file names: give it only this folder's lines.
            mine = binaries.read_checksums(args.sha256)
            paths = set(w.path for w in wanted)
            sums = os.path.join(work, "sha256-%s.txt" % attr)
            with open(sums, "w") as handle:
                handle.writelines("%s  %s\n" % (digest, path) for path, digest in mine.items() if path in paths)
        try:
            got, seen = binaries.take(getattr(args, attr), wanted, os.path.join(work, attr), checksums=sums)
        except binaries.BinariesError as error:
            errors.append("%s: %s" % (option, error))
            continue
        found.update(("%s:%s" % (attr, path), target) for path, target in got.items())
        report.extend(dict(entry, folder=option) for entry in seen)
    if errors:
        raise binaries.BinariesError("\n".join(errors))
    return found, report


def check(results, name, ok, seen, expected=None, note=None):
    entry = {"check": name, "ok": bool(ok), "seen": seen}
    if expected is not None:
        entry["expected"] = expected
    if note:
        entry["note"] = note
    results.append(entry)
    return bool(ok)


# What the real cluster said about the rendered objects, matched to tests/cluster/FINDINGS.md. Each: an id, the
# kind of observation, and a pattern of its text. An observation that matches none is a new disagreement.
KNOWN_FINDINGS = (
    ("F1", "event", r"FailedCreate.*RuntimeClass \"nvidia\"|runtimeclass\.node\.k8s\.io \"nvidia\" not found"),
    ("F1", "event", r"no runtime for \"nvidia\" is configured"),
    # Not about the objects: the lane's cluster has no DNS service (its kubelet names no clusterDNS).
    ("E1", "event", r"^MissingClusterDNS "),
    # Not about the objects: mountPropagation Bidirectional needs the host path on a shared mount; systemd makes
    # every mount shared, this machine's PID 1 is not systemd and its / is private.
    ("E2", "event", r"is mounted on \"[^\"]*\" but it is not a shared mount"),
    ("E2", "container", r"is mounted on \"[^\"]*\" but it is not a shared mount"),
    # Not about the objects: this machine has cgroup v1 (the kubelet runs with failCgroupV1 false and says so).
    ("E3", "event", r"^CgroupV1 "),
    # Not about the objects: the API server of the lane is OpenShift's Kubernetes fork (v1.36.2), which reports its
    # readiness as an event of a namespace of its own.
    ("E4", "event", r"^KubeAPIReadyz "),
    # The fork's device specs on a host without the NVIDIA driver (tests/cluster/FINDINGS.md N4).
    ("N4", "event", r"failed to generate spec: lstat /dev/nvidia"),
    ("N4", "container", r"failed to generate spec: lstat /dev/nvidia"),
    # Expected: the workload the fleet evicts waits while its node is cordoned (one node), then runs again.
    ("L1", "event", r"^FailedScheduling 0/1 nodes are available: 1 node\(s\) (were unschedulable|had untolerated "
                    r"taint\(s\))"),
)
SHARED_MOUNT_RE = re.compile(r'path "([^"]+)" is mounted on "[^"]*" but it is not a shared mount')


def classify(observation, known=KNOWN_FINDINGS):
    """The id of the known finding an observation is, or None (a new one)."""
    text = "%s %s" % (observation.get("reason", ""), observation.get("message", ""))
    for finding_id, kind, pattern in known:
        if observation.get("kind") == kind and re.search(pattern, text):
            return finding_id
    return None


def pod_problems(pod):
    """Observations of one Pod object: each container (init or not) that waits with a reason other than the normal
    start-up ones, or that ended with an error. [{kind, object, container, reason, message}]."""
    out = []
    name = "pod/%s" % pod["metadata"]["name"]
    status = pod.get("status") or {}
    for field in ("initContainerStatuses", "containerStatuses"):
        for container in status.get(field) or []:
            for phase in ("state", "lastState"):
                state = container.get(phase) or {}
                waiting, terminated = state.get("waiting"), state.get("terminated")
                if waiting and waiting.get("reason") not in ("ContainerCreating", "PodInitializing", None):
                    out.append({"kind": "container", "object": name, "container": container["name"],
                                "reason": waiting.get("reason"), "message": waiting.get("message", "")})
                if terminated and terminated.get("exitCode", 0) != 0:
                    out.append({"kind": "container", "object": name, "container": container["name"],
                                "reason": "%s (exit %s)" % (terminated.get("reason"), terminated.get("exitCode")),
                                "message": terminated.get("message", "")})
    if status.get("phase") == "Failed" or status.get("reason"):
        out.append({"kind": "pod", "object": name, "container": "", "reason": status.get("reason", "Failed"),
                    "message": status.get("message", "")})
    return out


def warning_events(events):
    """Warning events as observations."""
    out = []
    for event in events.get("items") or []:
        if event.get("type") != "Warning":
            continue
        involved = event.get("involvedObject") or {}
        out.append({"kind": "event", "object": "%s/%s" % (involved.get("kind", "?").lower(), involved.get("name")),
                    "container": involved.get("fieldPath", ""), "reason": event.get("reason", ""),
                    "message": event.get("message", ""), "count": event.get("count", 1)})
    return out


def observation_key(observation):
    """Observations that differ only in a pod's random suffix or a count are the same disagreement."""
    obj = re.sub(r"-[a-z0-9]{5}$", "-*", observation["object"])
    message = re.sub(r"\b[0-9a-f]{12,64}\b", "<id>", observation.get("message", ""))
    return (observation["kind"], obj, observation.get("container", ""), observation.get("reason", ""), message)


def running_config_of(log):
    """The JSON config the device plugin prints after "Running with config:" (the last one), or None."""
    found = None
    for match in re.finditer(r"Running with config:\n(\{.*?\n\})\n", log, flags=re.S):
        try:
            found = json.loads(match.group(1))
        except ValueError:
            continue
    return found


def sharing_summary(config):
    """{strategy, replicas per resource, failRequestsGreaterThanOne} of a device-plugin config (rendered or running)."""
    sharing = (config or {}).get("sharing") or {}
    out = {}
    for strategy in ("mps", "timeSlicing"):
        if sharing.get(strategy):
            block = sharing[strategy]
            out = {"strategy": strategy,
                   "replicas": dict((r["name"], r["replicas"]) for r in block.get("resources") or []),
                   "failRequestsGreaterThanOne": bool(block.get("failRequestsGreaterThanOne"))}
    return out


def share_commands(gpus, memory_mib, replicas):
    """What the plugin's mps-control-daemon must send its MPS daemon: total // replicas MiB per device, 100 //
    replicas % of the threads (upstream v0.20.0, as MPS-FACTS.md records it from the H200)."""
    return ["set_default_device_pinned_mem_limit %d %dM" % (i, memory_mib // replicas) for i in range(gpus)] + [
        "set_default_active_thread_percentage %d" % (100 // replicas)]


def daemon_commands(log):
    """The set_default_* commands an MPS daemon logged (`Cmd:...` lines of its control log), each once, sorted."""
    return sorted(set(re.findall(r"Cmd:(set_default_\S+(?: \S+)*)", log)))


def split_manifests(text):
    import yaml
    return [doc for doc in yaml.safe_load_all(text) if doc]


def label_args(labels):
    return ["%s=%s" % (k, v) for k, v in sorted(labels.items())]


def collection_path():
    """A directory from which `ansible_collections.gpulab.mps` is this checkout (no `make collection` needed)."""
    base = tempfile.mkdtemp(prefix="gpulab-collection-")
    os.makedirs(os.path.join(base, "ansible_collections", "gpulab"))
    os.symlink(ROOT, os.path.join(base, "ansible_collections", "gpulab", "mps"))
    return base


# --- the run ---------------------------------------------------------------------------------------------------

class Stop(Exception):
    """A check failed and --keep-going is off: straight to the teardown."""


class Lane(object):
    def __init__(self, args):
        self.args = args
        self.out = os.path.abspath(args.out)
        self.logs = os.path.join(self.out, "logs")
        self.results = {"started": time.time(), "checks": [], "observations": [], "adaptations": [],
                        "timings": {}, "args": vars(args)}
        self.checks = self.results["checks"]
        self.work = None
        self.cluster = None
        self.seen = {}

    def log(self, message):
        line = "[%6.1fs] %s" % (time.time() - self.results["started"], message)
        print(line, flush=True)
        if os.path.isdir(self.logs):
            with open(os.path.join(self.logs, "lane.log"), "a") as handle:
                handle.write(line + "\n")

    def need(self, name, ok, seen, expected=None, note=None):
        """A check; when it fails and --keep-going is off, the lane stops (then tears down)."""
        passed = check(self.checks, name, ok, seen, expected, note)
        self.log("%s %s: %s" % ("ok  " if passed else "FAIL", name, json.dumps(seen, default=str)[:300]))
        if not passed and not self.args.keep_going:
            raise Stop(name)
        return passed

    def main(self):
        os.makedirs(self.logs, exist_ok=True)
        self.work = tempfile.mkdtemp(prefix="gpulab-cluster-lane-")
        try:
            try:
                found, self.results["binaries"] = take_all(self.args, self.work)
            except binaries.BinariesError as error:
                self.results["setup_error"] = str(error)
                return self.report()
            if os.geteuid() != 0:
                self.results["setup_error"] = "run the cluster lane as root (a network namespace, containerd, a kubelet)"
                return self.report()
            self.found = found
            self.results["packages"] = package_versions()
            self.collection_dir = collection_path()
            sys.path.insert(0, self.collection_dir)
            self.write_profile()
            if "rendered" in self.args.scenarios:
                self.render()
            self.make_images()
            self.run_cluster()
        except Stop as stop:
            self.results["stopped_at"] = str(stop)
        except (Exception, KeyboardInterrupt, SystemExit) as error:  # noqa: BLE001 - the record is always written
            self.results["setup_error"] = "%s: %s\n%s" % (type(error).__name__, error, traceback.format_exc()[-3000:])
        finally:
            shutil.rmtree(self.work, ignore_errors=True)
            if getattr(self, "collection_dir", None):
                shutil.rmtree(self.collection_dir, ignore_errors=True)   # a symlink to the checkout: not followed
        return self.report()

    # 1. render
    def write_profile(self):
        """The mock NVML's GPUs of the lane (--gpus of --gpu-memory-mib MiB): the node's and the host stages' NVML."""
        with open(self.found["nvml_mock:config/config.yaml"]) as handle:
            profile = images.mock_profile_text(handle.read(), self.args.gpus, self.args.gpu_memory_mib, GPU_NAME)
        self.profile_path = os.path.join(self.work, "nvml-profile.yaml")
        with open(self.profile_path, "w") as handle:
            handle.write(profile)
        shutil.copy(self.profile_path, os.path.join(self.logs, "nvml-profile.yaml"))

    def render(self):
        nvml = self.found["nvml_mock:usr/lib64/libnvidia-ml.so.1"]
        self.render_dir = os.path.join(self.logs, "rendered")
        playbook = shutil.which("ansible-playbook", path=os.path.dirname(sys.executable)) or shutil.which(
            "ansible-playbook")
        if not playbook:
            raise RuntimeError("ansible-playbook not found beside %s or on PATH: run the lane with the project's venv "
                               "(make cluster-lane)" % sys.executable)
        env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(ROOT, "ansible.cfg"), ANSIBLE_NOCOLOR="1",
                   ANSIBLE_COLLECTIONS_PATH=os.pathsep.join([sys.path[0], os.path.join(ROOT, ".collections")]))
        env.pop("PYTHONPATH", None)   # the real nvidia-ml-py, not the stand-in of tests/standins
        plan_dir = os.path.join(self.work, "plan")
        os.makedirs(plan_dir, mode=0o755)
        argv = [playbook, "-i", "localhost,", os.path.join(HERE, "render.yml"),
                "-e", "lane_render_directory=%s" % self.render_dir, "-e", "lane_work_directory=%s" % plan_dir,
                "-e", "lane_owner=%s" % self.args.owner, "-e", "lane_replicas=%d" % self.args.replicas,
                "-e", "lane_node=%s" % cluster_mod.Layout().node_name,
                "-e", "lane_nvml_library_directory=%s" % os.path.dirname(nvml),
                "-e", "lane_nvml_profile=%s" % self.profile_path]
        started = time.time()
        proc = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False)
        with open(os.path.join(self.logs, "render.log"), "w") as handle:
            handle.write(proc.stdout + proc.stderr)
        self.results["timings"]["render (ansible-playbook)"] = round(time.time() - started, 2)
        self.need("the device_plugin role rendered (render.yml, owner %s, aggregate, %d replicas)" % (
            self.args.owner, self.args.replicas), proc.returncode == 0,
            "exit %d" % proc.returncode if proc.returncode == 0 else (proc.stdout + proc.stderr)[-1500:])
        import yaml
        with open(os.path.join(self.render_dir, "plans.yaml")) as handle:
            self.node_plan = yaml.safe_load(handle)[0]["plan"]
        with open(os.path.join(self.render_dir, "manifests.yaml")) as handle:
            self.objects = split_manifests(handle.read())
        gpus = self.node_plan["gpus"]
        want = {RESOURCE: self.args.gpus * self.args.replicas}
        self.need("the plan: %s on %d mock GPUs of %d MiB, %d MiB per replica" % (
            want, self.args.gpus, self.args.gpu_memory_mib, self.args.gpu_memory_mib // self.args.replicas),
            self.node_plan["resources"] == want and len(gpus) == self.args.gpus and all(
                g["memory_total_mib"] == self.args.gpu_memory_mib
                and g["memory_per_replica_mib"] == self.args.gpu_memory_mib // self.args.replicas for g in gpus),
            {"resources": self.node_plan["resources"], "gpus": ["%s %s %d MiB, %d MiB/replica" % (
                g["index"], g["uuid"], g["memory_total_mib"], g["memory_per_replica_mib"]) for g in gpus]})

    # 2. images
    def make_images(self):
        from ansible_collections.gpulab.mps.plugins.module_utils import _device_plugin
        started = time.time()
        self.images = {}
        tools = images.tools_tree(os.path.join(ROOT, "tests", "standins", "nvidia-cuda-mps-control"),
                                  standin_client=os.path.join(ROOT, "tests", "standins", "standin_cuda_client.py"))
        dp = dict((name.rsplit("/", maxsplit=1)[-1], self.found["dp_bin:%s" % name]) for name in (
            "upstream/nvidia-device-plugin", "upstream/mps-control-daemon", "upstream/config-manager"))
        with open(self.profile_path) as handle:
            profile = handle.read()
        library = self.found["nvml_mock:usr/lib64/libnvidia-ml.so.1"]
        made = [(images.PAUSE_IMAGE, images.pause_tree(), ["/pause"]),
                (images.TOOLS_IMAGE, tools, ["/bin/sh"]),
                (_device_plugin.UPSTREAM_IMAGE, images.device_plugin_tree(tools, dp, library, profile,
                                                                          standin_gpus=self.args.gpus), None)]
        if "fork" in self.args.scenarios:
            fork = dict(dp, **dict((name, self.found["dp_bin:fork/%s" % name])
                                   for name in ("nvidia-device-plugin", "mps-control-daemon")))
            made.append((collection.FORK_IMAGE, images.device_plugin_tree(tools, fork, library, profile,
                                                                          standin_gpus=self.args.gpus), None))
        for ref, tree, entrypoint in made:
            path = os.path.join(self.work, re.sub(r"[^A-Za-z0-9.]+", "_", ref) + ".tar")
            diff_id = images.write_archive(path, ref, tree, entrypoint)
            self.images[ref] = {"tar": path, "diff_id": diff_id, "bytes": os.path.getsize(path),
                                "entries": len(tree.entries)}
        self.results["images"] = dict((ref, dict((k, v) for k, v in info.items() if k != "tar"))
                                      for ref, info in self.images.items())
        self.results["timings"]["images made"] = round(time.time() - started, 2)
        self.log("images: %s" % ", ".join("%s (%.0f MB)" % (r, i["bytes"] / 1e6) for r, i in self.images.items()))

    # 3-5. the cluster
    def run_cluster(self):
        bins = dict((name, self.found["kube_bin:%s" % name]) for name in (
            "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "kubectl"))
        layout = cluster_mod.Layout(runtime_handlers=() if self.args.without_nvidia_handler else ("nvidia",))
        self.layout = layout
        self.cluster = cluster_mod.Cluster(layout, bins, self.logs, images=[i["tar"] for i in self.images.values()],
                                           log=self.log)
        started = time.time()
        try:
            with self.cluster as c:
                self.results["timings"].update(("cluster: " + k, v) for k, v in c.timings.items())
                self.need("node %s Ready" % layout.node_name, True,
                          "%.2f s from an empty cluster (no etcd) to Ready" % c.timings["node Ready"])
                try:
                    wanted = [name for name in self.args.scenarios if name in scenarios_mod.SCENARIOS]
                    if wanted:
                        scenarios_mod.Scenarios(self, c).run(wanted)
                    if "rendered" in self.args.scenarios:
                        self.smoke(c)
                        self.device_plugin(c)
                finally:
                    self.collect(c)
                    self.results["timings"]["cluster up until the teardown"] = round(time.time() - started, 2)
        except cluster_mod.HostNotClean:
            pass
        except cluster_mod.LaneError as error:
            if not self.cluster.timings.get("node Ready"):
                self.need("the cluster started", False, str(error)[-2000:])
            raise
        finally:
            c = self.cluster
            self.results["timings"]["teardown"] = c.teardown_seconds
            self.results["teardown_log"] = c.teardown_log
            self.results["host_problems"] = c.problems
            self.results["host_other_changes"] = c.others
            self.results["timings"].update(("cluster: " + k, v) for k, v in c.timings.items())
            if c.problems is not None:
                check(self.checks, "the host is as the lane found it (processes, mounts, netns, cgroups, state "
                      "directories, sysctls, nftables)", not c.problems, c.problems or "clean")
            state = "clean" if not c.problems else "NOT CLEAN: %s" % c.problems
            self.log("teardown %.1f s; host %s" % (c.teardown_seconds or 0, state))

    def smoke(self, c):
        c.wait_for("serviceaccount default", lambda: c.kubectl("get", "serviceaccount", "default",
                                                               check=False).returncode == 0, 60)
        data = os.path.join(self.layout.state, "hostpath-data")
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "hostpath-probe", "namespace": "default"},
               "spec": {"hostNetwork": True, "restartPolicy": "Never", "terminationGracePeriodSeconds": 1,
                        "containers": [{"name": "probe", "image": images.TOOLS_IMAGE, "imagePullPolicy": "Never",
                                        "command": ["/bin/sh", "-c",
                                                    "echo hello-from-pod > /data/hello.txt; exec sleep 3600"],
                                        "volumeMounts": [{"name": "data", "mountPath": "/data"}]}],
                        "volumes": [{"name": "data", "hostPath": {"path": data, "type": "DirectoryOrCreate"}}]}}
        started = time.time()
        c.kubectl("apply", "-f", "-", input=json.dumps(pod))
        ready = c.kubectl("wait", "--for=condition=Ready", "pod/hostpath-probe", "--timeout=90s", timeout=120,
                          check=False)
        self.results["timings"]["hostPath pod Ready after apply"] = round(time.time() - started, 2)
        on_host = _read(os.path.join(data, "hello.txt"))
        self.need("a hostPath pod Running, its file on the host", ready.returncode == 0 and on_host == "hello-from-pod\n",
                  {"wait": (ready.stdout + ready.stderr).strip(), "host file": on_host,
                   "seconds": self.results["timings"]["hostPath pod Ready after apply"]})
        got = c.kubectl("exec", "hostpath-probe", "--", "cat", "/data/hello.txt", check=False)
        self.need("exec through the API server (stdout)", got.stdout == "hello-from-pod\n",
                  (got.stdout + got.stderr).strip())
        got = c.kubectl("exec", "-i", "hostpath-probe", "--", "sh", "-c", "cat > /data/stdin.txt; cat /data/stdin.txt",
                        input="sent through stdin\n", check=False)
        self.need("exec through the API server (stdin)", got.stdout == "sent through stdin\n"
                  and _read(os.path.join(data, "stdin.txt")) == "sent through stdin\n", (got.stdout + got.stderr).strip())

    def device_plugin(self, c):
        from ansible_collections.gpulab.mps.plugins.module_utils import _device_plugin, _kind
        node = self.layout.node_name
        want = self.node_plan["resources"]
        namespace = next(o["metadata"]["name"] for o in self.objects if o["kind"] == "Namespace")
        # As the role's deploy stage: everything but the DaemonSets, the node labels, then the DaemonSets.
        first = [o for o in self.objects if o["kind"] != "DaemonSet"]
        daemonsets = [o for o in self.objects if o["kind"] == "DaemonSet"]
        applied = []
        for batch, what in ((first, "objects"), (None, "labels"), (daemonsets, "daemonsets")):
            if batch is None:
                proc = c.kubectl("label", "node", node, "--overwrite", *label_args(self.node_plan["labels"]),
                                 check=False)
            else:
                proc = c.kubectl("apply", "-f", "-", input="\n---\n".join(json.dumps(o) for o in batch), check=False)
            applied.append({"step": what, "exit": proc.returncode, "stdout": proc.stdout.strip().splitlines(),
                            "stderr": proc.stderr.strip().splitlines()})
            for line in proc.stderr.strip().splitlines():
                self.observe({"kind": "apply", "object": what, "container": "", "reason": "stderr", "message": line})
        self.results["apply"] = applied
        apply_started = time.time()
        self.need("kubectl apply of the rendered objects (%s)" % ", ".join(
            "%s/%s" % (o["kind"], o["metadata"]["name"]) for o in self.objects),
            all(a["exit"] == 0 for a in applied), applied)
        # Watch until the node carries the plan, recording what the cluster says about the objects.
        deadline = time.time() + self.args.plugin_timeout
        registered = reached = None
        while time.time() < deadline:
            events = c.kubectl_json("get", "events", "-n", namespace)
            for observation in warning_events(events):
                self.observe(observation)
            pods = c.kubectl_json("get", "pods", "-n", namespace)["items"]
            for pod in pods:
                for observation in pod_problems(pod):
                    self.observe(observation, pod=pod)
            if registered is None and any(self.plugin_registered(c, namespace, p) for p in pods):
                registered = time.time()
                self.log("the plugin says it registered with the kubelet")
            status = c.kubectl_json("get", "node", node)
            if not _device_plugin.resource_gaps(status, want):
                reached = time.time()
                break
            self.adapt(c, _kind)
            time.sleep(1)
        t0 = c.t0
        timings = self.results["timings"]
        if registered:
            timings["device plugin registered, after apply"] = round(registered - apply_started, 2)
        if reached:
            timings["%s: %s on the node, after apply" % (RESOURCE, want[RESOURCE])] = round(reached - apply_started, 2)
            timings["%s: %s on the node, from an empty cluster (the smoke checks in between)" % (
                RESOURCE, want[RESOURCE])] = round(reached - t0, 2)
        status = c.kubectl_json("get", "node", node)
        gaps = _device_plugin.resource_gaps(status, want)
        self.results["node_resources"] = {"capacity": status["status"].get("capacity"),
                                          "allocatable": status["status"].get("allocatable")}
        self.need("the plugin (rendered DaemonSet, real kubelet) brings the node to the plan %s "
                  "(the role's check: _device_plugin.resource_gaps)" % want, not gaps,
                  {"allocatable %s" % RESOURCE: (status["status"].get("allocatable") or {}).get(RESOURCE),
                   "capacity %s" % RESOURCE: (status["status"].get("capacity") or {}).get(RESOURCE),
                   "gaps": gaps, "seconds after apply": round((reached or time.time()) - apply_started, 2)})
        self.running_config(c, namespace)
        if self.args.owner == "plugin":
            self.mps_daemon_defaults(c, namespace)
        self.gpu_pods(c)

    def plugin_logs(self, c, namespace, component, container):
        pods = [p for p in c.kubectl_json("get", "pods", "-n", namespace)["items"]
                if p["metadata"].get("labels", {}).get("app.kubernetes.io/component") == component]
        if not pods:
            return None
        return c.kubectl("logs", "-n", namespace, pods[0]["metadata"]["name"], "-c", container, check=False).stdout

    def running_config(self, c, namespace):
        """config-manager put the rendered config where the plugin reads it: the plugin's own "Running with config"
        holds the ConfigMap's sharing (strategy, replicas, failRequestsGreaterThanOne)."""
        import yaml
        (configmap,) = [o for o in self.objects if o["kind"] == "ConfigMap"]
        (rendered,) = [yaml.safe_load(text) for text in configmap["data"].values()]
        running = running_config_of(self.plugin_logs(c, namespace, "device-plugin", "nvidia-device-plugin-ctr") or "")
        want = sharing_summary(rendered)
        self.need("the plugin runs the rendered config (delivered by config-manager from the ConfigMap)",
                  running is not None and sharing_summary(running) == want,
                  sharing_summary(running) if running else "no 'Running with config' in the plugin's log", want)

    def mps_daemon_defaults(self, c, namespace):
        """Owner plugin: the plugin's mps-control-daemon gave the MPS daemon (the stand-in) the replicas' share."""
        text = self.plugin_logs(c, namespace, "mps-control-daemon", "mps-control-daemon-ctr") or ""
        share = self.args.gpu_memory_mib // self.args.replicas
        want = share_commands(self.args.gpus, self.args.gpu_memory_mib, self.args.replicas)
        seen = daemon_commands(text)
        self.need("the plugin's mps-control-daemon set the replicas' share on the MPS daemon (%d MiB, %d %%)" % (
            share, 100 // self.args.replicas), all(w in seen for w in want), seen, want)

    def plugin_registered(self, c, namespace, pod):
        if not any(s.get("name") == "nvidia-device-plugin-ctr" and s.get("started")
                   for s in (pod.get("status") or {}).get("containerStatuses") or []):
            return False
        logs = c.kubectl("logs", "-n", namespace, pod["metadata"]["name"], "-c", "nvidia-device-plugin-ctr",
                         check=False).stdout
        return "Registered device plugin" in logs

    def observe(self, observation, pod=None):
        key = observation_key(observation)
        if key in self.seen:
            self.seen[key]["count"] = max(self.seen[key].get("count", 1), observation.get("count", 1))
            return
        observation = dict(observation, first_seen=round(time.time() - self.results["started"], 2),
                           finding=classify(observation))
        if pod is not None and observation["kind"] == "container" and observation.get("container"):
            observation["logs"] = self.container_logs(pod, observation["container"])
        self.seen[key] = observation
        self.results["observations"].append(observation)
        self.log("cluster says: %s %s %s: %s %s" % (observation["kind"], observation["object"],
                                                    observation.get("container", ""), observation.get("reason", ""),
                                                    observation.get("message", "")[:400]))

    def observe_all(self, c, scenario):
        """Every Warning event of the cluster, as observations of a scenario (matched to the known findings)."""
        try:
            events = c.kubectl_json("get", "events", "-A")
        except Exception as error:  # noqa: BLE001 - a record, not a check
            self.log("reading the events failed: %s" % error)
            return
        for observation in warning_events(events):
            self.observe(dict(observation, scenario=scenario))

    def container_logs(self, pod, container):
        c = self.cluster
        namespace, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
        text = c.kubectl("logs", "-n", namespace, name, "-c", container, "--tail=40", check=False)
        previous = c.kubectl("logs", "-n", namespace, name, "-c", container, "--previous", "--tail=40", check=False)
        return {"current": (text.stdout or text.stderr).strip().splitlines()[-40:],
                "previous": (previous.stdout or "").strip().splitlines()[-40:]}

    def adapt(self, c, kind_module):
        """What another stage of the collection does before device_plugin, done here only once the cluster asks."""
        wants_runtime_class = any(o.get("finding") == "F1" for o in self.results["observations"])
        if wants_runtime_class and "runtimeclass" not in [a["what"] for a in self.results["adaptations"]]:
            runtime_class = kind_module.runtime_class("nvidia")
            proc = c.kubectl("apply", "-f", "-", input=json.dumps(runtime_class), check=False)
            self.results["adaptations"].append({
                "what": "runtimeclass", "done": "applied RuntimeClass nvidia (handler nvidia) as the kind_cluster "
                "role's cluster_ready stage renders it (_kind.runtime_class); %s" % (
                    "the lane's containerd has a handler nvidia that is plain runc" if "nvidia" in
                    self.layout.runtime_handlers else "the lane's containerd has NO handler nvidia "
                    "(--without-nvidia-handler)"),
                "exit": proc.returncode, "output": (proc.stdout + proc.stderr).strip()})
            self.log("adapted: RuntimeClass nvidia applied (%s)" % (proc.stdout + proc.stderr).strip())
        for observation in self.results["observations"]:
            match = SHARED_MOUNT_RE.search(observation.get("message", ""))
            if observation.get("finding") != "E2" or not match:
                continue
            path = match.group(1)
            if ("shared-mount", path) in [(a["what"], a.get("path")) for a in self.results["adaptations"]]:
                continue
            if not path.startswith("/run/nvidia/"):
                continue   # only the plugin's MPS root, which the lane removes afterwards
            os.makedirs(path, mode=0o755, exist_ok=True)
            outputs = []
            for argv in (["mount", "--bind", path, path], ["mount", "--make-shared", path]):
                proc = subprocess.run(argv, capture_output=True, text=True, timeout=20, check=False)
                outputs.append("%s: exit %d %s" % (" ".join(argv), proc.returncode, (proc.stdout + proc.stderr).strip()))
            self.results["adaptations"].append({
                "what": "shared-mount", "path": path, "exit": 0, "output": "; ".join(outputs),
                "done": "made %s a shared bind mount of itself, as it would be on a host whose PID 1 is systemd "
                "(the teardown unmounts it)" % path})
            self.log("adapted: %s" % "; ".join(outputs))

    def gpu_pods(self, c):
        """One replica through the real kubelet's Allocate; two refused (failRequestsGreaterThanOne)."""
        if _device_plugin_gaps(c, self.layout.node_name, self.node_plan["resources"]):
            for name in ("a pod asking for 1 %s" % RESOURCE, "a pod asking for 2 %s" % RESOURCE):
                self.need("%s (not run: the node does not carry the plan)" % name, False, "not run")
            return

        def gpu_pod(name, count):
            return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default"},
                    "spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": 1, "hostNetwork": True,
                             "containers": [{"name": "probe", "image": images.TOOLS_IMAGE, "imagePullPolicy": "Never",
                                             "command": ["/bin/sh", "-c", "env | grep -E '^(NVIDIA|CUDA)' | sort; "
                                                         "exec sleep 3600"],
                                             "resources": {"limits": {RESOURCE: count}}}]}}
        c.kubectl("apply", "-f", "-", input=json.dumps(gpu_pod("gpu-one", 1)))
        c.kubectl("apply", "-f", "-", input=json.dumps(gpu_pod("gpu-two", 2)))
        ready = c.kubectl("wait", "--for=condition=Ready", "pod/gpu-one", "--timeout=60s", timeout=90, check=False)
        env = c.kubectl("exec", "gpu-one", "--", "sh", "-c", "env | grep -E '^(NVIDIA|CUDA)' | sort",
                        check=False).stdout.strip().splitlines()
        uuids = [g["uuid"] for g in self.node_plan["gpus"]]
        visible = dict(line.split("=", 1) for line in env if "=" in line).get("NVIDIA_VISIBLE_DEVICES")
        self.need("a pod asking for 1 %s runs with one GPU's UUID (Allocate through the real kubelet)" % RESOURCE,
                  ready.returncode == 0 and visible in uuids, {"env": env, "wait": (ready.stdout + ready.stderr).strip()})
        if self.args.owner == "plugin":
            # Where /dev/shm comes from (a fact for the record: the MPS shm is a tmpfs the daemon's init container
            # mounts at <mps root>/shm; a container that started before it sees the directory under it).
            facts = self.results.setdefault("facts", {})
            facts["/dev/shm of the pod given 1 replica"] = c.kubectl(
                "exec", "gpu-one", "--", "sh", "-c", "stat -f -c %T /dev/shm; grep ' /dev/shm ' /proc/mounts",
                check=False).stdout.strip()
            namespace = next(o["metadata"]["name"] for o in self.objects if o["kind"] == "Namespace")
            pods = [p["metadata"]["name"] for p in c.kubectl_json("get", "pods", "-n", namespace)["items"]
                    if p["metadata"].get("labels", {}).get("app.kubernetes.io/component") == "device-plugin"]
            for pod in pods[:1]:
                facts["/dev/shm of the plugin container"] = c.kubectl(
                    "exec", "-n", namespace, pod, "-c", "nvidia-device-plugin-ctr", "--", "sh", "-c",
                    "stat -f -c %T /dev/shm; grep ' /dev/shm ' /proc/mounts", check=False).stdout.strip()
            facts["host mounts under the MPS root"] = [m[0] + " " + m[1] for m in hostclean.parse_mountinfo(
                _read("/proc/self/mountinfo") or "") if m[0].startswith("/run/nvidia/")]
            self.log("facts: %s" % json.dumps(facts))
        deadline = time.time() + 30
        two = {}
        while time.time() < deadline:
            two = c.kubectl_json("get", "pod", "gpu-two").get("status", {})
            if two.get("phase") in ("Failed", "Running", "Succeeded"):
                break
            time.sleep(0.5)
        self.need("a pod asking for 2 %s is refused (failRequestsGreaterThanOne)" % RESOURCE,
                  two.get("phase") == "Failed",
                  {"phase": two.get("phase"), "reason": two.get("reason"), "message": two.get("message")})

    def collect(self, c):
        """What the cluster holds, for the record (before the teardown removes it)."""
        def save(name, *args):
            proc = c.kubectl(*args, check=False, timeout=60)
            with open(os.path.join(self.logs, name), "w") as handle:
                handle.write(proc.stdout + proc.stderr)
        try:
            save("node.yaml", "get", "node", self.layout.node_name, "-o", "yaml")
            save("pods.txt", "get", "pods", "-A", "-o", "wide")
            save("events.txt", "get", "events", "-A", "--sort-by=.lastTimestamp")
            save("objects.yaml", "get", "daemonsets,configmaps,runtimeclasses", "-A", "-o", "yaml")
            pods = c.kubectl_json("get", "pods", "-A")["items"]
            for pod in pods:
                spec = pod["spec"]
                for container in spec.get("initContainers", []) + spec.get("containers", []):
                    save("pod-%s-%s.log" % (pod["metadata"]["name"], container["name"]), "logs", "-n",
                         pod["metadata"]["namespace"], pod["metadata"]["name"], "-c", container["name"])
        except Exception as error:  # noqa: BLE001
            self.log("collecting the cluster's state failed: %s" % error)

    # the record
    def report(self):
        r = self.results
        r["finished"] = time.time()
        r["findings"] = sorted(set(o["finding"] for o in r["observations"] if o.get("finding")))
        new = [o for o in r["observations"] if not o.get("finding")]
        lines = ["gpulab.mps cluster lane, %s" % time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(r["started"])),
                 "binaries: %s" % "; ".join(binary_line(b) for b in r.get("binaries") or []) or "none taken",
                 "packages: %s" % ", ".join("%s %s" % kv for kv in sorted((r.get("packages") or {}).items())),
                 "scenarios: %s; %d replicas, %d mock GPUs of %d MiB%s" % (
                     ", ".join(self.args.scenarios), self.args.replicas, self.args.gpus, self.args.gpu_memory_mib,
                     "; rendered: owner %s, aggregate" % self.args.owner if "rendered" in self.args.scenarios
                     else ""), ""]
        for c in r["checks"]:
            lines.append("%s %s: %s%s%s" % ("ok  " if c["ok"] else "FAIL", c["check"],
                                            json.dumps(c["seen"], default=str)[:400],
                                            " (expected %s)" % json.dumps(c["expected"]) if not c["ok"]
                                            and "expected" in c else "", " [%s]" % c["note"] if c.get("note") else ""))
        if r["observations"]:
            lines += ["", "what the real cluster said about the rendered objects (%d; known findings: "
                      "tests/cluster/FINDINGS.md):" % len(r["observations"])]
            for o in r["observations"]:
                lines.append("  %s %s %s %s: %s: %s" % (
                    o.get("finding") or "NEW", o["kind"], o["object"], o.get("container") or "", o.get("reason"),
                    o.get("message", "")[:500]))
        for a in r["adaptations"]:
            lines.append("  adapted: %s (%s)" % (a["done"], a["output"] or "exit %s" % a["exit"]))
        if r.get("host_other_changes"):
            lines.append("changed on the host during the run, not of the lane's kind (another user's?): %s" % "; ".join(
                r["host_other_changes"]))
        for key, value in sorted((r.get("facts") or {}).items()):
            lines.append("seen: %s: %s" % (key, json.dumps(value)))
        if r["timings"]:
            lines += ["", "timings (s): " + "; ".join("%s %s" % kv for kv in r["timings"].items())]
        for key in ("setup_error", "stopped_at"):
            if r.get(key):
                lines.append("%s: %s" % (key, r[key]))
        clean = r.get("host_problems") == []
        r["ok"] = bool(r["checks"]) and all(c["ok"] for c in r["checks"]) and clean and not r.get("setup_error") \
            and not r.get("stopped_at")
        lines.append("VERDICT: %s (%d checks, %d failed; %d disagreements, %d new; host %s; %.0f s)" % (
            "PASS" if r["ok"] else "FAIL", len(r["checks"]), sum(1 for c in r["checks"] if not c["ok"]),
            len(r["observations"]), len(new), "clean" if clean else "NOT CHECKED" if r.get("host_problems") is None
            else "NOT CLEAN", r["finished"] - r["started"]))
        text = "\n".join(lines) + "\n"
        print(text)
        os.makedirs(self.out, exist_ok=True)
        with open(os.path.join(self.out, "summary.txt"), "w") as handle:
            handle.write(text)
        with open(os.path.join(self.out, "results.json"), "w") as handle:
            json.dump(r, handle, indent=1, sort_keys=True, default=str)
        return 0 if r["ok"] else 1


def _device_plugin_gaps(c, node, want):
    from ansible_collections.gpulab.mps.plugins.module_utils import _device_plugin
    return _device_plugin.resource_gaps(c.kubectl_json("get", "node", node), want)


def binary_line(entry):
    """path, SHA-256 prefix and the first line of what it printed (of a --help: the line that names the program)."""
    version = [line.strip() for line in (entry.get("version") or "").strip().splitlines() if line.strip()]
    if version and version[0] == "NAME:" and len(version) > 1:
        version = ["no --version; --help: " + version[1]]
    return "%s sha256 %s (%s)" % (entry["path"], entry["sha256"][:12], version[0][:80] if version else "data")


def package_versions(names=("etcd-server", "containerd", "runc", "containernetworking-plugins", "busybox-static",
                            "iproute2", "nftables", "openssl", "python3.11")):
    versions = {}
    for name in names:
        proc = subprocess.run(["dpkg-query", "-W", "-f=${Version}", name], capture_output=True, text=True, timeout=20,
                              check=False)
        versions[name] = proc.stdout.strip() if proc.returncode == 0 else "not installed"
    return versions


def _read(path):
    try:
        with open(path) as handle:
            return handle.read()
    except OSError:
        return None


def _terminated(signum, frame):
    raise SystemExit("stopped by signal %d (the teardown and the host check still run)" % signum)


def recover():
    """Tear down what a killed lane left (its daemons, mounts, netns, cgroups, sysctls, directories) and check the
    host against the record the lane made before it started."""
    layout = cluster_mod.Layout()
    log_dir = tempfile.mkdtemp(prefix="gpulab-cluster-lane-recover-")
    lane_cluster = cluster_mod.Cluster(layout, {}, log_dir)
    try:
        lane_cluster.recover()
    except cluster_mod.HostNotClean as error:
        print(str(error))
        return 1
    except cluster_mod.LaneError as error:
        print("cannot recover: %s" % error)
        return 2
    finally:
        shutil.rmtree(log_dir, ignore_errors=True)
    print("recovered in %.1f s; the host is as the lane found it%s" % (lane_cluster.teardown_seconds, (
        " (changed meanwhile, not of the lane's kind: %s)" % "; ".join(lane_cluster.others))
        if lane_cluster.others else ""))
    return 0


def main(argv=None):
    args = parse_args(argv)
    if args.recover:
        return recover()
    return Lane(args).main()


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _terminated)   # a killed lane still tears its cluster down
    sys.exit(main())
