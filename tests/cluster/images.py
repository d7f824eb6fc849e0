# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The cluster lane's images, made here without a registry or a Docker daemon.

Each image is one layer in a docker-archive tar (`manifest.json`, the config, `layer/layer.tar`), which
`ctr -n k8s.io images import` reads; pods then find it under its tag with imagePullPolicy IfNotPresent or Never.

- PAUSE_IMAGE: the pod sandbox, Debian's static busybox running a shell loop that waits (containerd kills the
  sandbox with SIGKILL).
- TOOLS_IMAGE: busybox (every applet), the machine's Debian python3 with its standard library and the shared
  libraries it loads, and the project's stand-ins `nvidia-cuda-mps-control` and `standin-cuda-client` (a workload
  in place of CUDA; tests/standins) on PATH: for probe, dial-tone and workload pods.
- The device-plugin image, tagged as the collection's manifests name the upstream image
  (`_device_plugin.UPSTREAM_IMAGE`, nvcr.io/nvidia/k8s-device-plugin:v0.20.0) so that the rendered DaemonSets run it
  unchanged: what TOOLS_IMAGE holds, the released binaries taken from --dp-bin in /usr/bin (nvidia-device-plugin,
  mps-control-daemon, config-manager, as in the release image), and NVIDIA's mock NVML as the node's driver library:
  the library at /opt/nvml-mock/usr/lib64/ with `libnvidia-ml.so.1` linked from /usr/lib/x86_64-linux-gnu (where
  the NVIDIA container runtime would inject the real one) and the lane's GPU profile at /opt/nvml-mock/config/
  config.yaml (the mock finds it from the library's own path; `MOCK_NVML_CONFIG` is not needed, so the pod spec
  stays as rendered); a stand-in `nvidia-smi` that answers the `-c` (compute mode) calls of the plugin's
  mps-control-daemon and changes nothing; and the stand-in MPS daemon's GPU count (/etc/gpulab-standin/gpus).
- The fork's image (collection.FORK_IMAGE, the `device_plugin_image` of individual mode): the same, with the fork's
  nvidia-device-plugin and mps-control-daemon from --dp-bin fork/ (and the upstream config-manager).

