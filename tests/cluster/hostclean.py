# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Is the host as the cluster lane found it? A snapshot before, one after, and their comparison.

The lane starts etcd, an API server, a kubelet and containerd on a shared machine; the kubelet changes kernel
settings, bind-mounts its root onto itself, makes cgroups and pod log directories; containerd and `ip netns` leave
mounts and directories in /run. `snapshot()` reads what the lane can touch; `compare()` (pure: tested on the CPU in
tests/unit/cluster/) says, one sentence each, what differs. Only differences count: what was there before the lane
(another engineer's netns, an older /run/netns) is left alone and is not reported.

What is read: the mount table (/proc/self/mountinfo: mount point, file system, source, root); the entries of the
directories the daemons write into (/run, /run/netns, /var/lib, /var/log, /etc, /opt); the top-level cgroups of
every hierarchy; the kernel settings the kubelet sets; the host's nftables ruleset (its digest, and its lines that
name the lane's addresses or chains); and processes: a process counts as the lane's when it is new and runs in the
lane's network namespace, in a kubepods cgroup, or names one of the lane's paths on its command line. The machine is
shared: a new file or firewall rule that is not of the lane's kind (LANE_NAME, LANE_NFT) is reported apart, as
another user's, and does not fail the check.
"""

from __future__ import annotations

import glob
import hashlib
import os
import re
import subprocess

# The kubelet sets these at start (kubelet/cm: setupKernelTunables) and never puts them back.
SYSCTLS = ("vm.overcommit_memory", "vm.panic_on_oom", "kernel.panic", "kernel.panic_on_oops",
           "kernel.keys.root_maxkeys", "kernel.keys.root_maxbytes")
# Directories whose entries are compared (new or missing names).
WATCHED_DIRS = ("/run", "/run/netns", "/var/lib", "/var/log", "/etc", "/opt", "/dev")
CGROUP_ROOT = "/sys/fs/cgroup"
# The machine is shared: another engineer's run may add /etc/gpulab-mps or start a Docker engine (its firewall
# rules) while the lane runs. A difference counts against the lane when it is of a kind the lane makes (a name of
# Kubernetes, containerd, CNI, netns, the NVIDIA plugin's paths; a firewall line with the lane's addresses or chains);
# every other difference is listed apart ("others") and does not fail the check.
LANE_NAME = re.compile(r"kube|containerd|cni|netns|cdi|nvidia|runc|crictl|etcd|xtables|gpulab-cluster-lane|"
                       r"^pods$|^containers$")
LANE_NFT = re.compile(r"gpulab|KUBE-|10\.96\.0\.|10\.123\.0\.|10\.124\.0\.")


def sysctl_path(name):
    return "/proc/sys/" + name.replace(".", "/")


def read_sysctls(names=SYSCTLS):
    values = {}
    for name in names:
        try:
            with open(sysctl_path(name)) as handle:
                values[name] = handle.read().strip()
        except OSError:
            values[name] = None
    return values


def parse_mountinfo(text):
    """[(mount point, file system type, source, root)] of /proc/self/mountinfo, in its order."""
    mounts = []
    for line in text.splitlines():
        if " - " not in line:
            continue
        left, right = line.split(" - ", 1)
        fields, tail = left.split(), right.split()
        if len(fields) < 5 or len(tail) < 2:
            continue
        mounts.append((_unescape(fields[4]), tail[0], _unescape(tail[1]), _unescape(fields[3])))
    return mounts


def _unescape(field):
    """mountinfo writes space, tab, newline and backslash as octal escapes (\\040 ...)."""
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and re.match(r"[0-7]{3}$", field[i + 1:i + 4]):
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def list_dir(path):
    try:
        return sorted(os.listdir(path))
    except OSError:
        return None


def cgroup_tops(root=CGROUP_ROOT):
    """{hierarchy directory: [its top-level child cgroups]} (cgroup v1 hierarchies and the unified one)."""
    tops = {}
    for hierarchy in sorted(glob.glob(os.path.join(root, "*"))):
        if os.path.isdir(hierarchy) and not os.path.islink(hierarchy):
            tops[hierarchy] = sorted(n for n in list_dir(hierarchy) or [] if os.path.isdir(os.path.join(hierarchy, n)))
    return tops


def _read(path, binary=False):
    try:
        with open(path, "rb" if binary else "r") as handle:
            return handle.read()
    except OSError:
        return None


def processes():
    """{pid: {"start": starttime, "cmdline": str, "netns": inode, "kubepods": bool}} of every process."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        stat = _read("/proc/%s/stat" % entry)
        if not stat:
            continue
        try:
            start = int(stat.rsplit(")", 1)[1].split()[19])
        except (IndexError, ValueError):
            continue
        cmdline = (_read("/proc/%s/cmdline" % entry, binary=True) or b"").replace(b"\0", b" ").decode(
            "utf-8", "replace").strip()
        try:
            netns = os.stat("/proc/%s/ns/net" % entry).st_ino
        except OSError:
            netns = None
        cgroup = _read("/proc/%s/cgroup" % entry) or ""
        found[int(entry)] = {"start": start, "cmdline": cmdline[:500], "netns": netns, "kubepods": "kubepods" in cgroup}
    return found


def nft_ruleset():
    """The host's `nft list ruleset` (None when nft is not there or may not read it): the lane's rules live in its
    netns, and so do the kubelet's."""
    try:
        proc = subprocess.run(["nft", "list", "ruleset"], capture_output=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout.decode("utf-8", "replace") if proc.returncode == 0 else None


def nft_summary(ruleset):
    """{"sha256": digest of the whole ruleset, "lane": [its lines that name the lane's addresses or chains]}."""
    if ruleset is None:
        return {"sha256": None, "lane": []}
    return {"sha256": hashlib.sha256(ruleset.encode()).hexdigest(),
            "lane": sorted(line.strip() for line in ruleset.splitlines() if LANE_NFT.search(line))}


def snapshot(with_processes=True):
    """What the lane could leave behind, as plain data (JSON-serialisable)."""
    return {
        "mounts": [list(m) for m in parse_mountinfo(_read("/proc/self/mountinfo") or "")],
        "dirs": dict((d, list_dir(d)) for d in WATCHED_DIRS),
        "cgroups": cgroup_tops(),
        "sysctls": read_sysctls(),
        "nft": nft_summary(nft_ruleset()),
        "processes": dict((str(pid), info) for pid, info in processes().items()) if with_processes else {},
    }


def lane_process(info, netns_inode, markers):
    """Whether a process belongs to the lane: in its netns, in a kubepods cgroup, or naming one of its paths."""
    if netns_inode is not None and info.get("netns") == netns_inode:
        return True
    if info.get("kubepods"):
        return True
    return any(marker and marker in (info.get("cmdline") or "") for marker in markers)


def lane_name(path):
    """Whether a file name is of the kind the lane (Kubernetes, containerd, CNI, ip netns) makes."""
    return bool(LANE_NAME.search(os.path.basename(path.rstrip("/")) or path))


def compare(before, after, netns_inode=None, markers=(), others=None):
    """Sentences, one per difference between two snapshots that the lane can have made; [] when the host is clean.

    markers: strings (paths, a socket) that only the lane's processes have on their command line.
    others: a list that receives the differences that are not of the lane's kind (LANE_NAME, LANE_NFT), if given:
    what another user of the machine changed meanwhile."""
    problems = []
    others = others if others is not None else []

    def dir_difference(path, names, sentence):
        for name in names:
            (problems if lane_name(path) or lane_name(name) else others).append(sentence % (path, name))

    old_mounts, new_mounts = list(map(tuple, before["mounts"])), list(map(tuple, after["mounts"]))
    for mount in new_mounts:
        if mount in old_mounts:
            old_mounts.remove(mount)
        else:
            problems.append("mount left: %s (%s from %s, root %s)" % mount)
    for mount in old_mounts:
        problems.append("mount gone that was there before: %s (%s from %s, root %s)" % mount)
    for path in sorted(set(before["dirs"]) | set(after["dirs"])):
        was, now = before["dirs"].get(path), after["dirs"].get(path)
        if was is None and now is not None:
            (problems if lane_name(path) else others).append(
                "%s exists now and did not before (holds %s)" % (path, ", ".join(now[:8]) or "nothing"))
        elif was is not None and now is None:
            (problems if lane_name(path) else others).append("%s is gone and was there before" % path)
        elif was is not None:
            dir_difference(path, sorted(set(now) - set(was)), "new in %s: %s")
            dir_difference(path, sorted(set(was) - set(now)), "gone from %s: %s")
    for hierarchy in sorted(set(before["cgroups"]) | set(after["cgroups"])):
        added = sorted(set(after["cgroups"].get(hierarchy) or []) - set(before["cgroups"].get(hierarchy) or []))
        if added:
            problems.append("cgroup left in %s: %s" % (hierarchy, ", ".join(added)))
    for name in sorted(before["sysctls"]):
        if before["sysctls"][name] != after["sysctls"].get(name):
            problems.append("sysctl %s is %s, was %s" % (name, after["sysctls"].get(name), before["sysctls"][name]))
    nft_before, nft_after = before.get("nft") or {}, after.get("nft") or {}
    for line in sorted(set(nft_after.get("lane") or []) - set(nft_before.get("lane") or [])):
        problems.append("the host's firewall has a rule of the lane's: %s" % line)
    if nft_before.get("sha256") != nft_after.get("sha256") and set(nft_after.get("lane") or []) <= set(
            nft_before.get("lane") or []):
        others.append("the host's nftables ruleset changed, with nothing of the lane's in it (sha256 %s, was %s)" % (
            (nft_after.get("sha256") or "none")[:12], (nft_before.get("sha256") or "none")[:12]))
    old = dict((pid, info["start"]) for pid, info in before["processes"].items())
    for pid, info in sorted(after["processes"].items(), key=lambda kv: int(kv[0])):
        if old.get(pid) == info["start"]:
            continue
        if lane_process(info, netns_inode, markers):
            problems.append("process left: pid %s %s" % (pid, info["cmdline"][:160]))
    return problems
