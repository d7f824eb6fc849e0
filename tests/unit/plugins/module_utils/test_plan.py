# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The host's MPS plan (_plan): devices each once, exact limits, owner, paths; over the recorded H100's NVML."""

from __future__ import annotations

import pytest

from ansible_collections.gpulab.mps.plugins.module_utils import _plan

G, M = 1 << 30, 1 << 20
UUID0 = "GPU-058fcf08-fc4a-49f5-ddd9-6d7fedc642b2"
UUID1 = "GPU-058fcf08-fc4a-49f5-ddd9-6d7fedc6c743"
H100 = {"name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0", "memory_total_mib": 81559,
        "memory_total_bytes": 85520809984, "mps_client_cap": 48, "compute_mode": "default",
        "mig_mode_current": "disabled"}
GPUS = [dict(H100, index=0, uuid=UUID0), dict(H100, index=1, uuid=UUID1)]
DRIVER = {"driver_version": "580.159.04", "driver_branch": 580, "cuda_driver_version": "13.0"}
# The Kubernetes stages run on this host (gpulab_kubernetes true): the device plugin counts replicas against its daemon.
SETTINGS = {"pipe_directory": "/tmp/nvidia-mps", "log_directory": "/var/log/nvidia-mps", "state_directory": "/var/lib/gpulab-mps",
            "control_binary": "/usr/local/nvidia/bin/nvidia-cuda-mps-control", "kubernetes": "true"}


def test_the_same_gpu_named_twice_in_visible_devices_is_refused():
    """Regression: ["0", "GPU-<uuid of 0>"] gave CUDA_VISIBLE_DEVICES=U0,U0, and a limit on ordinal 1, which does
    not exist (the CLI takes unknown ordinals silently)."""
    daemon, errors = _plan.daemon_plan(GPUS, ["0", UUID0], None, "2G")
    assert errors == ["visible_devices names GPU 0 twice (as 0 and %s): give each GPU once" % UUID0]
    assert daemon["visible_devices"] == [UUID0]
    assert daemon["pinned_memory_limit"] == {"0": 2 * G}


def test_one_gpu_by_index_and_by_uuid_with_two_sizes_is_refused():
    """Regression: the same GPU named by index and by UUID with different limits silently took one of them."""
    errors = _plan.daemon_plan(GPUS, None, None, {"0": "2G", UUID0: "4G"})[1]
    assert errors == ["default_pinned_memory_limit names GPU 0 twice with different sizes (2G as 0, 4G as %s): give "
                      "each GPU one size" % UUID0]
    daemon, errors = _plan.daemon_plan(GPUS, None, None, {"0": "2G", UUID0: "2G"})
    assert errors == [] and daemon["pinned_memory_limit"] == {"0": 2 * G}


def test_a_limit_above_the_gpu_memory_is_refused():
    errors = _plan.daemon_plan(GPUS, None, None, "99999G")[1]
    assert errors == ["default_pinned_memory_limit for GPU 0: 99999G is more than the 81559 MiB it has",
                      "default_pinned_memory_limit for GPU 1: 99999G is more than the 81559 MiB it has"]
    assert _plan.daemon_plan(GPUS, None, None, "999999999999T")[1]


def test_one_size_for_every_gpu_and_one_exception():
    daemon, errors = _plan.daemon_plan(GPUS, None, 50, {"*": "20G", UUID1: "1536M"})
    assert errors == []
    assert daemon["pinned_memory_limit"] == {"0": 20 * G, "1": 1536 * M}
    assert _plan.mps_sizes(daemon) == {"0": "20G", "1": "1536M"}
    assert daemon["active_thread_percentage"] == 50.0


