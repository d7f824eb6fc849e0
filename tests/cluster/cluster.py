# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A throwaway single-node Kubernetes on this machine, that always leaves the host as it found it.

    with Cluster(Layout(), bins, log_dir) as cluster:      # as root
        cluster.kubectl("get", "nodes")

What it runs, from server binaries given in a folder (binaries.take) and Debian's etcd-server, containerd, runc and
containernetworking-plugins:
- a network namespace of its own (`ip netns add`), `lo` up with an extra address (the node's: the kubelet refuses a
  loopback node IP and the API server a loopback advertise address); every daemon is started with
  `nsenter --net=/run/netns/NS` (not `ip netns exec`, which remounts /sys and hides the cgroup v1 mounts from the
  kubelet). Nothing listens outside the namespace, and the namespace has no link out.
- a throwaway PKI (openssl, EC P-256 keys): a CA, the API server's serving cert, client certs of the admin, the
  controller-manager, the scheduler, the kubelet and the API server's kubelet client, the kubelet's serving cert,
  the service-account key pair; kubeconfigs with the certs embedded.
- etcd (Debian 3.4, data in Layout.data), kube-apiserver (advertising the node address, bound inside the
  namespace), then, only after its /readyz answers 200, kube-controller-manager and kube-scheduler.
- containerd with its own root, state, socket and runc root (`restrict_oom_score_adj = true`: writing
  oom_score_adj -998 is refused here, CAP_SYS_RESOURCE is missing; `SystemdCgroup = false`), its CNI config in the
  state directory: `bridge` + `host-local` (pod network Layout.pod_cidr on a bridge inside the namespace, no
  uplink) and `loopback`; a runtime handler `nvidia` that is plain runc (on a GPU node nvidia-ctk adds the real one;
  here it lets pods with `runtimeClassName: nvidia` run).
