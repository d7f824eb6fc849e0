# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The cluster lane's scenarios that run the collection itself (site.yml, playbooks/fleet.yml,
playbooks/teardown.yml) against its real Kubernetes; collection.py says how ansible-playbook reaches it and what the
host stages run on. Each scenario ends with playbooks/teardown.yml and checks that nothing of the collection is left.

- host: aggregate mode, the upstream plugin, owner host (the stand-in daemon on the host serves the pipe mounted into
  the pods): site.yml from an empty cluster (timed to the pod dial-tone's success), the node's resources as seed 004
  prints them, the roles' own checks, the daemon's limits read back, the pod's `ps` reaching the host daemon; then
  fleet.yml (cordon, drain with a PodDisruptionBudget, MPS changed, uncordon; a rerun that changes nothing and drains
  nothing; a PodDisruptionBudget that allows no disruption refusing the drain), the dial-tone's diagnoses on real
  pods, and the teardown.
- plugin: aggregate mode, owner plugin (the plugin's mps-control-daemon pod runs the stand-in control binary of its
  image): site.yml, the resources, the daemon's limits as the plugin set them, the pod dial-tone; the teardown.
- fork: individual mode with the seed-004 fork: the collection's refusal of a node of 4 GPUs, then with
  device_plugin_fork_allow_multi_gpu_nodes the per-GPU resources and the fork's fault on a real pod (gpu2 given
  device 0); the teardown.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time

import collection
import images

RESOURCE = "nvidia.com/gpu"
SCENARIOS = ("host", "plugin", "fork")
_STAMP_RE = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}) [^\]]*\] (.*)$")


def log_times(text, pattern):
    """[(epoch seconds, line)] of the stand-in control.log lines (`[YYYY-mm-dd HH:MM:SS.mmm Control PID] ...`, local
    time) whose message matches `pattern`."""
    out = []
    for line in (text or "").splitlines():
        match = _STAMP_RE.match(line)
        if match and re.search(pattern, match.group(2)):
            stamp = datetime.datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S.%f")
            out.append((time.mktime(stamp.timetuple()) + stamp.microsecond / 1e6, match.group(2)))
    return out