def test_the_plan_of_a_host():
    plan = _plan.build_plan(DRIVER, GPUS, dict(SETTINGS, visible_devices=["1"], default_pinned_memory_limit="2G",
                                               systemd_running=True, sharing={"mode": "aggregate", "replicas": 4}))
    assert plan["version"] == _plan.PLAN_VERSION and plan["owner"] == "host"
    daemon = plan["daemon"]
    assert (daemon["state"], daemon["service_manager"]) == ("started", "systemd")
    assert daemon["visible_devices"] == [UUID1] and daemon["devices"] == {"0": UUID1}
    assert daemon["pinned_memory_limit"] == {"0": 2 * G} and daemon["pinned_memory_limit_mps"] == {"0": "2G"}
    assert daemon["environment"] == {"CUDA_MPS_PIPE_DIRECTORY": "/tmp/nvidia-mps",
                                     "CUDA_MPS_LOG_DIRECTORY": "/var/log/nvidia-mps", "CUDA_VISIBLE_DEVICES": UUID1}
    assert plan["sharing"]["resources"] == {"nvidia.com/gpu": 8}
    assert plan["sharing"]["settings"] == {"mode": "aggregate", "replicas": 4, "replicas_per_gpu": {},
                                           "name_pattern": "gpu%d"}
    assert [g["memory_per_replica_mib"] for g in plan["sharing"]["gpus"]] == [81559 // 4] * 2
    assert _plan.plan_problems(plan) == []


@pytest.mark.parametrize("host_state, daemon_state", [("started", "stopped"), ("stopped", "stopped"),
                                                      ("absent", "absent")])
def test_the_plugin_owner_keeps_the_host_daemon_stopped(host_state, daemon_state):
    """Regression: with owner plugin every run started the host daemon, tested it and stopped it again."""
    plan = _plan.build_plan(DRIVER, GPUS, dict(SETTINGS, owner="plugin", host_state=host_state))
    assert plan["daemon"]["state"] == daemon_state


@pytest.mark.parametrize("settings, message", [
    ({"pipe_directory": "nvidia-mps"}, "pipe_directory must be an absolute path, got 'nvidia-mps'"),
    ({"pipe_directory": "/tmp/my mps"}, "holds characters that a systemd unit"),
    ({"log_directory": "/var/log/mps;rm"}, "holds characters that a systemd unit"),
    ({"default_active_thread_percentage": True}, "must be a number between 1 and 100, got True"),
    ({"default_active_thread_percentage": 150}, "must be between 1 and 100, got 150"),
    ({"owner": "both"}, "gpulab_mps_owner must be one of host, plugin, got 'both'"),
    ({"sharing": {"replicas": 1}}, "device plugin: replicas for GPU 0"),
    ({"sharing": {"replicas": 64}}, "above the MPS client cap of 48"),
])
def test_bad_settings_are_all_named(settings, message):
    with pytest.raises(_plan.PlanError) as raised:
        _plan.build_plan(DRIVER, GPUS, dict(SETTINGS, **settings))
    assert any(message in e for e in raised.value.errors), raised.value.errors


def test_paths_are_normalised():
    plan = _plan.build_plan(DRIVER, GPUS, dict(SETTINGS, pipe_directory="/tmp//nvidia-mps/./", log_directory="/var/log/x/.."))
    assert (plan["pipe_directory"], plan["log_directory"]) == ("/tmp/nvidia-mps", "/var/log")


def test_host_problems():
    assert _plan.host_problems(DRIVER, GPUS, "550") == []
    assert _plan.host_problems(DRIVER, GPUS, "590")[0].startswith("NVIDIA driver 580.159.04 is older than 590")
    assert "NVML lists no GPU" in _plan.host_problems(DRIVER, [], "550")[0]
    blocked = [dict(GPUS[0], compute_mode="prohibited")]
    assert "GPU(s) 0 are in a compute mode in which MPS cannot run" in _plan.host_problems(DRIVER, blocked, "550")[0]


def test_a_plan_of_another_version_is_refused():
    assert _plan.plan_problems({"version": 0, "owner": "host", "control_binary": "/x", "pipe_directory": "/p", "state_directory": "/s",
                                "log_directory": "/l", "daemon": {}})[0].startswith("plan is of version 0")
    assert _plan.plan_problems("no")[0].startswith("plan must be the preflight_mps_plan fact")


# --- the replicas' share on the host daemon (owner host, device plugin planned) -----------------------------------

# The H200 of the lent GPU machine (MPS-FACTS, 2026-12-02): 143771 MiB; a daemon with 7188M took a 7000 MiB client
# and refused an 8000 MiB one; the CLI read the limit back as 7G.
H200 = {"index": 0, "uuid": "GPU-3a1b8d4e-0000-0000-0000-000000000000", "name": "NVIDIA H200",
        "compute_capability": "9.0", "memory_total_mib": 143771, "memory_total_bytes": 143771 * M + 524288,
        "mps_client_cap": 48, "compute_mode": "default", "mig_mode_current": "disabled"}


def test_owner_host_gives_the_host_daemon_the_replicas_share():
    """Regression: with owner host nothing set the host daemon's pinned limit, so a pod holding 1 of 20 replicas
    could take the whole GPU, while the device plugin's verify step promised 20 replicas of 7188 MiB."""
    plan = _plan.build_plan(DRIVER, [H200], dict(SETTINGS, sharing={"mode": "aggregate", "replicas": 20}))
    daemon = plan["daemon"]
    assert daemon["pinned_memory_limit"] == {"0": 7188 * M}
    assert daemon["pinned_memory_limit_mps"] == {"0": "7188M"}
    assert daemon["active_thread_percentage"] == 5.0
    assert daemon["replica_limits"] == {"mode": "memory_and_threads", "pinned_memory_limit": {"0": 7188 * M},
                                        "active_thread_percentage": 5.0}
    assert plan["sharing"]["gpus"][0]["memory_per_replica_mib"] == 7188
    assert plan["warnings"] == []


def test_replica_limits_memory_only_leaves_the_threads():
    plan = _plan.build_plan(DRIVER, [H200], dict(SETTINGS, replica_limits="memory", sharing={"replicas": 20}))
    assert plan["daemon"]["pinned_memory_limit"] == {"0": 7188 * M}
    assert plan["daemon"]["active_thread_percentage"] is None


@pytest.mark.parametrize("settings", [
    {"replica_limits": "none", "sharing": {"replicas": 20}},
    {"owner": "plugin", "sharing": {"replicas": 20}},   # the plugin's own daemon sets them; the host's is stopped
    {},                                                 # no device plugin planned (gpulab_device_plugin false)
])
def test_no_replica_limits(settings):
    plan = _plan.build_plan(DRIVER, [H200], dict(SETTINGS, **settings))
    assert plan["daemon"]["pinned_memory_limit"] == {} and plan["daemon"]["active_thread_percentage"] is None
    assert plan["daemon"]["replica_limits"] is None


def test_an_explicit_limit_wins_and_the_mismatch_is_reported():
    plan = _plan.build_plan(DRIVER, [H200], dict(SETTINGS, default_pinned_memory_limit="20G",
                                                 default_active_thread_percentage=50, sharing={"replicas": 20}))
    assert plan["daemon"]["pinned_memory_limit"] == {"0": 20 * G}
    assert plan["daemon"]["active_thread_percentage"] == 50.0
    assert plan["daemon"]["replica_limits"]["pinned_memory_limit"] == {"0": 7188 * M}
    assert plan["warnings"] == [
        "default_pinned_memory_limit gives GPU 0 20G per client, but the device plugin shares it among 20 replicas of "
        "7188 MiB: the replicas together may ask more than the GPU has. Remove mps_host_default_pinned_memory_limit "
        "to take the replicas' share, or set it to 7188M",
        "default_active_thread_percentage is 50, but 20 replicas per GPU give each 5 %: remove "
        "mps_host_default_active_thread_percentage to take the replicas' share, or set mps_host_replica_limits: memory"]


def test_an_explicit_limit_equal_to_the_share_is_no_mismatch():
    plan = _plan.build_plan(DRIVER, [H200], dict(SETTINGS, default_pinned_memory_limit="7188M",
                                                 sharing={"replicas": 20}))
    assert plan["warnings"] == [] and plan["daemon"]["pinned_memory_limit"] == {"0": 7188 * M}


def test_per_gpu_replicas_with_the_host_daemon_are_refused_by_the_plan():
    """Per-GPU replica counts need mode individual, which registers nothing with owner host (seen on an H200):
    the plan says so before anything is installed."""
    with pytest.raises(_plan.PlanError) as raised:
        _plan.build_plan(DRIVER, GPUS, dict(SETTINGS, sharing={"mode": "individual", "replicas": 4,
                                                               "replicas_per_gpu": {"1": 8}}))
    assert len(raised.value.errors) == 1 and "cannot work with owner host" in raised.value.errors[0]


def test_replica_limits_follow_the_daemon_ordinals():
    """With visible_devices the daemon numbers its devices by position: GPU 1 is its device 0."""
    plan = _plan.build_plan(DRIVER, GPUS, dict(SETTINGS, visible_devices=["1"], sharing={"replicas": 4}))
    assert plan["daemon"]["pinned_memory_limit"] == {"0": (81559 // 4) * M}
    assert plan["warnings"] == ["GPU 0 is shared by the device plugin (4 replicas) but is not one of the host "
                                "daemon's visible_devices: its pods get no MPS and no memory limit"]


def test_a_bad_replica_limits_value_is_named():
    with pytest.raises(_plan.PlanError) as raised:
        _plan.build_plan(DRIVER, [H200], dict(SETTINGS, replica_limits="all"))
    assert raised.value.errors == ["mps_host_replica_limits must be one of auto, memory_and_threads, memory, none, got "
                                   "'all'"]


@pytest.mark.parametrize("defaults, gaps", [
    # the CLI reads 7188M back as 7G (whole units, rounded down); mps_daemon's record gives the exact 7188M
    ({"active_thread_percentage": 5.0, "pinned_memory_limit": {"0": "7G"}}, []),
    ({"active_thread_percentage": 5.0, "pinned_memory_limit": {"0": "7188M"}}, []),
    ({"active_thread_percentage": 100.0, "pinned_memory_limit": {"0": None}},
     ["the host MPS daemon's default active thread percentage is 100, the plan asks 5",
      "the host MPS daemon's default pinned memory limit of device 0 is unset, the plan asks 7188M"]),
    ({"active_thread_percentage": 5.0, "pinned_memory_limit": {"0": "140G"}},
     ["the host MPS daemon's default pinned memory limit of device 0 is 140G, the plan asks 7188M"]),
])
def test_defaults_gaps(defaults, gaps):
    plan = _plan.build_plan(DRIVER, [H200], dict(SETTINGS, sharing={"replicas": 20}))
    assert _plan.defaults_gaps(plan["daemon"], defaults) == gaps


# --- replica limits only where replicas are counted (issue 21) -------------------------------------------------

@pytest.mark.parametrize("kubernetes, target, socket, enabled", [
    ("auto", "kind", False, False), ("auto", "kind", True, True), ("auto", "existing", False, True),
    ("true", "kind", False, True), ("false", "existing", True, False), ("True", "kind", False, True),
])
def test_the_kubernetes_decision_is_the_plans(kubernetes, target, socket, enabled):
    decided, error = _plan.kubernetes_decision(kubernetes, target, socket)
    assert error is None and decided["enabled"] is enabled and decided["reason"]


def test_a_lab_without_kubernetes_gives_the_daemon_no_replica_share():
    """Regression (issue 21): on the H200 without Docker, make lab left the daemon at 25 % threads and a 35G pinned
    limit, a share of 4 replicas that nothing counted: MPS ran 2.4 times slower than time-slicing."""
    plan = _plan.build_plan(DRIVER, [H200], dict(SETTINGS, kubernetes="auto", docker_socket=False,
                                                 sharing={"replicas": 4}))
    daemon = plan["daemon"]
    assert daemon["replica_limits"] is None
    assert (daemon["active_thread_percentage"], daemon["pinned_memory_limit"]) == (None, {})
    assert daemon["limits_rule"].startswith("No replica limits: nothing counts replicas against this host's daemon, "
                                            "since the Kubernetes stages do not run here (no Docker engine answers")
    assert daemon["limits_rule"].endswith("The daemon gets no default limits: each client may use every SM and all "
                                          "the memory of its GPU.")
    assert plan["kubernetes"] == {"enabled": False, "target": "kind", "reason": "no Docker engine answers here "
                                  "(gpulab_kubernetes auto, no /var/run/docker.sock)"}


def test_explicit_defaults_stand_where_replicas_are_not_counted():
    plan = _plan.build_plan(DRIVER, [H200], dict(SETTINGS, kubernetes="false", sharing={"replicas": 4},
                                                 default_pinned_memory_limit="20G"))
    assert plan["daemon"]["pinned_memory_limit"] == {"0": 20 * G} and plan["daemon"]["replica_limits"] is None
    assert plan["daemon"]["limits_rule"].endswith("The daemon's defaults: pinned memory 20G on device 0 per client; "
                                                  "every SM.")


def test_the_user_may_ask_for_the_replicas_share_anyway():
    plan = _plan.build_plan(DRIVER, [H200], dict(SETTINGS, kubernetes="false", replica_limits="memory_and_threads",
                                                 sharing={"replicas": 20}))
    assert plan["daemon"]["pinned_memory_limit"] == {"0": 7188 * M}
    assert plan["daemon"]["active_thread_percentage"] == 5.0
    assert "as mps_host_replica_limits says" in plan["daemon"]["limits_rule"]
    assert "although no device plugin counts them here" in plan["daemon"]["limits_rule"]


def test_where_the_plugin_counts_replicas_the_rule_says_so():
    plan = _plan.build_plan(DRIVER, [H200], dict(SETTINGS, kubernetes="auto", docker_socket=True,
                                                 sharing={"replicas": 20}))
    assert plan["daemon"]["pinned_memory_limit"] == {"0": 7188 * M}
    assert plan["daemon"]["limits_rule"].startswith(
        "Replica limits: the device plugin counts 20 replicas per GPU against this host's daemon (owner host, and the "
        "Kubernetes stages run here: a Docker engine's socket is here for a Kind cluster)")
    assert "pinned memory 7188M on device 0 per client; 5 % of the SMs per client." in plan["daemon"]["limits_rule"]


@pytest.mark.parametrize("multiuser, says", [(True, "one multi-user server (-M)"), (False, "waits, silently")])
def test_the_plan_says_what_a_second_user_gets(multiuser, says):
    plan = _plan.build_plan(DRIVER, [H200], dict(SETTINGS, multiuser_server=multiuser))
    assert plan["daemon"]["multiuser_server"] is multiuser and says in plan["daemon"]["users_rule"]