- the kubelet (cgroup v1 here: `failCgroupV1: false`, `cgroupDriver: cgroupfs`; root /var/lib/kubelet, because the
  device plugins' socket directory is fixed there).
- the service IP of the API server (10.96.0.1:443, what pods are told in KUBERNETES_SERVICE_HOST) DNATed to the
  API server by an nftables table in the namespace: the one job of kube-proxy that pods here need.

Teardown (always, also after a failed start): the lane's pods deleted through the API while the kubelet runs, the
kubelet stopped, leftover containers killed through containerd, containerd and its shims, the scheduler, the
controller-manager, the API server, then etcd; new mounts under the lane's paths unmounted (deepest first), the
kubepods cgroups removed, the namespace deleted (and the /run/netns self-mount that `ip netns add` made), the
kernel settings the kubelet changed put back, and what the lane created in /run, /var/lib, /var/log, /etc, /opt
removed. Then hostclean.compare() checks the host against the snapshot taken before anything started: a
difference of the lane's kind raises HostNotClean (after the teardown), with one line per difference; what other
users of the machine changed meanwhile is kept apart in Cluster.others.

The pure parts (the configs, the argv of each daemon, the certificates, the kubeconfigs) are functions of a Layout
and are tested on the CPU in tests/unit/cluster/.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import hostclean

# Where the lane may remove what it created (only when it did not exist before the lane started).
REMOVABLE = {
    # fake device nodes of the fork's device specs (scenarios.fake_devices), should the lane die before removing them
    "/dev": ("nvidiactl", "nvidia-modeset", "nvidia-uvm", "nvidia-uvm-tools") + tuple("nvidia%d" % i for i in range(8)),
    "/run": ("containerd", "netns", "cdi", "nvidia", "xtables.lock"),
    "/var/lib": ("kubelet", "cni"),
    "/var/log": ("pods", "containers"),
    "/etc": ("cni",),
    "/opt": ("cni", "containerd"),
}


BEFORE_FILE = "host-before.json"   # in Layout.state: what the host was, for a teardown after the lane was killed
# The lane's daemons, in start order, as their command lines begin (`recover` adopts them by pid).
DAEMONS = (("etcd", r"^etcd --name lane "), ("kube-apiserver", r"^\S*kube-apiserver "),
           ("kube-controller-manager", r"^\S*kube-controller-manager "), ("kube-scheduler", r"^\S*kube-scheduler "),
           ("containerd", r"^containerd --config "), ("kubelet", r"^\S*kubelet --config="))


class LaneError(RuntimeError):
    """The cluster could not be started or driven; the message says what and where the logs are."""


class HostNotClean(LaneError):
    """After the teardown the host differs from what it was before the lane: one line per difference."""

    def __init__(self, problems):
        super(HostNotClean, self).__init__("the host is not as the lane found it:\n  " + "\n  ".join(problems))
        self.problems = problems


@dataclasses.dataclass
class Layout(object):
    """Names, addresses and paths of one lane cluster."""
    netns: str = "gpulab-lane"
    node_name: str = "lane-node"
    node_ip: str = "10.123.0.1"
    service_cidr: str = "10.96.0.0/24"
    service_ip: str = "10.96.0.1"
    pod_cidr: str = "10.124.0.0/24"
    bridge: str = "gpulab-lane0"
    api_port: int = 6443
    state: str = "/run/gpulab-cluster-lane"
    data: str = "/var/lib/gpulab-cluster-lane"
    kubelet_root: str = "/var/lib/kubelet"
    cni_bin: str = "/usr/lib/cni"
    runtime_handlers: tuple = ("nvidia",)

    @property
    def pki(self):
        return os.path.join(self.state, "pki")

    @property
    def containerd_socket(self):
        return os.path.join(self.state, "containerd", "containerd.sock")

    @property
    def netns_path(self):
        return "/run/netns/%s" % self.netns

    @property
    def api_url(self):
        return "https://127.0.0.1:%d" % self.api_port

    def kubeconfig(self, user):
        return os.path.join(self.pki, "%s.kubeconfig" % user)

    def markers(self):
        """Strings only the lane's processes carry on their command line."""
        return (self.state, self.data, self.containerd_socket)


# --- the pure parts: configs and command lines ------------------------------------------------------------------

def _dns_names(layout):
    return ["kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local",
            "localhost"]


def certificates(layout):
    """[(file name, common name, organisation or None, subjectAltNames, extended key usage)] signed by the lane CA."""
    node = "system:node:%s" % layout.node_name
    api_sans = ["IP:127.0.0.1", "IP:%s" % layout.node_ip, "IP:%s" % layout.service_ip] + [
        "DNS:%s" % n for n in _dns_names(layout)]
    return [
        ("apiserver", "kube-apiserver", None, api_sans, "serverAuth"),
        ("apiserver-kubelet-client", "kube-apiserver-kubelet-client", "system:masters", [], "clientAuth"),
        ("admin", "gpulab-lane-admin", "system:masters", [], "clientAuth"),
        ("controller-manager", "system:kube-controller-manager", None, [], "clientAuth"),
        ("scheduler", "system:kube-scheduler", None, [], "clientAuth"),
        ("kubelet", node, "system:nodes", [], "clientAuth"),
        ("kubelet-serving", node, "system:nodes", ["IP:%s" % layout.node_ip, "DNS:%s" % layout.node_name],
         "serverAuth"),
    ]


KUBECONFIG_USERS = ("admin", "controller-manager", "scheduler", "kubelet")


def kubeconfig_text(server, ca_pem, cert_pem, key_pem, user):
    """A kubeconfig (JSON, which kubeconfig loaders read as YAML) with the certificates embedded."""
    def b64(data):
        return base64.b64encode(data if isinstance(data, bytes) else data.encode()).decode()
    return json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "lane", "preferences": {},
        "clusters": [{"name": "lane", "cluster": {"server": server, "certificate-authority-data": b64(ca_pem)}}],
        "users": [{"name": user, "user": {"client-certificate-data": b64(cert_pem), "client-key-data": b64(key_pem)}}],
        "contexts": [{"name": "lane", "context": {"cluster": "lane", "user": user}}],
    }, indent=1) + "\n"


def containerd_config(layout):
    """containerd's config.toml (version 2): its own root, state, socket and runc root; CRI on the lane's CNI."""
    runtimes = []
    for handler in ("runc",) + tuple(layout.runtime_handlers):
        runtimes.append('''    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.%(h)s]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.%(h)s.options]
        SystemdCgroup = false
        Root = "%(state)s/containerd/runc"
''' % {"h": handler, "state": layout.state})
    return '''version = 2
root = "%(data)s/containerd"
state = "%(state)s/containerd/state"
[grpc]
  address = "%(sock)s"
[debug]
  level = "info"
[plugins."io.containerd.internal.v1.opt"]
  path = "%(data)s/containerd-opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "%(pause)s"
  restrict_oom_score_adj = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
%(runtimes)s  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "%(cni_bin)s"
    conf_dir = "%(state)s/cni/net.d"
    max_conf_num = 1
''' % {"data": layout.data, "state": layout.state, "sock": layout.containerd_socket, "pause": PAUSE_IMAGE,
       "runtimes": "".join(runtimes), "cni_bin": layout.cni_bin}


PAUSE_IMAGE = "docker.io/gpulab/lane-pause:1"


def _gateway(cidr):
    """The first address of an IPv4 /N network ("10.124.0.0/24" -> "10.124.0.1")."""
    network = cidr.split("/")[0].split(".")
    return ".".join(network[:3] + [str(int(network[3]) + 1)])


