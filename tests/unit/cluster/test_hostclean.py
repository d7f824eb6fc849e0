# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""tests/cluster/hostclean.py: the comparison that says whether the cluster lane left the host as it found it.

The snapshots here are built by hand from what the lane's runs left before the teardown learned to remove it
(tests/cluster/FINDINGS.md, "What the teardown must undo"): the kubelet's self-bind-mount of /var/lib/kubelet, the
/run/netns self-mount of `ip netns add`, /var/log/pods, the kubepods cgroups, the kernel settings the kubelet sets.
"""

from __future__ import annotations

import copy
import json
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
sys.path.insert(0, os.path.join(ROOT, "tests", "cluster"))

import hostclean  # noqa: E402

# Two lines of this machine's /proc/self/mountinfo during a lane run (the second: `ip netns add` on a fresh /run).
MOUNTINFO = (
    "27 1 254:0 / / rw,relatime - ext4 /dev/vda rw,discard\n"
    "45 27 254:0 /run/netns /run/netns rw,relatime shared:1 - ext4 /dev/vda rw,discard\n"
    "46 45 0:4 net:[4026532296] /run/netns/gpulab-lane rw shared:1 - nsfs nsfs rw\n"
    "99 27 0:52 / /mnt/with\\040space rw - tmpfs tmpfs rw\n"
)

BEFORE = {
    "mounts": [["/", "ext4", "/dev/vda", "/"]],
    "dirs": {"/run": ["lock", "shm"], "/run/netns": None, "/var/lib": ["dpkg"], "/var/log": ["apt"]},
    "cgroups": {"/sys/fs/cgroup/cpu": ["user.slice"], "/sys/fs/cgroup/unified": []},
    "sysctls": {"vm.overcommit_memory": "0", "kernel.panic": "1", "kernel.panic_on_oops": "0"},
    "nft": {"sha256": "aaaa", "lane": []},
    "processes": {"1": {"start": 10, "cmdline": "/sbin/init", "netns": 111, "kubepods": False},
                  "500": {"start": 900, "cmdline": "python3 editor.py", "netns": 111, "kubepods": False}},
}
LANE_NETNS = 4026532296
MARKERS = ("/run/gpulab-cluster-lane", "/var/lib/gpulab-cluster-lane")


def after(**changes):
    snapshot = copy.deepcopy(BEFORE)
    for key, value in changes.items():
        snapshot[key] = value
    return snapshot


def test_parse_mountinfo():
    assert hostclean.parse_mountinfo(MOUNTINFO) == [
        ("/", "ext4", "/dev/vda", "/"),
        ("/run/netns", "ext4", "/dev/vda", "/run/netns"),
        ("/run/netns/gpulab-lane", "nsfs", "nsfs", "net:[4026532296]"),
        ("/mnt/with space", "tmpfs", "tmpfs", "/"),
    ]


def test_the_same_host_is_clean():
    assert hostclean.compare(BEFORE, copy.deepcopy(BEFORE), LANE_NETNS, MARKERS) == []


def test_a_mount_left_and_a_mount_gone_are_both_reported():
    problems = hostclean.compare(BEFORE, after(mounts=[["/var/lib/kubelet", "ext4", "/dev/vda", "/var/lib/kubelet"]]))
    assert problems == ["mount left: /var/lib/kubelet (ext4 from /dev/vda, root /var/lib/kubelet)",
                        "mount gone that was there before: / (ext4 from /dev/vda, root /)"]


def test_a_mount_counted_twice_needs_both_gone():
    """`ip netns add` on a fresh /run/netns can leave the self-mount twice (propagation): one left is one too many."""
    twice = [["/run/netns", "ext4", "/dev/vda", "/run/netns"]] * 2
    problems = hostclean.compare(after(mounts=BEFORE["mounts"] + twice[:1]), after(mounts=BEFORE["mounts"] + twice))
    assert problems == ["mount left: /run/netns (ext4 from /dev/vda, root /run/netns)"]


def test_directories_made_and_entries_added_or_removed():
    dirs = {"/run": ["containerd", "lock"], "/run/netns": ["cni-1234"], "/var/lib": ["dpkg", "kubelet"],
            "/var/log": ["apt", "pods"]}
    assert hostclean.compare(BEFORE, after(dirs=dirs)) == [
        "new in /run: containerd",
        "/run/netns exists now and did not before (holds cni-1234)",
        "new in /var/lib: kubelet",
        "new in /var/log: pods",
    ]


def test_what_another_user_changed_meanwhile_is_apart():
    """Seen 2026-12-04: another engineer's hostile-user tests made /etc/gpulab-mps during a lane run."""
    before = after(dirs=dict(BEFORE["dirs"], **{"/etc": ["hosts"]}))
    others = []
    problems = hostclean.compare(before, after(dirs={"/run": ["lock"], "/run/netns": None, "/var/lib": ["dpkg"],
                                                     "/var/log": None, "/etc": ["gpulab-mps", "hosts"]}),
                                 others=others)
    assert problems == []
    assert others == ["new in /etc: gpulab-mps", "gone from /run: shm", "/var/log is gone and was there before"]


