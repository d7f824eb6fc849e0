#!/usr/bin/env python
# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""STAND-IN for a Kubernetes API server, for the fleet scenario's cordon/drain test. NOT Kubernetes.

No Kubernetes API can run on the test machines (no Kind or apiserver images can be fetched), so this
serves, on 127.0.0.1 only, the few endpoints that kubernetes.core.k8s_drain and k8s_info use, with
real Kubernetes JSON shapes (v1 Node, Pod, PodList, Eviction, Status, discovery documents):

  GET  /version, /api, /apis, /api/v1              discovery
  GET  /api/v1/nodes                                the NodeList (journaled as "list-nodes")
  GET  /api/v1/nodes/<name>                         a Node (spec.unschedulable)
  PATCH /api/v1/nodes/<name>                        merge patch of spec.unschedulable (cordon/uncordon)
  GET  /api/v1/pods?fieldSelector=spec.nodeName=X   the pods of a node (&labelSelector=...: of those, the matching)
  GET  /api/v1/namespaces/<ns>/pods/<name>          one pod, or a 404 Status
  POST /api/v1/namespaces/<ns>/pods/<name>/eviction evicts the pod (it disappears)
  GET  /apis/node.k8s.io/v1/runtimeclasses/<name>   a 404 Status: the cluster has no RuntimeClass
  GET  /standin/stop                                stops the stand-in (test control, not Kubernetes)

Every node named on the command line starts schedulable with two pods: a ReplicaSet pod
(`work-<node>`, evictable) and a DaemonSet pod (`ds-<node>`, which a drain ignores). The DaemonSet pod is
shaped like the device plugin's pod on the real cluster of tests/cluster (2026-12-04): an emptyDir volume (its
`config`) and the labels the DaemonSet controller gives its pods (`pod-template-generation`,
`controller-revision-hash`); the ReplicaSet pod has `pod-template-hash`. The pod list answers a `labelSelector` of
`key`, `!key`, `key=value` and `key!=value` terms (comma-separated, all must hold). Nodes given with --cordoned start
unschedulable. Every state change is appended, with a wall-clock time, to the
JSON-lines --journal file, so that tests can check what happened in which order.

  fake_kube_api.py --port-file F --journal J [--cordoned N ...] [--shm-pod N ...] NODE...

It writes the port it listens on to --port-file, and stops after --lifetime seconds (default 900)
or on SIGTERM. Bounded: loopback only, one thread, no persistence.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from urllib.parse import parse_qs, urlparse

STATE = {"nodes": {}, "pods": {}}
JOURNAL = None


def journal(event, **fields):
    fields.update(event=event, time=time.time())
    with open(JOURNAL, "a") as handle:
        handle.write(json.dumps(fields) + "\n")


def node_doc(name):
    node = STATE["nodes"][name]
    return {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "uid": "uid-" + name, "resourceVersion": str(node["version"]),
                         "labels": {"kubernetes.io/hostname": name}},
            "spec": {"unschedulable": node["unschedulable"]} if node["unschedulable"] else {},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]}}


# What the real cluster's controllers put on their pods (seen on the cluster lane's v1.36.2, 2026-12-04).
OWNER_LABELS = {"DaemonSet": {"pod-template-generation": "1", "controller-revision-hash": "7f9c5d8b6"},
                "ReplicaSet": {"pod-template-hash": "5764cffbf6"}}
# The device plugin's DaemonSet pod has an emptyDir (its config, written by config-manager).
OWNER_VOLUMES = {"DaemonSet": [{"name": "config", "emptyDir": {}}], "ReplicaSet": []}


def pod_doc(key):
    pod = STATE["pods"][key]
    namespace, name = key
    spec = {"nodeName": pod["node"], "containers": [{"name": "c", "image": "none"}]}
    volumes = pod.get("volumes", OWNER_VOLUMES[pod["owner"]])
    if volumes:
        spec["volumes"] = volumes
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "uid": "uid-%s-%s" % key,
                         "labels": dict(OWNER_LABELS[pod["owner"]]),
                         "ownerReferences": [{"apiVersion": "apps/v1", "kind": pod["owner"], "name": pod["owner"].lower(),
                                              "uid": "owner", "controller": True}]},
            "spec": spec,
            "status": {"phase": "Running"}}