def cni_conflist(layout):
    """bridge + host-local (pod addresses in Layout.pod_cidr, state in the lane's directory) and loopback."""
    return json.dumps({
        "cniVersion": "0.4.0", "name": "gpulab-lane",
        "plugins": [
            {"type": "bridge", "bridge": layout.bridge, "isGateway": True, "ipMasq": False, "hairpinMode": False,
             "ipam": {"type": "host-local", "ranges": [[{"subnet": layout.pod_cidr, "gateway": _gateway(layout.pod_cidr)}]],
                      "routes": [{"dst": "0.0.0.0/0"}], "dataDir": os.path.join(layout.state, "cni", "ipam")}},
            {"type": "loopback"},
        ],
    }, indent=1) + "\n"


def kubelet_config(layout):
    """The KubeletConfiguration (JSON is YAML): cgroup v1 with cgroupfs, webhook authn/z, images never collected."""
    pki = layout.pki
    return json.dumps({
        "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
        "failCgroupV1": False,
        "cgroupDriver": "cgroupfs",
        "containerRuntimeEndpoint": "unix://%s" % layout.containerd_socket,
        "address": layout.node_ip, "port": 10250, "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1", "healthzPort": 10248,
        "tlsCertFile": os.path.join(pki, "kubelet-serving.crt"),
        "tlsPrivateKeyFile": os.path.join(pki, "kubelet-serving.key"),
        "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": True},
                           "x509": {"clientCAFile": os.path.join(pki, "ca.crt")}},
        "authorization": {"mode": "Webhook"},
        "clusterDomain": "cluster.local",
        "failSwapOn": False,
        "resolvConf": "/etc/resolv.conf",
        # No registry to pull from: never collect the imported images, never evict on a busy shared disk.
        "imageGCHighThresholdPercent": 100, "imageGCLowThresholdPercent": 99,
        "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%", "imagefs.available": "1%"},
        "serializeImagePulls": False,
        # The node status carries the device plugin's resource on the next update: report often.
        "nodeStatusUpdateFrequency": "4s",
    }, indent=1) + "\n"


def nft_rules(layout):
    """What kube-proxy would do for the one service pods here use: the API server's service IP to the API server."""
    rule = "ip daddr %s tcp dport 443 dnat to %s:%d" % (layout.service_ip, layout.node_ip, layout.api_port)
    return ("table ip gpulab_lane {\n"
            "  chain prerouting { type nat hook prerouting priority -100; %s; }\n"
            "  chain output { type nat hook output priority -100; %s; }\n"
            "}\n") % (rule, rule)


def etcd_argv(layout):
    return ["etcd", "--name", "lane", "--data-dir", os.path.join(layout.data, "etcd"),
            "--listen-client-urls", "http://127.0.0.1:2379", "--advertise-client-urls", "http://127.0.0.1:2379",
            "--listen-peer-urls", "http://127.0.0.1:2380", "--initial-advertise-peer-urls", "http://127.0.0.1:2380",
            "--initial-cluster", "lane=http://127.0.0.1:2380", "--listen-metrics-urls", "http://127.0.0.1:2381"]


def apiserver_argv(layout, binary):
    pki = layout.pki
    return [binary, "--etcd-servers=http://127.0.0.1:2379",
            # Inside the namespace only: 127.0.0.1 for the lane, the node address for pods (through the service IP).
            "--bind-address=0.0.0.0", "--secure-port=%d" % layout.api_port, "--advertise-address=%s" % layout.node_ip,
            "--tls-cert-file=%s/apiserver.crt" % pki, "--tls-private-key-file=%s/apiserver.key" % pki,
            "--client-ca-file=%s/ca.crt" % pki,
            "--service-account-key-file=%s/sa.pub" % pki, "--service-account-signing-key-file=%s/sa.key" % pki,
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            "--service-cluster-ip-range=%s" % layout.service_cidr,
            "--authorization-mode=Node,RBAC", "--allow-privileged=true",
            "--kubelet-client-certificate=%s/apiserver-kubelet-client.crt" % pki,
            "--kubelet-client-key=%s/apiserver-kubelet-client.key" % pki,
            "--kubelet-preferred-address-types=InternalIP", "--profiling=false"]