def test_cgroups_sysctls_and_the_firewall():
    rule = "ip daddr 10.96.0.1 tcp dport 443 dnat to 10.123.0.1:6443"
    problems = hostclean.compare(BEFORE, after(
        cgroups={"/sys/fs/cgroup/cpu": ["kubepods", "user.slice"], "/sys/fs/cgroup/unified": ["kubepods.slice"]},
        sysctls={"vm.overcommit_memory": "1", "kernel.panic": "10", "kernel.panic_on_oops": "1"},
        nft={"sha256": "bbbb", "lane": [rule]}))
    assert problems == [
        "cgroup left in /sys/fs/cgroup/cpu: kubepods",
        "cgroup left in /sys/fs/cgroup/unified: kubepods.slice",
        "sysctl kernel.panic is 10, was 1",
        "sysctl kernel.panic_on_oops is 1, was 0",
        "sysctl vm.overcommit_memory is 1, was 0",
        "the host's firewall has a rule of the lane's: " + rule,
    ]


def test_a_firewall_changed_by_someone_else_is_apart():
    others = []
    assert hostclean.compare(BEFORE, after(nft={"sha256": "cccc", "lane": []}), others=others) == []
    assert others == ["the host's nftables ruleset changed, with nothing of the lane's in it (sha256 cccc, was aaaa)"]


def test_nft_summary_keeps_the_lanes_lines():
    ruleset = ("table ip filter {\n  chain DOCKER {\n  }\n}\ntable ip gpulab_lane {\n"
               "  chain output { ip daddr 10.96.0.1 tcp dport 443 dnat to 10.123.0.1:6443 }\n}\n")
    summary = hostclean.nft_summary(ruleset)
    assert summary["lane"] == ["chain output { ip daddr 10.96.0.1 tcp dport 443 dnat to 10.123.0.1:6443 }",
                               "table ip gpulab_lane {"]
    assert hostclean.nft_summary(None) == {"sha256": None, "lane": []}


@pytest.mark.parametrize("info, reported", [
    ({"start": 2000, "cmdline": "etcd --name lane", "netns": LANE_NETNS, "kubepods": False}, True),
    ({"start": 2000, "cmdline": "/pause", "netns": 777, "kubepods": True}, True),
    ({"start": 2000, "cmdline": "containerd-shim-runc-v2 -address /run/gpulab-cluster-lane/containerd/containerd.sock",
      "netns": 111, "kubepods": False}, True),
    ({"start": 2000, "cmdline": "vim notes.txt", "netns": 111, "kubepods": False}, False),   # another engineer's
])
def test_new_processes_count_only_when_they_are_the_lanes(info, reported):
    processes = dict(BEFORE["processes"], **{"4242": info})
    problems = hostclean.compare(BEFORE, after(processes=processes), LANE_NETNS, MARKERS)
    assert problems == (["process left: pid 4242 %s" % info["cmdline"]] if reported else [])


def test_a_reused_pid_is_a_new_process():
    reused = {"start": 3000, "cmdline": "/usr/bin/etcd", "netns": LANE_NETNS, "kubepods": False}
    processes = dict(BEFORE["processes"], **{"500": reused})
    assert hostclean.compare(BEFORE, after(processes=processes), LANE_NETNS, MARKERS) == [
        "process left: pid 500 /usr/bin/etcd"]


def test_a_process_that_was_there_before_is_never_the_lanes():
    processes = copy.deepcopy(BEFORE["processes"])
    processes["500"]["netns"] = LANE_NETNS        # same pid, same start time: it was there before the lane
    assert hostclean.compare(BEFORE, after(processes=processes), LANE_NETNS, MARKERS) == []


def test_a_snapshot_of_this_host_is_plain_data():
    snapshot = hostclean.snapshot()
    assert json.loads(json.dumps(snapshot)) == snapshot
    assert snapshot["mounts"] and all(len(m) == 4 for m in snapshot["mounts"])
    assert set(snapshot["sysctls"]) == set(hostclean.SYSCTLS)
    assert str(os.getpid()) in snapshot["processes"]