def share_commands(gpus, memory_mib, replicas):
    """The commands that give an MPS daemon the replicas' share: total // replicas MiB per device, 100 // replicas %."""
    return ["set_default_device_pinned_mem_limit %d %dM" % (i, memory_mib // replicas) for i in range(gpus)] + [
        "set_default_active_thread_percentage %d" % (100 // replicas)]


def holds_share(commands, gpus, memory_mib, replicas):
    """Whether a daemon's logged set_default_* commands hold the share (a percentage as 5 or 5.0)."""
    want = share_commands(gpus, memory_mib, replicas)
    got = [re.sub(r"^(set_default_active_thread_percentage \d+)\.0$", r"\1", c) for c in commands]
    return all(w in got for w in want)


class Run(object):
    """One ansible-playbook run: rc, its output, the PLAY RECAP and the record of every task."""

    def __init__(self, name, argv, rc, started, ended, output, record):
        self.name, self.argv, self.rc = name, argv, rc
        self.started, self.ended, self.output, self.record = started, ended, output, record
        self.recap = collection.recap(output)

    @property
    def seconds(self):
        return round(self.ended - self.started, 2)

    def summary(self):
        failed = [e for e in self.record if e["status"] in ("failed", "unreachable") and not e["ignored"]]
        return {"rc": self.rc, "seconds": self.seconds, "recap": self.recap,
                "failed": ["%s: %s" % (e["task"], e["msg"][:600]) for e in failed][:5]}

    def time_of(self, task, status=("ok", "changed")):
        return collection.first_time(self.record, task, status)


class Scenarios(object):
    def __init__(self, lane, cluster):
        self.lane = lane
        self.c = cluster
        self.layout = cluster.layout
        self.args = lane.args
        self.paths = collection.Paths(self.layout.state)
        self.results = lane.results.setdefault("collection", {})
        self.timings = lane.results["timings"]
        self.node = self.layout.node_name
        for path in (self.paths.base, self.paths.bin, self.paths.runs):
            os.makedirs(path, mode=0o755, exist_ok=True)
        with open(self.paths.control, "w") as handle:
            handle.write(collection.standin_wrapper(os.path.join(collection.ROOT, "tests", "standins",
                                                                 "nvidia-cuda-mps-control"), lane.args.gpus))
        os.chmod(self.paths.control, 0o755)
        self.before = None
        self.runtime_classes_before = None

    # --- helpers ---------------------------------------------------------------------------------------------------
    def need(self, name, ok, seen, expected=None, note=None):
        return self.lane.need(name, ok, seen, expected, note)

    def inventory(self, extra=None):
        return collection.inventory(self.paths, self.layout, sys.executable, images.TOOLS_IMAGE,
                                    replicas=self.args.replicas, extra=extra)

    def playbook(self, name, playbook, extra=None, cli=(), timeout=600):
        """ansible-playbook in the lane's network namespace (collection.py says why), as a user runs it."""
        inventory = os.path.join(self.paths.runs, "%s.inventory.json" % name)
        with open(inventory, "w") as handle:
            json.dump(self.inventory(extra), handle, indent=1)
        record = os.path.join(self.paths.runs, "%s.record.jsonl" % name)
        ansible = shutil.which("ansible-playbook", path=os.path.dirname(sys.executable)) or "ansible-playbook"
        env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(collection.ROOT, "ansible.cfg"), ANSIBLE_NOCOLOR="1",
                   ANSIBLE_COLLECTIONS_PATH=os.pathsep.join([self.lane.collection_dir,
                                                             os.path.join(collection.ROOT, ".collections")]),
                   ANSIBLE_CALLBACK_PLUGINS=collection.CALLBACKS,
                   ANSIBLE_CALLBACKS_ENABLED=collection.RECORD_CALLBACK, GPULAB_LANE_RECORD=record,
                   LD_LIBRARY_PATH=os.path.dirname(self.lane.found["nvml_mock:usr/lib64/libnvidia-ml.so.1"]),
                   MOCK_NVML_CONFIG=self.lane.profile_path)
        env.pop("PYTHONPATH", None)   # the real nvidia-ml-py (on the mock NVML), not the stand-in of tests/standins
        path = playbook if os.path.isabs(playbook) else os.path.join(collection.ROOT, playbook)
        argv = ["nsenter", "--net=%s" % self.layout.netns_path, ansible, "-i", inventory, path] + list(cli)
        self.lane.log("ansible-playbook %s %s (%s)" % (os.path.relpath(path, collection.ROOT), " ".join(cli), name))
        load = os.getloadavg()   # the machine is shared: what else ran is part of a timing
        started = time.time()
        try:
            proc = subprocess.run(argv, cwd=collection.ROOT, env=env, capture_output=True, text=True,
                                  timeout=timeout, check=False)
            rc, output = proc.returncode, proc.stdout + proc.stderr
        except subprocess.TimeoutExpired as error:
            said = (error.stdout or b"").decode("utf-8", "replace") if isinstance(error.stdout, bytes) \
                else error.stdout or ""
            rc, output = 124, "%s\n(killed after %d s)" % (said, timeout)
        ended = time.time()
        with open(os.path.join(self.lane.logs, "ansible-%s.log" % name), "w") as handle:
            handle.write("$ %s\n%s" % (" ".join(argv), output))
        shutil.copy(record, os.path.join(self.lane.logs, "ansible-%s.record.jsonl" % name)) \
            if os.path.exists(record) else None
        run = Run(name, argv, rc, started, ended, output, collection.read_record(record))
        self.results.setdefault("runs", {})[name] = dict(run.summary(), load_before=[round(x, 2) for x in load],
                                                         load_after=[round(x, 2) for x in os.getloadavg()])
        self.timings["ansible-playbook %s" % name] = run.seconds
        self.lane.log("%s: rc %d in %.1f s, recap %s" % (name, rc, run.seconds, run.recap))
        return run

    def kubectl(self, *args, **kwargs):
        return self.c.kubectl(*args, **kwargs)

    def node_object(self):
        return self.c.kubectl_json("get", "node", self.node)

    def runtime_classes(self):
        return sorted(i["metadata"]["name"] for i in self.c.kubectl_json("get", "runtimeclasses")["items"])

    def describe(self, scenario):
        """`kubectl describe node | grep nvidia.com`, as seed 004's verification prints it."""
        text = self.kubectl("describe", "node", self.node, check=False).stdout
        with open(os.path.join(self.lane.logs, "describe-node-%s.txt" % scenario), "w") as handle:
            handle.write(text)
        lines = collection.nvidia_lines(text)
        self.results.setdefault("describe", {})[scenario] = lines
        return lines

    def events(self, scenario):
        """Every Warning event of the cluster, matched to the known findings (the lane's observe)."""
        self.lane.observe_all(self.c, scenario)

    def control_log(self, path=None):
        path = path or os.path.join(self.paths.log, "control.log")
        try:
            with open(path, errors="surrogateescape") as handle:
                return handle.read()
        except OSError:
            return ""

    def host_daemon_pid(self):
        """The stand-in daemon of the lane's pipe directory: its pid when it lives, else None."""
        try:
            with open(os.path.join(self.paths.pipe, "nvidia-cuda-mps-control.pid")) as handle:
                pid = int(handle.read().strip())
            with open("/proc/%d/cmdline" % pid, "rb") as handle:
                cmdline = handle.read().replace(b"\0", b" ").decode("utf-8", "replace")
        except (OSError, ValueError):
            return None
        return pid if "nvidia-cuda-mps-control" in cmdline else None

    def check_site(self, scenario, run, want, what):
        """The checks every successful site.yml has: rc 0, the node's resources, the role's own node check."""
        self.need("%s: site.yml (%s) exits 0" % (scenario, what), run.rc == 0 and not run.summary()["failed"],
                  run.summary())
        lines = self.describe(scenario)
        node = self.node_object()
        from ansible_collections.gpulab.mps.plugins.module_utils import _device_plugin
        gaps = _device_plugin.resource_gaps(node, want)
        self.need("%s: the node shows %s (kubectl describe node | grep nvidia.com)" % (scenario, ", ".join(
            "%s: %d" % kv for kv in sorted(want.items()))), not gaps, {"describe": lines, "gaps": gaps}, want)
        role = collection.entries_of(run.record, collection.NODE_RESOURCES_OK)
        self.need("%s: the device_plugin role's own check passed against the real node status" % scenario,
                  bool(role) and all(e["status"] == "ok" for e in role), [e["msg"] for e in role])
        dial = collection.entries_of(run.record, collection.DIALTONE_POD_OK)
        self.need("%s: the pod dial-tone (echo ps | nvidia-cuda-mps-control through kubernetes.core.k8s_exec) "
                  "answered" % scenario, bool(dial) and all(e["status"] == "ok" for e in dial), [e["msg"] for e in dial])
        self.events(scenario)

    def teardown(self, scenario, expect_died=False):
        run = self.playbook("teardown-%s" % scenario, "playbooks/teardown.yml")
        self.need("%s: playbooks/teardown.yml exits 0" % scenario, run.rc == 0, run.summary())
        if expect_died:
            said = collection.entries_of(run.record, "Teardown - report a daemon that died before the teardown", "ok")
            self.need("%s: the teardown reports the daemon that was killed" % scenario, bool(said),
                      [e["msg"] for e in said])
        objects = self.c.kubectl_json("get", "pods,daemonsets,configmaps,namespaces,services", "-A",
                                      "-l", collection.MANAGED_BY)["items"]
        # The plugin's namespace goes as a whole (its objects carry the label, the namespace too).
        after = collection.node_state(self.node_object())
        problems = collection.leftovers(self.before, after, objects, self.runtime_classes_before,
                                        self.runtime_classes())
        pid = self.host_daemon_pid()
        if pid:
            problems.append("the host MPS daemon still runs (pid %d)" % pid)
        self.need("%s: nothing of the collection is left (pods, DaemonSets, ConfigMaps, namespaces, RuntimeClasses, "
                  "node labels and annotations, the host daemon)" % scenario, not problems, problems or "nothing left")
        self.events(scenario + " teardown")
        return run

    # --- the scenarios ---------------------------------------------------------------------------------------------
    def run(self, names):
        self.before = collection.node_state(self.node_object())
        self.runtime_classes_before = self.runtime_classes()
        self.results["node_before"] = self.before
        for name in names:
            getattr(self, "scenario_%s" % name)()

    def scenario_host(self):
        c = self.c
        empty = time.time()
        run = self.playbook("site-host", "site.yml")
        want = {RESOURCE: self.args.gpus * self.args.replicas}
        dial = run.time_of(collection.DIALTONE_POD_OK)
        if dial:
            self.timings["site.yml (owner host): start -> pod dial-tone answered (empty cluster, node Ready)"] = round(
                dial - run.started, 2)
            self.timings["site.yml (owner host): cluster start (no etcd) -> pod dial-tone answered"] = round(
                dial - c.t0, 2)
            self.timings["cluster start (no etcd) -> site.yml started"] = round(run.started - c.t0, 2)
        self.results["empty_cluster_at"] = round(empty - c.t0, 2)
        self.check_site("host", run, want, "aggregate, owner host, upstream plugin v0.20.0")
        self.host_share(run)
        self.pod_reached_host(run)
        self.workload()
        self.fleet()
        self.diagnoses()
        self.teardown("host", expect_died=True)

    def host_share(self, run):
        share = collection.entries_of(run.record, collection.HOST_SHARE_OK)
        commands = collection.daemon_commands(self.control_log())
        memory, replicas, gpus = self.args.gpu_memory_mib, self.args.replicas, self.args.gpus
        self.need("host: the host daemon (stand-in) was given the replicas' share and the role read it back "
                  "(%d MiB per GPU, %d %%)" % (memory // replicas, 100 // replicas),
                  bool(share) and all(e["status"] == "ok" for e in share)
                  and holds_share(commands, gpus, memory, replicas),
                  {"role": [e["msg"] for e in share], "control.log": commands},
                  share_commands(gpus, memory, replicas))

    def pod_reached_host(self, run):
        """The `ps` the pod sent arrived at the host's daemon: its control.log has a Cmd:ps between the pod's start
        and the end of the exec."""
        started = run.time_of("Start the dial-tone pod and wait until it runs")
        execed = run.time_of("Ask MPS for ps from inside the pod")
        seen = [(round(t - run.started, 2), line) for t, line in log_times(self.control_log(), r"^Cmd:ps$")]
        inside = [s for s in seen if started and execed and started - run.started - 0.5 <= s[0] <= execed - run.started + 0.5]
        self.need("host: the pod's `ps` reached the host daemon through the mounted pipe (Cmd:ps in its control.log "
                  "while the pod's exec ran)", bool(inside),
                  {"pod started at": round(started - run.started, 2) if started else None,
                   "exec done at": round(execed - run.started, 2) if execed else None, "Cmd:ps at": seen})

    def workload(self):
        """The workload pod (the collection's pod builder and the role's runner, the stand-in client in place of CUDA):
        each workload proven a client of the host daemon by the daemon's `ps`, from inside the pod."""
        out = os.path.join(self.paths.runs, "workload.json")
        workloads = ["standin-%d=/usr/local/bin/standin-cuda-client --iterations 3 --handshake" % i for i in range(2)]
        run = self.playbook("workload", os.path.join(collection.HERE, "playbooks", "workload.yml"), cli=[
            "-e", json.dumps({"lane_workloads": workloads, "lane_workload_out": out, "lane_pipe_directory": self.paths.pipe,
                              "lane_image": images.TOOLS_IMAGE, "lane_kubeconfig": self.layout.kubeconfig("admin"),
                              "lane_context": "lane", "lane_collection": collection.ROOT})])
        try:
            with open(out) as handle:
                said = json.load(handle)
            shutil.copy(out, self.lane.logs)  # the pod's phase and log, kept with the lane's logs
        except (OSError, ValueError):
            said = {}
        report = {}
        for line in reversed(said.get("log") or []):
            if line.startswith("{"):
                try:
                    report = json.loads(line)
                    break
                except ValueError:
                    continue
        self.results["workload"] = report
        entries = [(w.get("name"), w.get("pid"), w.get("under_mps"), w.get("evidence"), w.get("check"))
                   for w in report.get("workloads") or []]
        server_log = self.control_log(os.path.join(self.paths.log, "server.log"))
        self.need("host: the workload pod (the collection's pod builder and the role's runner; the stand-in client in "
                  "place of CUDA) ran each workload as a proven client of the host daemon (its `ps`, inside the pod)",
                  run.rc == 0 and said.get("phase") == "Succeeded" and report.get("ok") is True and len(entries) == 2
                  and all(e[2] and "PID namespace" in (e[3] or "") and e[4] == "ok" for e in entries),
                  {"run": run.summary(), "phase": said.get("phase"), "workloads": entries,
                   "ps in the pod": report.get("ps"), "server.log": [l for l in server_log.splitlines()
                                                                     if "connected" in l][-4:]})
        self.timings["workload pod (2 stand-in clients), ansible-playbook"] = run.seconds

    # fleet.yml
    def lane_app(self, pdb):
        """A workload of the node, built by the collection's pod builder (the pipe mounted, /dev/shm a memory emptyDir,
        one replica of nvidia.com/gpu), as a Deployment, with a PodDisruptionBudget."""
        from ansible_collections.gpulab.mps.plugins.module_utils import _pods
        pod = _pods.mps_pod("lane-app", "default", images.TOOLS_IMAGE, ["sleep", "3600"], "app", "lane-app",
                            source="host", pipe_directory=self.paths.pipe, runtime_class="", resource=RESOURCE,
                            image_pull_policy="Never", active_deadline_seconds=3600)
        template = {"metadata": {"labels": {"app": "lane-app"}}, "spec": dict(pod["spec"])}
        template["spec"].pop("activeDeadlineSeconds")
        template["spec"]["restartPolicy"] = "Always"
        deployment = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "lane-app", "namespace": "default"},
                      "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "lane-app"}}, "template": template}}
        budget = {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
                  "metadata": {"name": "lane-app", "namespace": "default"},
                  "spec": dict(pdb, selector={"matchLabels": {"app": "lane-app"}})}
        return deployment, budget

    def app_pods(self):
        return [(p["metadata"]["name"], p["metadata"]["uid"], p["status"].get("phase"))
                for p in self.c.kubectl_json("get", "pods", "-n", "default", "-l", "app=lane-app")["items"]
                if not p["metadata"].get("deletionTimestamp")]

    def wait_app(self, timeout=90):
        self.kubectl("rollout", "status", "deployment/lane-app", "-n", "default", "--timeout=%ds" % timeout,
                     timeout=timeout + 30, check=False)
        return self.app_pods()

    def budget(self):
        status = self.c.kubectl_json("get", "pdb", "lane-app", "-n", "default").get("status", {})
        return {"disruptionsAllowed": status.get("disruptionsAllowed"), "currentHealthy": status.get("currentHealthy"),
                "desiredHealthy": status.get("desiredHealthy")}

    def fleet_run(self, name, extra):
        summary = os.path.join(self.paths.runs, "%s.summary.json" % name)
        run = self.playbook(name, "playbooks/fleet.yml", dict(extra, fleet_summary_file=summary),
                            cli=["-e", "fleet_hosts=gpu_hosts"])
        try:
            with open(summary) as handle:
                (run.node,) = json.load(handle)["nodes"]
        except (OSError, ValueError):
            run.node = {}
        shutil.copy(summary, self.lane.logs) if os.path.exists(summary) else None
        return run

    def device_plugin_pods(self):
        """The device plugin's pods on the node, as the drain sees them (labels, volumes, owner)."""
        pods = self.c.kubectl_json("get", "pods", "-A", "-l", collection.MANAGED_BY)["items"]
        return [{"pod": "%s/%s" % (p["metadata"]["namespace"], p["metadata"]["name"]),
                 "owner": [o["kind"] for o in p["metadata"].get("ownerReferences") or []],
                 "labels": dict((k, v) for k, v in (p["metadata"].get("labels") or {}).items()
                                if not k.startswith("app.kubernetes.io/")),
                 "emptyDir volumes": [v["name"] for v in p["spec"].get("volumes") or [] if "emptyDir" in v]}
                for p in pods if any(o["kind"] == "DaemonSet" for o in p["metadata"].get("ownerReferences") or [])]

    def fleet(self):
        deployment, budget = self.lane_app({"maxUnavailable": 1})
        self.kubectl("apply", "-f", "-", input=json.dumps(deployment) + "\n---\n" + json.dumps(budget))
        before = self.wait_app()
        time.sleep(1)
        pdb_before = self.budget()
        self.results["daemonset pods the drain meets"] = self.device_plugin_pods()
        self.need("fleet: a workload pod (the collection's pod builder, one nvidia.com/gpu) under a "
                  "PodDisruptionBudget runs on the node", len(before) == 1 and before[0][2] == "Running",
                  {"pods": before, "budget": pdb_before, "DaemonSet pods": self.results["daemonset pods the drain meets"]})
        change = {"mps_host_default_pinned_memory_limit": "1G"}
        # The pod has /dev/shm as a memory emptyDir (the collection's pods' shape): refused by default, as kubectl.
        refused = self.fleet_run("fleet-0-emptydir", change)
        node = self.node_object()
        self.need("fleet: by default the drain refuses the pod's emptyDir (/dev/shm), as kubectl drain does, before any "
                  "eviction; the DaemonSet pods are not in the way; the summary says drain, and the node is not left "
                  "cordoned", refused.rc == 2 and refused.node.get("step") == "drain"
                  and "cannot delete Pods with local storage: default/lane-app-" in refused.node.get("reason", "")
                  and "nvidia-device-plugin" not in refused.node.get("reason", "")
                  and refused.node.get("kubernetes", "").startswith("not cordoned")
                  and not (node.get("spec") or {}).get("unschedulable") and self.app_pods() == before
                  and "set_default_device_pinned_mem_limit 0 1G" not in collection.daemon_commands(self.control_log()),
                  {"run": refused.summary(), "summary row": dict((k, refused.node.get(k)) for k in (
                      "result", "step", "reason", "mps", "kubernetes")), "pods": self.app_pods()})
        change["fleet_drain_delete_emptydir_data"] = True
        first = self.fleet_run("fleet-1", change)
        drain = collection.entries_of(first.record, collection.DRAIN_TASK)
        apply_ = first.time_of(collection.APPLY_TASK)
        uncordon = collection.entries_of(first.record, collection.UNCORDON_TASK)
        after = self.wait_app()
        node = self.node_object()
        commands = collection.daemon_commands(self.control_log())
        order = [first.time_of(collection.DRAIN_TASK), apply_, first.time_of(collection.UNCORDON_TASK)]
        self.need("fleet: cordon, drain (the pod evicted through the eviction API, its budget allowing it), MPS "
                  "changed (pinned limit 1G), uncordon; in that order",
                  first.rc == 0 and [e["status"] for e in drain] == ["changed"]
                  and [e["status"] for e in uncordon] == ["changed"] and None not in order and order == sorted(order)
                  and before[0][1] not in [p[1] for p in after] and len(after) == 1
                  and "set_default_device_pinned_mem_limit 0 1G" in commands
                  and not (node.get("spec") or {}).get("unschedulable"),
                  {"run": first.summary(), "drain": [e.get("result") or e["msg"] for e in drain],
                   "budget before": pdb_before, "pod before": before, "pods after": after,
                   "order (s after start)": [round(t - first.started, 2) if t else None for t in order],
                   "control.log set_default": commands[-5:], "summary row": dict((k, first.node.get(k)) for k in (
                       "result", "step", "mps", "kubernetes", "health_gate")),
                   "node unschedulable": bool((node.get("spec") or {}).get("unschedulable"))})
        self.timings["fleet.yml first run (drain, MPS changed, uncordon)"] = first.seconds
        second = self.fleet_run("fleet-2", change)
        again = self.app_pods()
        drained = collection.entries_of(second.record, collection.DRAIN_TASK)
        changed = collection.changed_tasks(second.record)
        self.need("fleet: a second run changes nothing and drains nothing (changed=0, the pod untouched)",
                  second.rc == 0 and second.recap.get("localhost", {}).get("changed") == 0 and not changed
                  and all(e["status"] == "skipped" for e in drained) and again == after,
                  {"run": second.summary(), "changed tasks": changed, "drain": [e["status"] for e in drained],
                   "pods": again})
        self.timings["fleet.yml rerun (changed=0, no drain)"] = second.seconds
        # A budget that allows no disruption: the drain must stop there, the pod keeps running.
        self.kubectl("patch", "pdb", "lane-app", "-n", "default", "--type=json", "-p",
                     json.dumps([{"op": "remove", "path": "/spec/maxUnavailable"},
                                 {"op": "add", "path": "/spec/minAvailable", "value": 1}]))
        deadline = time.time() + 30
        while time.time() < deadline and self.budget().get("disruptionsAllowed") != 0:
            time.sleep(0.5)
        pdb_blocking = self.budget()
        third = self.fleet_run("fleet-3-budget", dict(change, fleet_drain="always"))
        failed = [e for e in collection.entries_of(third.record, collection.DRAIN_TASK) if e["status"] == "failed"]
        pods = self.app_pods()
        node = self.node_object()
        cordoned = bool((node.get("spec") or {}).get("unschedulable"))
        self.need("fleet: a PodDisruptionBudget that allows no disruption stops the drain (fleet_drain always): the "
                  "pod keeps running, the rollout fails at the drain, the node stays cordoned and the summary says so",
                  third.rc != 0 and bool(failed) and "disruption budget" in failed[0]["msg"] and pods == again
                  and third.node.get("step") == "drain" and cordoned and third.node.get("kubernetes") == "left cordoned",
                  {"run": third.summary(), "budget": pdb_blocking, "drain said": [e["msg"] for e in failed],
                   "pods": pods, "node cordoned": cordoned, "summary row": dict((k, third.node.get(k)) for k in (
                       "result", "step", "mps", "kubernetes"))})
        if cordoned:
            self.kubectl("uncordon", self.node)
            self.lane.results["adaptations"].append({
                "what": "uncordon", "exit": 0, "output": "", "done": "uncordoned %s after the refused drain (the fleet "
                "leaves a node it failed on cordoned, on purpose; docs/fleet.md)" % self.node})
        self.kubectl("delete", "deployment,pdb", "lane-app", "-n", "default", "--wait=true", "--timeout=60s",
                     timeout=90, check=False)

    # the dial-tone's diagnoses
    def diagnoses(self):
        pid = self.host_daemon_pid()
        if pid:
            os.kill(pid, signal.SIGKILL)
            time.sleep(0.5)
        pipe_files = sorted(os.listdir(self.paths.pipe)) if os.path.isdir(self.paths.pipe) else []
        # Another copy of the pipe directory, as a node or pod that does not mount the host's directory would see:
        # the sockets a quit left (no pid file), nobody listening.
        other = os.path.join(self.paths.base, "other-pipe")
        os.makedirs(other, mode=0o755, exist_ok=True)
        for name in ("control", "control_privileged"):
            path = os.path.join(other, name)
            if not os.path.lexists(path):
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.bind(path)
                sock.close()
        seed = [{"name": "GPULAB_STANDIN_CLIENT_ERRORS", "value": "seed001"}]
        cases = [{"name": "daemon-killed", "pipe_mounted": True},
                 {"name": "daemon-killed-seed001", "pipe_mounted": True, "env": seed},
                 {"name": "pipe-not-mounted", "pipe_mounted": False},
                 {"name": "other-copy", "pipe_mounted": True, "host_pipe": other},
                 {"name": "other-copy-seed001", "pipe_mounted": True, "host_pipe": other, "env": seed}]
        out = os.path.join(self.paths.runs, "diagnose.json")
        run = self.playbook("diagnose", os.path.join(collection.HERE, "playbooks", "diagnose.yml"), cli=[
            "-e", json.dumps({"lane_diagnose_cases": cases, "lane_diagnose_out": out,
                              "lane_pipe_directory": self.paths.pipe, "lane_image": images.TOOLS_IMAGE,
                              "lane_kubeconfig": self.layout.kubeconfig("admin"), "lane_context": "lane",
                              "lane_node": self.node})])
        try:
            with open(out) as handle:
                answers = dict((a["case"], a) for a in json.load(handle))
        except (OSError, ValueError):
            answers = {}
        self.results["diagnoses"] = answers
        want = {"daemon-killed": ("no_daemon", "Cannot find MPS control daemon process"),
                "daemon-killed-seed001": ("daemon_died", "Transport endpoint is not connected"),
                "pipe-not-mounted": ("no_daemon", "Cannot find MPS control daemon process"),
                "other-copy": ("no_daemon", "Cannot find MPS control daemon process"),
                "other-copy-seed001": ("refused", "Connection refused")}
        for case, (state, text) in want.items():
            got = answers.get(case) or {}
            diagnosis = got.get("diagnosis") or {}
            self.need("diagnose: %s -> %s (%s)" % (case, state, text), run.rc == 0 and diagnosis.get("state") == state
                      and text in (got.get("stdout", "") + got.get("stderr", "")),
                      {"answer": (got.get("stdout", "") + got.get("stderr", "")).strip(), "rc": got.get("rc"),
                       "diagnosis": diagnosis.get("message"), "state": diagnosis.get("state")},
                      note="pipe directory after the kill: %s" % pipe_files if case == "daemon-killed" else None)
        # What a user meets with the role itself: it checks the host daemon's health before it makes its pod.
        role = self.playbook("site-dialtone-pod-daemon-killed", "site.yml", cli=["--tags", "dialtone_pod"])
        failed = [e for e in role.record if e["status"] == "failed" and not e["ignored"]]
        self.need("diagnose: with the daemon killed, the role's pod dial-tone stops before the pod, on the host's "
                  "health (mps_info: the daemon died)", role.rc != 0 and bool(failed) and "died" in failed[0]["msg"],
                  {"run": role.summary(), "failed": [(e["task"], e["msg"][:500]) for e in failed]})

    # owner plugin
    def shared_mps_root(self):
        """E2 (tests/cluster/FINDINGS.md): the plugin's mount-shm container needs the MPS root on a shared mount, which
        systemd gives every mount; this machine's PID 1 is not systemd. The lane's teardown unmounts it."""
        path = "/run/nvidia/mps"
        mounts = open("/proc/self/mountinfo").read()
        if " %s " % path in mounts:
            return
        os.makedirs(path, mode=0o755, exist_ok=True)
        for argv in (["mount", "--bind", path, path], ["mount", "--make-shared", path]):
            subprocess.run(argv, check=True, timeout=20)
        self.lane.results["adaptations"].append({
            "what": "shared-mount", "path": path, "exit": 0, "output": "mount --bind, --make-shared",
            "done": "made %s a shared bind mount of itself before owner plugin, as on a host whose PID 1 is systemd "
                    "(E2; the teardown unmounts it)" % path})

    def plugin_daemon(self, resource_dir):
        """The plugin's MPS daemon on the node: its pid (from its pid file, under the MPS root the pod shares with the
        host), its command line, whether it runs in another mount namespace than the lane (the pod's), and the
        set_default_* commands of its control.log."""
        root = "/run/nvidia/mps/%s" % resource_dir
        info = {"root": root}
        try:
            with open(os.path.join(root, "pipe", "nvidia-cuda-mps-control.pid")) as handle:
                pid = int(handle.read().strip())
            info["pid"] = pid
            with open("/proc/%d/cmdline" % pid, "rb") as handle:
                info["cmdline"] = handle.read().replace(b"\0", b" ").decode("utf-8", "replace").strip()
            info["pod mount namespace"] = os.readlink("/proc/%d/ns/mnt" % pid) != os.readlink("/proc/self/ns/mnt")
        except (OSError, ValueError) as error:
            info["error"] = str(error)
        info["commands"] = collection.daemon_commands(self.control_log(os.path.join(root, "log", "control.log")))
        return info

    def runtime_class_check(self):
        """F1: a RuntimeClass the plugin's pods name, which the cluster lacks (the teardown removed the collection's),
        is refused before anything is deployed (site.yml --tags device_plugin: no kind_cluster stage in the play)."""
        gone = "nvidia" not in self.runtime_classes()
        run = self.playbook("site-device-plugin-no-runtimeclass", "site.yml",
                            {"gpulab_mps_owner": "plugin", "device_plugin_runtime_class": "nvidia"},
                            cli=["--tags", "device_plugin"])
        failed = [e for e in run.record if e["status"] == "failed" and not e["ignored"]]
        objects = self.c.kubectl_json("get", "namespaces,daemonsets", "-A", "-l", collection.MANAGED_BY)["items"]
        self.need("plugin: device_plugin_runtime_class nvidia on a cluster without that RuntimeClass is refused before "
                  "anything is deployed, naming it (F1)", gone and run.rc != 0 and bool(failed)
                  and 'RuntimeClass "nvidia" not found' in failed[0]["msg"] and not objects,
                  {"RuntimeClass nvidia gone before": gone, "run": run.summary(),
                   "failed": [(e["task"], e["msg"][:600]) for e in failed],
                   "objects": ["%s/%s" % (o["kind"], o["metadata"]["name"]) for o in objects]})

    def scenario_plugin(self):
        self.shared_mps_root()
        if self.args.scenarios and self.args.scenarios[0] != "plugin":
            self.runtime_class_check()
        run = self.playbook("site-plugin", "site.yml", {"gpulab_mps_owner": "plugin"})
        self.timings["site.yml (owner plugin), start -> end"] = run.seconds
        self.check_site("plugin", run, {RESOURCE: self.args.gpus * self.args.replicas},
                        "aggregate, owner plugin, upstream plugin v0.20.0")
        daemon = self.plugin_daemon(RESOURCE)
        memory, replicas, gpus = self.args.gpu_memory_mib, self.args.replicas, self.args.gpus
        self.need("plugin: the plugin's mps-control-daemon pod runs the stand-in control binary of its image and set "
                  "the replicas' share (%d MiB per GPU, %d %%)" % (memory // replicas, 100 // replicas),
                  "/usr/local/bin/nvidia-cuda-mps-control" in daemon.get("cmdline", "")
                  and daemon.get("pod mount namespace") and holds_share(daemon["commands"], gpus, memory, replicas),
                  daemon, share_commands(gpus, memory, replicas))
        self.teardown("plugin")

    # individual mode, the fork
    def scenario_fork(self):
        self.shared_mps_root()
        fork = {"gpulab_mps_owner": "plugin", "device_plugin_mode": "individual",
                "device_plugin_image": collection.FORK_IMAGE}
        refused = self.playbook("site-fork-refused", "site.yml", fork)
        failed = [e for e in refused.record if e["status"] == "failed" and not e["ignored"]]
        daemonsets = self.c.kubectl_json("get", "daemonsets", "-A", "-l", collection.MANAGED_BY)["items"]
        self.need("fork: the collection refuses individual mode on a node of %d GPUs (the fork's Allocate fault), "
                  "before anything is deployed" % self.args.gpus,
                  refused.rc != 0 and bool(failed) and "NVIDIA_VISIBLE_DEVICES=0" in failed[0]["msg"]
                  and "device_plugin_fork_allow_multi_gpu_nodes" in failed[0]["msg"] and not daemonsets,
                  {"run": refused.summary(), "failed": [(e["task"], e["msg"][:700]) for e in failed],
                   "daemonsets": [d["metadata"]["name"] for d in daemonsets]})
        # The fork lists the GPU's and the control device nodes for every pod it gives a replica (N4 of FINDINGS.md):
        # on this host without a driver they are made, fake, for the pods of this scenario.
        made = self.fake_devices()
        try:
            run = self.playbook("site-fork", "site.yml", dict(fork, device_plugin_fork_allow_multi_gpu_nodes=True))
            want = dict(("nvidia.com/gpu%d" % i, self.args.replicas) for i in range(self.args.gpus))
            self.timings["site.yml (individual, fork, opt-in), start -> end"] = run.seconds
            self.check_site("fork", run, want, "individual, owner plugin, the seed-004 fork, multi-GPU opt-in")
            self.fork_pod()
        finally:
            self.fake_devices_gone(made)
        self.teardown("fork")

    def fake_devices(self):
        """The device nodes the fork's Allocate lists for a pod (/dev/nvidia<index> and the control devices, as on a GPU
        node), made as fake character devices (major 195, as the driver's) where this host has none; the containers
        never open them. Returns the paths made, for fake_devices_gone(); the cluster's teardown removes any left."""
        made = []
        wanted = [("nvidia%d" % i, i) for i in range(self.args.gpus)] + [
            ("nvidiactl", 255), ("nvidia-modeset", 254), ("nvidia-uvm", 253), ("nvidia-uvm-tools", 252)]
        for name, minor in wanted:
            path = "/dev/" + name
            if not os.path.lexists(path):
                os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(195, minor))
                made.append(path)
        self.lane.results["adaptations"].append({
            "what": "fake devices", "exit": 0, "output": ", ".join(made), "done": "made fake character devices (195:N) "
            "%s for the fork's device specs (this host has no NVIDIA driver; removed after the scenario's pods)"
            % ", ".join(made)})
        return made

    @staticmethod
    def fake_devices_gone(made):
        for path in made:
            try:
                if stat.S_ISCHR(os.lstat(path).st_mode) and os.major(os.lstat(path).st_rdev) == 195:
                    os.unlink(path)
            except OSError:
                pass

    def fork_pod(self):
        """A pod asking for nvidia.com/gpu2 is told device 0: the fork's Allocate answers NVIDIA_VISIBLE_DEVICES with an
        index relative to the GPUs it hands out, which the NVIDIA container runtime reads as the node's GPU 0. The lane's
        runtime handler `nvidia` is plain runc, so what the pod is told is what is shown (its env, the GPU map the fork
        adds, the device nodes it mounts)."""
        index = min(2, self.args.gpus - 1)
        resource = "nvidia.com/gpu%d" % index
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "lane-fork-gpu%d" % index, "namespace": "default"},
               "spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": 1,
                        "containers": [{"name": "probe", "image": images.TOOLS_IMAGE, "imagePullPolicy": "Never",
                                        "command": ["sleep", "3600"], "resources": {"limits": {resource: 1}}}]}}
        self.kubectl("apply", "-f", "-", input=json.dumps(pod))
        ready = self.kubectl("wait", "--for=condition=Ready", "pod/%s" % pod["metadata"]["name"], "--timeout=60s",
                             timeout=90, check=False)
        env = self.kubectl("exec", pod["metadata"]["name"], "--", "sh", "-c",
                           "env | grep -E '^(NVIDIA|CUDA|GPU_DEVICE_MAP|MPS_GPU)' | sort; ls /dev | grep nvidia",
                           check=False).stdout.strip().splitlines()
        values = dict(line.split("=", 1) for line in env if "=" in line)
        import yaml
        with open(self.lane.profile_path) as handle:
            uuids = [d["uuid"] for d in yaml.safe_load(handle)["devices"]]
        self.need("fork: a pod asking for %s is given device 0 (NVIDIA_VISIBLE_DEVICES=0: the fork's fault, on a real "
                  "pod)" % resource, ready.returncode == 0 and values.get("NVIDIA_VISIBLE_DEVICES") == "0",
                  {"env": env, "GPU %d's UUID" % index: uuids[index] if len(uuids) > index else None,
                   "wait": (ready.stdout + ready.stderr).strip()})
        self.kubectl("delete", "pod", pod["metadata"]["name"], "--wait=true", "--timeout=60s", timeout=90, check=False)