def selects(selector, labels):
    """Whether labels match a label selector of `key`, `!key`, `key=value`, `key==value`, `key!=value` terms."""
    for term in [t.strip() for t in (selector or "").split(",") if t.strip()]:
        if "!=" in term:
            key, value = term.split("!=", 1)
            if labels.get(key.strip()) == value.strip():
                return False
        elif "=" in term:
            key, value = term.replace("==", "=").split("=", 1)
            if labels.get(key.strip()) != value.strip():
                return False
        elif term.startswith("!"):
            if term[1:].strip() in labels:
                return False
        elif term not in labels:
            return False
    return True


def status(code, reason, message):
    return code, {"apiVersion": "v1", "kind": "Status", "status": "Failure", "code": code,
                  "reason": reason, "message": message}


DISCOVERY = {
    "/version": {"major": "1", "minor": "33", "gitVersion": "v1.33.1-gpulab-standin", "platform": "linux/amd64"},
    "/api": {"kind": "APIVersions", "versions": ["v1"],
             "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]},
    "/apis": {"kind": "APIGroupList", "apiVersion": "v1", "groups": [
        {"name": "node.k8s.io", "versions": [{"groupVersion": "node.k8s.io/v1", "version": "v1"}],
         "preferredVersion": {"groupVersion": "node.k8s.io/v1", "version": "v1"}}]},
    "/apis/node.k8s.io/v1": {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "node.k8s.io/v1",
                             "resources": [{"name": "runtimeclasses", "singularName": "runtimeclass", "namespaced": False,
                                            "kind": "RuntimeClass", "verbs": ["create", "delete", "get", "list"]}]},
    "/api/v1": {"kind": "APIResourceList", "groupVersion": "v1", "resources": [
        {"name": "nodes", "singularName": "node", "namespaced": False, "kind": "Node",
         "verbs": ["get", "list", "patch", "update", "watch"], "shortNames": ["no"]},
        {"name": "pods", "singularName": "pod", "namespaced": True, "kind": "Pod",
         "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"], "shortNames": ["po"]},
        {"name": "pods/eviction", "singularName": "", "namespaced": True, "group": "policy", "version": "v1",
         "kind": "Eviction", "verbs": ["create"]},
    ]},
}