def controller_manager_argv(layout, binary):
    pki, kubeconfig = layout.pki, layout.kubeconfig("controller-manager")
    return [binary, "--kubeconfig=%s" % kubeconfig, "--authentication-kubeconfig=%s" % kubeconfig,
            "--authorization-kubeconfig=%s" % kubeconfig, "--bind-address=127.0.0.1", "--leader-elect=false",
            "--use-service-account-credentials=true", "--service-account-private-key-file=%s/sa.key" % pki,
            "--root-ca-file=%s/ca.crt" % pki, "--cluster-signing-cert-file=%s/ca.crt" % pki,
            "--cluster-signing-key-file=%s/ca.key" % pki,
            "--controllers=*,-cloud-node-lifecycle,-service-lb-controller,-route", "--profiling=false"]


def scheduler_argv(layout, binary):
    kubeconfig = layout.kubeconfig("scheduler")
    return [binary, "--kubeconfig=%s" % kubeconfig, "--authentication-kubeconfig=%s" % kubeconfig,
            "--authorization-kubeconfig=%s" % kubeconfig, "--bind-address=127.0.0.1", "--leader-elect=false",
            "--profiling=false"]


def kubelet_argv(layout, binary):
    return [binary, "--config=%s" % os.path.join(layout.state, "kubelet.json"),
            "--kubeconfig=%s" % layout.kubeconfig("kubelet"), "--root-dir=%s" % layout.kubelet_root,
            "--hostname-override=%s" % layout.node_name, "--node-ip=%s" % layout.node_ip, "--v=1"]


def removable(before_dirs, path, name):
    """Whether the lane may remove `path`/`name`: a name it makes there, which was not there before it started."""
    return name in REMOVABLE.get(path, ()) and name not in (before_dirs.get(path) or [])


def node_ready(node):
    """True, False, or None (no Ready condition yet) from a Node object."""
    for condition in (node or {}).get("status", {}).get("conditions") or []:
        if condition.get("type") == "Ready":
            return condition.get("status") == "True"
    return None


# --- the cluster ------------------------------------------------------------------------------------------------

class Adopted(object):
    """A daemon of a lane that was killed, found by its pid: what Cluster.stop() needs of a Popen."""

    def __init__(self, pid, args):
        self.pid = pid
        self.args = args
        self.returncode = None

    def poll(self):
        if self.returncode is None:
            try:
                with open("/proc/%d/stat" % self.pid) as handle:
                    state = handle.read().rsplit(")", 1)[1].split()[0]
            except (OSError, IndexError):
                state = None
            if state in (None, "Z", "X"):
                self.returncode = "gone"
        return self.returncode

    def send_signal(self, signum):
        try:
            os.kill(self.pid, signum)
        except ProcessLookupError:
            pass

    def kill(self):
        self.send_signal(signal.SIGKILL)

    def wait(self, timeout=None):
        deadline = time.time() + (timeout if timeout is not None else 3600)
        while self.poll() is None:
            if time.time() > deadline:
                raise subprocess.TimeoutExpired(self.args, timeout)
            time.sleep(0.1)
        return self.returncode