Host files are copied with the symlinks of their path (Debian's merged /usr: /lib -> usr/lib), owned by root.
The pure parts (ldd parsing, the layer's entries, the archive's manifest, the mock's GPU profile) are tested in
tests/unit/cluster/.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import os
import re
import subprocess
import tarfile

PAUSE_IMAGE = "docker.io/gpulab/lane-pause:1"
TOOLS_IMAGE = "docker.io/gpulab/lane-tools:1"
PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
EPOCH = 1764806400   # 2025-12-04: fixed times make the same inputs give the same layer
MOCK_ROOT = "/opt/nvml-mock"
# The Python standard library without what no pod here imports (tests, GUI, the 2to3 and pip bootstraps).
PYTHON_SKIP = re.compile(r"/(test|tests|idlelib|tkinter|turtledemo|ensurepip|lib2to3|pydoc_data|__pycache__|"
                         r"site-packages|dist-packages|config-[^/]*)(/|$)")


class ImageError(RuntimeError):
    """An image could not be made; the message says which file is missing."""


class Tree(object):
    """The entries of a one-layer root filesystem: {path without leading slash: (kind, payload, mode)}.
    kind: "dir", "file" (payload: a host path), "data" (payload: bytes), "symlink" (payload: the target)."""

    def __init__(self):
        self.entries = {}

    def _parents(self, path):
        parts = path.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            parent = "/".join(parts[:i])
            kind = self.entries.get(parent, ("dir",))[0]
            if kind != "dir":
                raise ImageError("%s cannot go under %s, which is a %s in the image" % (path, parent, kind))
            self.entries.setdefault(parent, ("dir", None, 0o755))

    def add(self, path, kind, payload=None, mode=None):
        path = path.strip("/")
        self._parents(path)
        if kind == "dir" and self.entries.get(path, ("dir",))[0] == "dir":
            self.entries[path] = ("dir", None, mode or 0o755)
            return
        self.entries[path] = (kind, payload, mode if mode is not None else 0o644)

    def dir(self, path, mode=0o755):
        self.add(path, "dir", mode=mode)

    def data(self, path, data, mode=0o644):
        self.add(path, "data", data.encode() if isinstance(data, str) else data, mode)

    def file(self, path, source, mode=None):
        if not os.path.isfile(source):
            raise ImageError("%s (for %s in the image) is not a file" % (source, path))
        self.add(path, "file", source, mode if mode is not None else os.stat(source).st_mode & 0o7777)

    def symlink(self, path, target):
        self.add(path, "symlink", target, 0o777)

    def host_path(self, path):
        """Copy a host file into the same path, replicating every symlink on the way (merged-/usr Debian)."""
        parts = [p for p in path.split("/") if p]
        current = ""
        for i, part in enumerate(parts):
            current = current + "/" + part
            if os.path.islink(current):
                target = os.readlink(current)
                self.symlink(current, target)
                resolved = target if target.startswith("/") else os.path.normpath(
                    os.path.join(os.path.dirname(current), target))
                return self.host_path("/".join([resolved] + parts[i + 1:]))
            if i == len(parts) - 1:
                if os.path.isdir(current):
                    self.dir(current)
                else:
                    self.file(current, current)
            elif not os.path.isdir(current):
                raise ImageError("%s is not a directory on this host" % current)
        return current

    def merge(self, other):
        for path, entry in sorted(other.entries.items()):
            self.add(path, *entry)
        return self


def parse_ldd(text):
    """The files that `ldd` says a binary loads (absolute paths; the vDSO left out). A missing one is an error."""
    paths = []
    for line in text.splitlines():
        line = line.strip()
        if "not found" in line:
            raise ImageError("a shared library is missing on this host: %s" % line)
        match = re.match(r"^\S+ => (/\S+) \(0x[0-9a-f]+\)$", line) or re.match(r"^(/\S+) \(0x[0-9a-f]+\)$", line)
        if match:
            paths.append(match.group(1))
    return paths


def shared_libraries(binaries):
    """Every shared library the given ELF files load (ldd), each once; static binaries add none."""
    found = []
    for start in range(0, len(binaries), 50):
        chunk = binaries[start:start + 50]
        proc = subprocess.run(["ldd"] + list(chunk), capture_output=True, text=True, timeout=60, check=False)
        text = proc.stdout
        if len(chunk) == 1:
            text = "%s:\n%s" % (chunk[0], text)
        for block in re.split(r"^(?=/\S+:$)", text, flags=re.M):
            if "not a dynamic executable" in block or "statically linked" in block:
                continue
            for path in parse_ldd(block):
                if path not in found:
                    found.append(path)
    return found


def layer_bytes(tree):
    """The uncompressed layer tar of a Tree: sorted, owned by root, fixed times."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(tree.entries):
            kind, payload, mode = tree.entries[path]
            info = tarfile.TarInfo(path)
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            info.mtime = EPOCH
            info.mode = mode
            if kind == "dir":
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif kind == "symlink":
                info.type = tarfile.SYMTYPE
                info.linkname = payload
                tar.addfile(info)
            elif kind == "data":
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
            else:
                info.size = os.path.getsize(payload)
                with open(payload, "rb") as handle:
                    tar.addfile(info, handle)
    return buffer.getvalue()


def image_config(diff_id, entrypoint, env=(PATH_ENV,), workdir="/"):
    return {"architecture": "amd64", "os": "linux", "created": "2025-12-04T00:00:00Z",
            "config": {"Entrypoint": list(entrypoint) if entrypoint else None, "Env": list(env), "WorkingDir": workdir},
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
            "history": [{"created": "2025-12-04T00:00:00Z", "created_by": "gpulab.mps tests/cluster/images.py"}]}


def write_archive(out, ref, tree, entrypoint=None, env=(PATH_ENV,)):
    """A docker-archive tar of one layer, tagged `ref`. Returns its layer's diff ID (sha256:...)."""
    layer = layer_bytes(tree)
    diff_id = "sha256:" + hashlib.sha256(layer).hexdigest()
    config = json.dumps(image_config(diff_id, entrypoint, env), sort_keys=True).encode()
    config_name = hashlib.sha256(config).hexdigest() + ".json"
    manifest = json.dumps([{"Config": config_name, "RepoTags": [ref], "Layers": ["layer/layer.tar"]}]).encode()
    with tarfile.open(out, "w") as tar:
        for name, data in (("layer/layer.tar", layer), (config_name, config), ("manifest.json", manifest)):
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), EPOCH, 0o644
            tar.addfile(info, io.BytesIO(data))
    return diff_id


# --- the lane's root filesystems ------------------------------------------------------------------------------

def busybox_tree(busybox="/bin/busybox"):
    """Static busybox with a link for every applet it has, in /usr/bin (Debian's merged /usr: /bin -> usr/bin)."""
    tree = Tree()
    real = os.path.realpath(busybox)
    tree.file("usr/bin/busybox", real, 0o755)
    for top in ("bin", "sbin", "lib", "lib64"):
        tree.symlink(top, "usr/" + top)
    tree.dir("usr/sbin")
    tree.dir("usr/lib")
    tree.dir("usr/lib64")
    applets = subprocess.run([real, "--list"], capture_output=True, text=True, timeout=30, check=True).stdout.split()
    for applet in applets:
        if applet != "busybox":
            tree.symlink("usr/bin/" + applet, "busybox")
    for path, mode in (("tmp", 0o1777), ("etc", 0o755), ("proc", 0o755), ("sys", 0o755), ("dev", 0o755),
                       ("run", 0o755), ("var/tmp", 0o1777), ("root", 0o700)):
        tree.dir(path, mode)
    tree.data("etc/passwd", "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n")
    tree.data("etc/group", "root:x:0:\nnogroup:x:65534:\n")
    return tree


PAUSE_SCRIPT = "#!/bin/sh\n# gpulab cluster lane: the pod sandbox; waits (and reaps) until killed\ntrap 'exit 0' TERM INT\n" \
               "while :; do sleep 3600 & wait; done\n"


def pause_tree(busybox="/bin/busybox"):
    tree = busybox_tree(busybox)
    tree.data("pause", PAUSE_SCRIPT, 0o755)
    return tree


def python_tree(python="/usr/bin/python3.11"):
    """Debian's python3 (not a pyenv or venv one: its prefix must be /usr), its standard library and the shared
    libraries of the interpreter and of its C modules."""
    real = os.path.realpath(python)
    version = re.match(r".*/python(\d+\.\d+)$", real)
    if not version or not real.startswith("/usr/bin/"):
        raise ImageError("%s is not Debian's /usr/bin/pythonX.Y (apt-get install python3)" % python)
    stdlib = "/usr/lib/python%s" % version.group(1)
    tree = Tree()
    elves = [real]
    tree.host_path(real)
    tree.symlink("usr/bin/python3", os.path.basename(real))
    tree.symlink("usr/bin/python", os.path.basename(real))
    for root, dirs, files in os.walk(stdlib):
        dirs[:] = sorted(d for d in dirs if not PYTHON_SKIP.search(os.path.join(root, d) + "/"))
        for name in sorted(files):
            path = os.path.join(root, name)
            if os.path.islink(path) or PYTHON_SKIP.search(path):
                continue
            tree.file(path, path)
            if name.endswith(".so"):
                elves.append(path)
    for library in shared_libraries(elves):
        tree.host_path(library)
    return tree


def tools_tree(standin_control, busybox="/bin/busybox", python="/usr/bin/python3.11", standin_client=None):
    tree = busybox_tree(busybox).merge(python_tree(python))
    tree.file("usr/local/bin/nvidia-cuda-mps-control", standin_control, 0o755)
    if standin_client:
        # The workload in place of CUDA (tests/standins/standin_cuda_client.py).
        tree.file("usr/local/bin/standin-cuda-client", standin_client, 0o755)
    return tree


NVIDIA_SMI_STANDIN = r"""#!/bin/sh
# gpulab.mps cluster lane: STAND-IN for nvidia-smi (there is no GPU; the NVIDIA runtime would inject the real one).
# The plugin's mps-control-daemon runs `nvidia-smi -i <uuid> -c EXCLUSIVE_PROCESS` at start and `-c DEFAULT` at stop:
# this answers as the real one does and changes nothing. Anything else: not supported here, exit 3.
echo "gpulab stand-in nvidia-smi: $*" >&2
gpu=all mode=
while [ $# -gt 0 ]; do
  case "$1" in
    -i|--id) gpu=$2; shift ;;
    -c|--compute-mode) mode=$2; shift ;;
  esac
  shift
done
if [ -n "$mode" ]; then
  echo "Set compute mode to $mode for GPU $gpu."
  echo "All done."
  exit 0
fi
echo "gpulab stand-in nvidia-smi: only -c is answered here" >&2
exit 3
"""


def device_plugin_tree(tools, binaries, nvml_library, nvml_profile_text, standin_gpus=None):
    """tools + the released plugin binaries in /usr/bin + the mock NVML as the node's driver library.
    binaries: {name in /usr/bin: host path}. standin_gpus: the GPU count the stand-in MPS daemon of the image sees
    (its knob file /etc/gpulab-standin/gpus: the plugin's mps-control-daemon starts it with the pipe and log
    directories only in its environment), like the mock NVML's; None leaves the stand-in's default (1)."""
    tree = Tree().merge(tools)
    if standin_gpus:
        tree.data("etc/gpulab-standin/gpus", "%d\n" % standin_gpus)
    elves = []
    for name, path in sorted(binaries.items()):
        tree.file("usr/bin/" + name, path, 0o755)
        elves.append(path)
    tree.file(MOCK_ROOT + "/usr/lib64/libnvidia-ml.so.1", nvml_library, 0o755)
    tree.data(MOCK_ROOT + "/config/config.yaml", nvml_profile_text)
    for library in shared_libraries(elves + [nvml_library]):
        tree.host_path(library)
    tree.symlink("usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1", MOCK_ROOT + "/usr/lib64/libnvidia-ml.so.1")
    tree.data("usr/bin/nvidia-smi", NVIDIA_SMI_STANDIN, 0o755)
    return tree


# --- the mock NVML's GPUs ----------------------------------------------------------------------------------------

MIB = 1 << 20


def mock_profile(base, gpus, memory_mib, name):
    """NVIDIA's mock NVML config (a dict, e.g. its HGX H100 profile) cut to `gpus` devices of `memory_mib` MiB each,
    named `name`, with UUIDs of their own (GPU-<memory MiB, 8 digits>-4c61-6e65-0000-<index, 12 digits>): the
    first devices keep their PCI addresses and minors, the NVLink switches (which name 8 GPUs) go, and the PCIe
    topology keeps only the devices that remain."""
    profile = copy.deepcopy(base)
    devices = sorted(profile.get("devices") or [], key=lambda d: d["index"])
    if len(devices) < gpus:
        raise ImageError("the mock NVML profile has %d devices, the lane needs %d" % (len(devices), gpus))
    kept = []
    for device in devices[:gpus]:
        device = dict(device)
        device["uuid"] = "GPU-%08d-4c61-6e65-0000-%012d" % (memory_mib, device["index"])
        device["serial"] = "15628210%05d" % device["index"]
        kept.append(device)
    profile["devices"] = kept
    defaults = profile.setdefault("device_defaults", {})
    defaults["name"] = name
    memory = defaults.setdefault("memory", {})
    reserved = int(memory.get("reserved_bytes") or 0)
    memory["total_bytes"] = memory_mib * MIB
    memory["free_bytes"] = memory_mib * MIB - reserved
    memory["used_bytes"] = 0
    if "system" in profile and "num_devices" in profile["system"]:
        profile["system"]["num_devices"] = gpus
    profile.pop("nvlink", None)
    buses = set(d.get("pci", {}).get("bus_id") for d in kept)
    topology = profile.get("pcie_topology")
    if topology and topology.get("root_complexes"):
        complexes = []
        for complex_ in topology["root_complexes"]:
            remaining = [b for b in complex_.get("devices") or [] if b in buses]
            if remaining:
                complexes.append(dict(complex_, devices=remaining))
        topology["root_complexes"] = complexes
    return profile


def mock_profile_text(base_text, gpus, memory_mib, name):
    import yaml
    header = "# gpulab.mps cluster lane: %d x %s, %d MiB each, from NVIDIA's mock NVML profile\n" % (
        gpus, name, memory_mib)
    return header + yaml.safe_dump(mock_profile(yaml.safe_load(base_text), gpus, memory_mib, name), sort_keys=False)