class Handler(BaseHTTPRequestHandler):
    server_version = "gpulab-fake-kube-api"

    def log_message(self, *args):
        pass

    def reply(self, code, body):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def body(self):
        length = int(self.headers.get("Content-Length") or 0)
        return json.loads(self.rfile.read(length) or b"{}")

    def do_GET(self):
        url = urlparse(self.path)
        if url.path == "/standin/stop":
            self.server.stopping = True
            return self.reply(200, {"stopping": True})
        if url.path in DISCOVERY:
            return self.reply(200, DISCOVERY[url.path])
        if url.path == "/api/v1/nodes":
            journal("list-nodes")
            return self.reply(200, {"apiVersion": "v1", "kind": "NodeList", "metadata": {},
                                    "items": [node_doc(name) for name in sorted(STATE["nodes"])]})
        match = re.match(r"^/api/v1/nodes/([^/]+)$", url.path)
        if match:
            if match.group(1) not in STATE["nodes"]:
                return self.reply(*status(404, "NotFound", 'nodes "%s" not found' % match.group(1)))
            return self.reply(200, node_doc(match.group(1)))
        if url.path == "/api/v1/pods":
            query = parse_qs(url.query)
            selector = query.get("fieldSelector", [""])[0]
            node = selector.split("=", 1)[1] if selector.startswith("spec.nodeName=") else None
            labels = query.get("labelSelector", [""])[0]
            items = [pod_doc(k) for k, p in sorted(STATE["pods"].items()) if node is None or p["node"] == node]
            items = [item for item in items if selects(labels, item["metadata"]["labels"])]
            return self.reply(200, {"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": items})
        match = re.match(r"^/apis/node.k8s.io/v1/runtimeclasses/([^/]+)$", url.path)
        if match:
            return self.reply(*status(404, "NotFound", 'runtimeclasses.node.k8s.io "%s" not found' % match.group(1)))
        match = re.match(r"^/api/v1/namespaces/([^/]+)/pods/([^/]+)$", url.path)
        if match:
            key = (match.group(1), match.group(2))
            if key not in STATE["pods"]:
                return self.reply(*status(404, "NotFound", 'pods "%s" not found' % key[1]))
            return self.reply(200, pod_doc(key))
        return self.reply(*status(404, "NotFound", "the stand-in API does not serve %s" % url.path))

    def do_PATCH(self):
        match = re.match(r"^/api/v1/nodes/([^/]+)$", urlparse(self.path).path)
        if not match or match.group(1) not in STATE["nodes"]:
            return self.reply(*status(404, "NotFound", "no such node"))
        name = match.group(1)
        unschedulable = bool(self.body().get("spec", {}).get("unschedulable", False))
        node = STATE["nodes"][name]
        if node["unschedulable"] != unschedulable:
            node["unschedulable"] = unschedulable
            node["version"] += 1
            journal("cordon" if unschedulable else "uncordon", node=name)
        return self.reply(200, node_doc(name))

    def do_POST(self):
        match = re.match(r"^/api/v1/namespaces/([^/]+)/pods/([^/]+)/eviction$", urlparse(self.path).path)
        if not match:
            return self.reply(*status(404, "NotFound", "the stand-in API does not serve %s" % self.path))
        key = (match.group(1), match.group(2))
        self.body()
        if key not in STATE["pods"]:
            return self.reply(*status(404, "NotFound", 'pods "%s" not found' % key[1]))
        pod = STATE["pods"].pop(key)
        journal("evict", node=pod["node"], pod="%s/%s" % key)
        return self.reply(201, {"apiVersion": "v1", "kind": "Status", "status": "Success", "code": 201})


def main(argv):
    global JOURNAL
    parser = argparse.ArgumentParser()
    parser.add_argument("--port-file", required=True)
    parser.add_argument("--journal", required=True)
    parser.add_argument("--cordoned", action="append", default=[])
    parser.add_argument("--shm-pod", action="append", default=[],
                        help="NODE: also runs `shm-<node>`, a ReplicaSet pod with /dev/shm a memory emptyDir (the "
                             "collection's MPS pods' shape), which a drain refuses without delete_emptydir_data")
    parser.add_argument("--lifetime", type=float, default=900)
    parser.add_argument("nodes", nargs="+")
    args = parser.parse_args(argv)
    JOURNAL = args.journal
    for name in args.nodes:
        STATE["nodes"][name] = {"unschedulable": name in args.cordoned, "version": 1}
        STATE["pods"][("default", "work-" + name)] = {"node": name, "owner": "ReplicaSet"}
        STATE["pods"][("kube-system", "ds-" + name)] = {"node": name, "owner": "DaemonSet"}
        if name in args.shm_pod:
            STATE["pods"][("default", "shm-" + name)] = {"node": name, "owner": "ReplicaSet", "volumes": [
                {"name": "dshm", "emptyDir": {"medium": "Memory"}}]}
    server = HTTPServer(("127.0.0.1", 0), Handler)
    server.timeout = 0.5
    server.stopping = False
    deadline = time.time() + args.lifetime
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    journal("start", nodes=args.nodes, cordoned=args.cordoned)
    tmp = args.port_file + ".tmp"
    with open(tmp, "w") as handle:
        handle.write("%d\n" % server.server_address[1])
    os.rename(tmp, args.port_file)
    while time.time() < deadline and not server.stopping:
        server.handle_request()
    journal("stop")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