class Cluster(object):
    """The running cluster (a context manager: teardown and the host check always run on the way out)."""

    def __init__(self, layout, bins, log_dir, images=(), log=print):
        """bins: {name: path} of kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, kubectl.
        images: docker-archive tars imported into containerd before the kubelet starts."""
        self.layout = layout
        self.bins = bins
        self.log_dir = log_dir
        self.images = list(images)
        self.say = log
        self.procs = []            # (name, Popen), in start order
        self.timings = {}          # step: seconds since the start
        self.before = None
        self.after = None
        self.problems = None
        self.others = None
        self.netns_inode = None
        self.teardown_seconds = None
        self.teardown_log = []
        self.import_error = None
        self.graceful = True       # pods deleted through the API first (not when recovering a killed lane)
        self.t0 = None

    # helpers
    def mark(self, step):
        self.timings[step] = round(time.time() - self.t0, 2)
        self.say("%-34s +%.2fs" % (step, self.timings[step]))

    def run(self, argv, timeout=60, check=True, input=None, netns=False):
        """Run a command (in the lane's namespace when netns); LaneError with its output when check and it fails."""
        if netns:
            argv = ["nsenter", "--net=%s" % self.layout.netns_path] + list(argv)
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, input=input, check=False)
        except subprocess.TimeoutExpired as error:
            raise LaneError("%s did not finish in %ds" % (" ".join(argv), timeout)) from error
        if check and proc.returncode != 0:
            raise LaneError("%s failed (exit %d): %s" % (" ".join(argv), proc.returncode,
                                                         (proc.stderr or proc.stdout).strip()[-2000:]))
        return proc

    def kubectl(self, *args, timeout=60, check=True, input=None, user="admin"):
        return self.run([self.bins["kubectl"], "--kubeconfig", self.layout.kubeconfig(user)] + list(args),
                        timeout=timeout, check=check, input=input, netns=True)

    def kubectl_json(self, *args, timeout=60):
        return json.loads(self.kubectl(*(list(args) + ["-o", "json"]), timeout=timeout).stdout)

    def start_daemon(self, name, argv, env=None):
        out = open(os.path.join(self.log_dir, "%s.log" % name), "ab")
        full = ["nsenter", "--net=%s" % self.layout.netns_path] + list(argv)   # nsenter execs: the pid is the daemon's
        proc = subprocess.Popen(full, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env=env)
        out.close()
        self.procs.append((name, proc))
        return proc

    def wait_for(self, what, predicate, timeout, proc=None, step=0.2):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if proc is not None and proc.poll() is not None:
                raise LaneError("%s exited (%s) before %s; see %s" % (
                    proc.args[2] if len(proc.args) > 2 else proc.args, proc.returncode, what, self.log_dir))
            try:
                if predicate():
                    return
            except (LaneError, ValueError):
                pass
            time.sleep(step)
        raise LaneError("%s: not within %ds; see the logs in %s" % (what, timeout, self.log_dir))

    # the start
    def __enter__(self):
        self.t0 = time.time()
        self.before = hostclean.snapshot()
        try:
            self.preflight()
            self.start()
        except BaseException:
            self.__exit__(*sys.exc_info())
            raise
        return self

    def __exit__(self, kind, value, traceback):
        started = time.time()
        # SIGTERM or ^C during the teardown would leave the host half undone: they wait until it is over.
        masked = threading.current_thread() is threading.main_thread()
        if masked:
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
        try:
            self.teardown()
        finally:
            self.teardown_seconds = round(time.time() - started, 2)
            self.after = hostclean.snapshot()
            self.others = []
            self.problems = hostclean.compare(self.before, self.after, self.netns_inode, self.layout.markers(),
                                              others=self.others)
            if masked:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGINT})
        if self.problems and kind is None:
            raise HostNotClean(self.problems)
        return False

    def save_before(self):
        with open(os.path.join(self.layout.state, BEFORE_FILE), "w") as handle:
            json.dump({"before": self.before, "netns_inode": self.netns_inode, "started": self.t0}, handle)

    def recover(self):
        """The teardown and the host check of a lane that was killed (SIGKILL, a lost session): its record of the
        host (Layout.state/host-before.json) and its daemons found by their command lines."""
        path = os.path.join(self.layout.state, BEFORE_FILE)
        try:
            with open(path) as handle:
                record = json.load(handle)
        except (OSError, ValueError) as error:
            raise LaneError("no record of the host before the lane (%s: %s): nothing to recover from" % (path, error))
        self.before, self.netns_inode = record["before"], record.get("netns_inode")
        self.graceful = False
        found = {}
        for pid, info in sorted(hostclean.processes().items()):
            if not any(marker in info["cmdline"] for marker in self.layout.markers()):
                continue
            for name, pattern in DAEMONS:
                if re.match(pattern, info["cmdline"]) and name not in found:
                    found[name] = Adopted(pid, info["cmdline"].split())
        self.procs = [(name, found[name]) for name, _pattern in DAEMONS if name in found]
        found_text = ", ".join("%s (pid %d)" % (n, p.pid) for n, p in self.procs)
        self.note("recovering: found %s" % (found_text or "no daemon of the lane running"))
        return self.__exit__(None, None, None)

    def preflight(self):
        """Refuse to start over something that is already there (another kubelet, an earlier lane left behind)."""
        layout = self.layout
        if os.geteuid() != 0:
            raise LaneError("the cluster lane runs as root (network namespace, containerd, kubelet)")
        in_the_way = [p for p in (layout.kubelet_root, layout.state, layout.data, layout.netns_path)
                      if os.path.lexists(p)]
        if in_the_way:
            raise LaneError("%s already exist(s): another kubelet, or a lane run that was killed before its teardown "
                            "(`python tests/cluster/lane.py --recover` tears that one down and checks the host); "
                            "nothing was started" % ", ".join(in_the_way))
        for tool in ("ip", "nsenter", "openssl", "curl", "nft", "etcd", "containerd", "ctr", "runc"):
            if not shutil.which(tool):
                raise LaneError("%s is not on PATH: the lane needs iproute2, util-linux, openssl, curl, nftables and "
                                "Debian's etcd-server, containerd, runc (apt-get install etcd-server containerd runc "
                                "containernetworking-plugins nftables)" % tool)
        for plugin in ("bridge", "host-local", "loopback"):
            if not os.access(os.path.join(layout.cni_bin, plugin), os.X_OK):
                raise LaneError("CNI plugin %s/%s is missing (Debian: containernetworking-plugins)" % (
                    layout.cni_bin, plugin))

    def start(self):
        layout = self.layout
        os.makedirs(self.log_dir, exist_ok=True)
        for path in (layout.state, layout.data):
            os.makedirs(path, mode=0o700)
        for sub in ("pki", "cni/net.d", "containerd"):
            os.makedirs(os.path.join(layout.state, sub), mode=0o700, exist_ok=True)
        # 1. the namespace
        self.save_before()
        self.run(["ip", "netns", "add", layout.netns])
        self.netns_inode = os.stat(layout.netns_path).st_ino
        self.save_before()
        self.run(["ip", "-n", layout.netns, "link", "set", "lo", "up"])
        self.run(["ip", "-n", layout.netns, "addr", "add", "%s/32" % layout.node_ip, "dev", "lo"])
        self.run(["nft", "-f", "-"], input=nft_rules(layout), netns=True)
        self.mark("netns")
        # 2. PKI
        self.make_pki()
        self.mark("pki")
        # 3. etcd
        etcd = self.start_daemon("etcd", etcd_argv(layout))
        self.wait_for("etcd healthy", lambda: self.run(
            ["curl", "-sf", "http://127.0.0.1:2379/health"], timeout=5, check=False, netns=True).returncode == 0,
            30, etcd, step=0.1)
        self.mark("etcd healthy")
        # 4. the API server, then controller-manager and scheduler once it is ready
        api = self.start_daemon("kube-apiserver", apiserver_argv(layout, self.bins["kube-apiserver"]))
        self.wait_for("kube-apiserver /readyz 200", self.apiserver_ready, 90, api)
        self.mark("kube-apiserver ready")
        self.start_daemon("kube-controller-manager",
                          controller_manager_argv(layout, self.bins["kube-controller-manager"]))
        self.start_daemon("kube-scheduler", scheduler_argv(layout, self.bins["kube-scheduler"]))
        # 5. containerd and the images
        with open(os.path.join(layout.state, "containerd", "config.toml"), "w") as handle:
            handle.write(containerd_config(layout))
        with open(os.path.join(layout.state, "cni", "net.d", "10-gpulab-lane.conflist"), "w") as handle:
            handle.write(cni_conflist(layout))
        containerd = self.start_daemon("containerd", ["containerd", "--config",
                                                      os.path.join(layout.state, "containerd", "config.toml")])
        self.wait_for("containerd answers", lambda: self.ctr("version", check=False).returncode == 0, 30,
                      containerd, step=0.1)
        self.mark("containerd up")
        # 6. the kubelet, while the images are imported (the first one, the pause image, before it starts)
        if self.images:
            self.ctr("images", "import", self.images[0], timeout=180)
        importer = threading.Thread(target=self.import_images, args=(self.images[1:],), daemon=True)
        importer.start()
        with open(os.path.join(layout.state, "kubelet.json"), "w") as handle:
            handle.write(kubelet_config(layout))
        kubelet = self.start_daemon("kubelet", kubelet_argv(layout, self.bins["kubelet"]))
        self.wait_for("node %s Ready" % layout.node_name, lambda: node_ready(
            self.kubectl_json("get", "node", layout.node_name, timeout=15)), 120, kubelet, step=0.3)
        self.mark("node Ready")
        importer.join(300)
        if self.import_error or importer.is_alive():
            raise LaneError("importing the images failed: %s" % (self.import_error or "not done in 300 s"))
        self.mark("images imported")

    def import_images(self, tars):
        try:
            for tar in tars:
                self.ctr("images", "import", tar, timeout=180)
        except Exception as error:  # noqa: BLE001 - reported by start()
            self.import_error = "%s: %s" % (type(error).__name__, error)

    def apiserver_ready(self):
        pki = self.layout.pki
        proc = self.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--cacert", pki + "/ca.crt",
                         "--cert", pki + "/admin.crt", "--key", pki + "/admin.key", self.layout.api_url + "/readyz"],
                        timeout=10, check=False, netns=True)
        return proc.stdout.strip() == "200"

    def ctr(self, *args, timeout=60, check=True):
        return self.run(["ctr", "--address", self.layout.containerd_socket, "-n", "k8s.io"] + list(args),
                        timeout=timeout, check=check)

    def make_pki(self):
        pki = self.layout.pki

        def openssl(*args):
            self.run(["openssl"] + list(args), timeout=30)
        ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        openssl("req", "-x509", *ec, "-keyout", pki + "/ca.key", "-out", pki + "/ca.crt", "-days", "2",
                "-subj", "/CN=gpulab-lane-ca")
        openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", pki + "/sa.key")
        openssl("ec", "-in", pki + "/sa.key", "-pubout", "-out", pki + "/sa.pub")
        for name, cn, org, sans, usage in certificates(self.layout):
            base = os.path.join(pki, name)
            subject = "/CN=%s" % cn + ("/O=%s" % org if org else "")
            openssl("req", *ec, "-keyout", base + ".key", "-out", base + ".csr", "-subj", subject)
            with open(base + ".ext", "w") as handle:
                if sans:
                    handle.write("subjectAltName=%s\n" % ",".join(sans))
                handle.write("extendedKeyUsage=%s\nkeyUsage=critical,digitalSignature,keyEncipherment\n" % usage)
            openssl("x509", "-req", "-in", base + ".csr", "-CA", pki + "/ca.crt", "-CAkey", pki + "/ca.key",
                    "-CAcreateserial", "-days", "2", "-extfile", base + ".ext", "-out", base + ".crt")
            os.unlink(base + ".csr")
            os.unlink(base + ".ext")

        def read(name):
            with open(os.path.join(pki, name)) as handle:
                return handle.read()
        for user in KUBECONFIG_USERS:
            with open(self.layout.kubeconfig(user), "w") as handle:
                handle.write(kubeconfig_text(self.layout.api_url, read("ca.crt"), read(user + ".crt"),
                                             read(user + ".key"), user))
        for name in os.listdir(pki):
            os.chmod(os.path.join(pki, name), 0o600)

    # the teardown
    def note(self, message):
        self.teardown_log.append(message)
        self.say("teardown: %s" % message)

    def stop(self, name, timeout=20):
        for proc_name, proc in self.procs:
            if proc_name != name or proc.poll() is not None:
                continue
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.note("%s (pid %d) did not stop in %ds: SIGKILL" % (name, proc.pid, timeout))
                proc.kill()
                proc.wait()
            self.note("stopped %s (pid %d, exit %s)" % (name, proc.pid, proc.returncode))

    def alive(self, name):
        return any(n == name and p.poll() is None for n, p in self.procs)

    def teardown(self):
        steps = [self.delete_workloads, lambda: self.stop("kubelet", 30), self.remove_containers,
                 lambda: self.stop("containerd", 20), self.kill_shims,
                 lambda: self.stop("kube-scheduler"), lambda: self.stop("kube-controller-manager"),
                 lambda: self.stop("kube-apiserver", 30), lambda: self.stop("etcd"),
                 self.stop_everything_else, self.unmount, self.remove_cgroups, self.delete_netns,
                 self.restore_sysctls, self.remove_paths]
        for step in steps:
            try:
                step()
            except Exception as error:  # noqa: BLE001 - every step runs; the host check says what is left
                self.note("%s failed: %s: %s" % (getattr(step, "__name__", "a step"), type(error).__name__, error))

    def delete_workloads(self):
        """Everything with pods, deleted through the API while the kubelet runs (it stops the sandboxes, their
        networks and mounts); the DaemonSets first so that nothing comes back."""
        if not (self.graceful and self.alive("kubelet") and self.alive("kube-apiserver")):
            return
        namespaces = [n["metadata"]["name"] for n in self.kubectl_json("get", "namespaces")["items"]
                      if n["metadata"]["name"] not in ("default", "kube-system", "kube-public", "kube-node-lease")]
        self.kubectl("delete", "daemonsets,deployments,replicasets,jobs", "--all", "--all-namespaces",
                     "--wait=false", check=False)
        self.kubectl("delete", "pods", "--all", "--all-namespaces", "--grace-period=1", "--wait=true",
                     "--timeout=60s", timeout=90, check=False)
        for namespace in namespaces:
            self.kubectl("delete", "namespace", namespace, "--wait=true", "--timeout=60s", timeout=90, check=False)
        left = self.kubectl_json("get", "pods", "--all-namespaces")["items"]
        self.note("pods deleted through the API (%d left, namespaces %s removed)" % (
            len(left), ", ".join(namespaces) or "none"))

    def remove_containers(self):
        if not os.path.exists(self.layout.containerd_socket) or not self.alive("containerd"):
            return
        tasks = self.ctr("tasks", "ls", "-q", check=False).stdout.split()
        for task in tasks:
            self.ctr("tasks", "kill", "-s", "SIGKILL", task, check=False)
        if tasks:
            time.sleep(1)
        for task in tasks:
            self.ctr("tasks", "rm", "-f", task, check=False)
        containers = self.ctr("containers", "ls", "-q", check=False).stdout.split()
        for container in containers:
            self.ctr("containers", "rm", container, check=False)
        self.note("containerd: %d task(s) and %d container(s) left by the kubelet removed" % (
            len(tasks), len(containers)))

    def lane_pids(self):
        """Live processes that belong to the lane (hostclean's rule), other than this one."""
        found = []
        for pid, info in hostclean.processes().items():
            if pid == os.getpid():
                continue
            if str(pid) in self.before["processes"] and self.before["processes"][str(pid)]["start"] == info["start"]:
                continue
            if hostclean.lane_process(info, self.netns_inode, self.layout.markers()):
                found.append((pid, info["cmdline"]))
        return found

    def kill_shims(self):
        for pid, cmdline in self.lane_pids():
            if "containerd-shim" in cmdline:
                self.note("killing shim %d: %s" % (pid, cmdline[:120]))
                _kill(pid)

    def stop_everything_else(self):
        for name, proc in self.procs:
            if proc.poll() is None:
                self.stop(name)
        left = self.lane_pids()
        for pid, cmdline in left:
            self.note("killing lane process %d: %s" % (pid, cmdline[:120]))
            _kill(pid)

    def unmount(self):
        """New mounts under the lane's paths (and the pod netns mounts in /run/netns), deepest first."""
        before = [tuple(m) for m in self.before["mounts"]]
        prefixes = (self.layout.kubelet_root, self.layout.state, self.layout.data, "/run/netns/",
                    "/run/containerd", "/run/nvidia", "/var/run/netns/")
        for _attempt in range(3):
            mounts = hostclean.parse_mountinfo(open("/proc/self/mountinfo").read())
            new = [m for m in mounts if m not in before and m[0] not in ("/run/netns", self.layout.netns_path)
                   and (m[0] + "/").startswith(tuple(p if p.endswith("/") else p + "/" for p in prefixes))]
            if not new:
                return
            for point in sorted(set(m[0] for m in new), key=len, reverse=True):
                proc = self.run(["umount", point], check=False)
                if proc.returncode != 0:
                    self.run(["umount", "-l", point], check=False)
                self.note("umount %s" % point)

    def remove_cgroups(self):
        removed = 0
        for hierarchy, names in hostclean.cgroup_tops().items():
            for name in names:
                if name.startswith("kubepods") and name not in (self.before["cgroups"].get(hierarchy) or []):
                    for root, dirs, _files in os.walk(os.path.join(hierarchy, name), topdown=False):
                        for directory in dirs:
                            removed += _rmdir(os.path.join(root, directory))
                    removed += _rmdir(os.path.join(hierarchy, name))
        if removed:
            self.note("removed %d kubepods cgroup(s) the kubelet made" % removed)

    def delete_netns(self):
        if os.path.lexists(self.layout.netns_path):
            self.run(["ip", "netns", "del", self.layout.netns], check=False)
            self.note("netns %s deleted" % self.layout.netns)
        # pod network namespaces containerd made (cni-*), then the self-mount of /run/netns when the lane made it
        before = self.before["dirs"].get("/run/netns")
        for name in hostclean.list_dir("/run/netns") or []:
            if name.startswith("cni-") and name not in (before or []):
                path = os.path.join("/run/netns", name)
                self.run(["umount", path], check=False)
                _unlink(path)
                self.note("removed pod netns %s" % path)
        if before is None and os.path.isdir("/run/netns") and not os.listdir("/run/netns"):
            points = [m[0] for m in hostclean.parse_mountinfo(open("/proc/self/mountinfo").read())]
            while "/run/netns" in points:
                self.run(["umount", "/run/netns"], check=False)
                points.remove("/run/netns")
            os.rmdir("/run/netns")
            self.note("/run/netns and its self-mount removed (made by ip netns add)")

    def restore_sysctls(self):
        now = hostclean.read_sysctls()
        for name, value in sorted(self.before["sysctls"].items()):
            if value is not None and now.get(name) != value:
                with open(hostclean.sysctl_path(name), "w") as handle:
                    handle.write(value)
                self.note("sysctl %s=%s (the kubelet had set %s)" % (name, value, now.get(name)))

    def remove_paths(self):
        for path in (self.layout.kubelet_root, self.layout.state, self.layout.data):
            if os.path.lexists(path):
                shutil.rmtree(path, ignore_errors=True)
        before = self.before["dirs"]
        for parent in sorted(REMOVABLE):
            for name in hostclean.list_dir(parent) or []:
                if removable(before, parent, name) and (parent, name) != ("/run", "netns"):
                    path = os.path.join(parent, name)
                    if os.path.isdir(path) and not os.path.islink(path):
                        shutil.rmtree(path, ignore_errors=True)
                    else:
                        _unlink(path)
                    self.note("removed %s (made during the run)" % path)


def _kill(pid):
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _rmdir(path):
    try:
        os.rmdir(path)
        return 1
    except OSError:
        return 0


def _unlink(path):
    try:
        os.unlink(path)
    except OSError:
        pass
