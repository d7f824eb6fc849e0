# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""tests/gpu/device_plugin without a GPU: the kubelet stand-in, the guard nvidia-smi and the scenarios' expectations.

The stand-in is checked here against a device plugin served in another process with the same run-time messages
(built from TRANSCRIPTION below: the parts of k8s.io/kubelet deviceplugin v1beta1 api.proto the kubelet uses, field
numbers as in that file at k8s-device-plugin v0.20.0). Against the real Go side of the API it was checked on
2026-12-03 (docs/evidence/2026-12-03-h200-device-plugin.md), and on the GPU host the lane parses the real api.proto
given in its --bin folder.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
LANE_DIR = os.path.join(ROOT, "tests", "gpu", "device_plugin")
sys.path.insert(0, LANE_DIR)

import kubelet_standin as ks  # noqa: E402
import lane  # noqa: E402

from ansible_collections.gpulab.mps.plugins.module_utils import _device_plugin as dp  # noqa: E402
from ansible_collections.gpulab.mps.plugins.module_utils import _plan  # noqa: E402

TRANSCRIPTION = textwrap.dedent("""
    // The kubelet's part of the device plugin API v1beta1 (our transcription, for tests without the source).
    syntax = "proto3";
    package v1beta1;
    option go_package = "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1";
    service Registration { rpc Register(RegisterRequest) returns (Empty) {} }
    message DevicePluginOptions { bool pre_start_required = 1; bool get_preferred_allocation_available = 2; }
    message RegisterRequest { string version = 1; string endpoint = 2; string resource_name = 3;
                              DevicePluginOptions options = 4; }
    message Empty { }
    service DevicePlugin {
        rpc GetDevicePluginOptions(Empty) returns (DevicePluginOptions) {}
        rpc ListAndWatch(Empty) returns (stream ListAndWatchResponse) {}
        rpc Allocate(AllocateRequest) returns (AllocateResponse) {}
    }
    message ListAndWatchResponse { repeated Device devices = 1; }
    message TopologyInfo { repeated NUMANode nodes = 1; }
    message NUMANode { int64 ID = 1; }
    /* a block comment, as api.proto has */
    message Device { string ID = 1; string health = 2; TopologyInfo topology = 3; }
    message AllocateRequest { repeated ContainerAllocateRequest container_requests = 1; }
    message ContainerAllocateRequest { repeated string devices_ids = 1; }
    message CDIDevice { string name = 1; }
    message AllocateResponse { repeated ContainerAllocateResponse container_responses = 1; }
    message ContainerAllocateResponse { map<string, string> envs = 1; repeated Mount mounts = 2;
        repeated DeviceSpec devices = 3; map<string, string> annotations = 4; repeated CDIDevice cdi_devices = 5; }
    message Mount { string container_path = 1; string host_path = 2; bool read_only = 3; }
    message DeviceSpec { string container_path = 1; string host_path = 2; string permissions = 3; }
""")

# A device plugin in its own process: registers, sends 20 devices, answers Allocate, refuses 2 devices.
FAKE_PLUGIN = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, %(lane)r)
    import grpc, kubelet_standin as ks
    api = ks.Api(open(%(proto)r).read())
    def law(request, context):
        yield api.messages["ListAndWatchResponse"](devices=[api.messages["Device"](ID="GPU-x::%%d" %% i, health="Healthy")
                                                           for i in range(20)])
        while context.is_active():
            time.sleep(0.1)
    def allocate(request, context):
        out = api.messages["AllocateResponse"]()
        for c in request.container_requests:
            if len(c.devices_ids) > 1:
                context.abort(grpc.StatusCode.UNKNOWN, "maximum request size for shared resources is 1; found %%d"
                              %% len(c.devices_ids))
            r = out.container_responses.add()
            r.envs["CUDA_MPS_PIPE_DIRECTORY"] = "/mps/nvidia.com/gpu/pipe"
            r.mounts.add(container_path="/mps/nvidia.com/gpu/pipe", host_path="/run/nvidia/mps/nvidia.com/gpu/pipe")
        return out
    def options(request, context):
        return api.messages["DevicePluginOptions"](get_preferred_allocation_available=True)
    server = ks.serve_plugin(api, %(socket)r, {"ListAndWatch": law, "Allocate": allocate,
                                               "GetDevicePluginOptions": options})
    ks.register(api, %(kubelet)r, "fake.sock", "nvidia.com/gpu")
    sys.stdin.read()
    server.stop(0)
""")


@pytest.fixture
def api():
    return ks.Api(TRANSCRIPTION)


def test_the_parser_reads_messages_maps_and_streams(api):
    parsed = api.parsed
    assert parsed["package"] == "v1beta1"
    envs = [f for f in parsed["messages"]["ContainerAllocateResponse"] if f["name"] == "envs"][0]
    assert envs == {"name": "envs", "number": 1, "type": "map", "repeated": True, "map": ("string", "string")}
    assert api.rpc("DevicePlugin", "ListAndWatch")[0] == "/v1beta1.DevicePlugin/ListAndWatch"
    assert api.rpc("DevicePlugin", "ListAndWatch")[3] is True
    message = api.messages["ContainerAllocateResponse"]()
    message.envs["A"] = "b"
    message.mounts.add(container_path="/c", host_path="/h", read_only=True)
    again = api.messages["ContainerAllocateResponse"].FromString(message.SerializeToString())
    assert api.to_dict(again) == {"envs": {"A": "b"}, "mounts": [{"container_path": "/c", "host_path": "/h",
                                                                  "read_only": True}]}


def test_the_wire_format_is_the_field_numbers():
    """Field 3 of RegisterRequest is resource_name: the bytes a Go plugin sends decode to it (0x1a = field 3)."""
    api = ks.Api(TRANSCRIPTION)
    request = api.messages["RegisterRequest"].FromString(b"\x0a\x07v1beta1\x12\x0fnvidia-gpu.sock\x1a\x0envidia.com/gpu")
    assert api.to_dict(request) == {"version": "v1beta1", "endpoint": "nvidia-gpu.sock", "resource_name": "nvidia.com/gpu"}


@pytest.mark.parametrize("text, message", [
    ("message A { string x = 1 }", "expected ';'"),
    ("enum E { A = 0; }", "unexpected 'enum'"),
    ("message A { Missing x = 1; }", "unknown type 'Missing'"),
])
def test_the_parser_refuses_what_it_does_not_read(text, message):
    with pytest.raises(ks.ProtoError, match=message):
        ks.Api(text)


def test_compare_protos_names_a_renumbered_field(api):
    other = ks.parse_proto(TRANSCRIPTION.replace("string resource_name = 3", "string resource_name = 5"))
    assert ks.compare_protos(api.parsed, other) == [
        "RegisterRequest.resource_name differs: %r vs %r" % (
            {"name": "resource_name", "number": 3, "type": "string", "repeated": False, "map": None},
            {"name": "resource_name", "number": 5, "type": "string", "repeated": False, "map": None})]
    assert ks.compare_protos(api.parsed, api.parsed) == []


def test_the_standin_registers_lists_and_allocates_against_a_plugin_process(api, tmp_path):
    proto = tmp_path / "api.proto"
    proto.write_text(TRANSCRIPTION)
    sockets = tmp_path / "sockets"
    sockets.mkdir()
    kubelet = ks.KubeletStandin(api, str(sockets)).start()
    script = FAKE_PLUGIN % {"lane": LANE_DIR, "proto": str(proto), "socket": str(sockets / "fake.sock"),
                            "kubelet": kubelet.socket}
    plugin = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        registration = kubelet.wait_for("nvidia.com/gpu", 30)
        assert registration is not None, plugin.stderr.read1() if plugin.poll() is not None else "no registration"
        assert (registration["version"], registration["endpoint"]) == ("v1beta1", "fake.sock")
        assert kubelet.wait_for("nvidia.com/gpu0", 0.2) is None
        client = kubelet.plugin(registration)
        assert client.options() == {"get_preferred_allocation_available": True}
        devices, updates = client.list_and_watch(timeout=10, until=lambda d: len(d) >= 20)
        assert (len(devices), updates, devices[0]) == (20, 1, {"ID": "GPU-x::0", "health": "Healthy"})
        responses, error = client.allocate([["GPU-x::0"]])
        assert error is None and responses == [{
            "envs": {"CUDA_MPS_PIPE_DIRECTORY": "/mps/nvidia.com/gpu/pipe"},
            "mounts": [{"container_path": "/mps/nvidia.com/gpu/pipe", "host_path": "/run/nvidia/mps/nvidia.com/gpu/pipe"}]}]
        refused, refusal = client.allocate([["GPU-x::0", "GPU-x::1"]])
        assert refused is None and refusal == "UNKNOWN: maximum request size for shared resources is 1; found 2"
        client.close()
        kubelet.reset()
        assert kubelet.registrations == [] and kubelet.wait_for("nvidia.com/gpu", 0.2) is None
    finally:
        plugin.stdin.close()
        plugin.wait(timeout=30)
        kubelet.stop()
    assert not os.path.exists(kubelet.socket), "the stand-in removes its socket"


def test_remove_socket_removes_only_sockets(tmp_path):
    regular = tmp_path / "kubelet.sock"
    regular.write_text("not a socket")
    ks.remove_socket(str(regular))
    assert regular.exists()


# --- the guard nvidia-smi ------------------------------------------------------------------------------------------

@pytest.fixture
def guard(tmp_path):
    real = tmp_path / "real-nvidia-smi"
    real.write_text("#!/bin/sh\necho \"real: $*\"\n")
    real.chmod(0o755)
    log = tmp_path / "guard.jsonl"
    script = tmp_path / "nvidia-smi"
    script.write_text(lane.guard_script(str(real), str(log)))
    script.chmod(0o755)
    return script, log


@pytest.mark.parametrize("argv", [
    ["-i", "GPU-3a1b8d4e", "-c", "EXCLUSIVE_PROCESS"],    # what mps-control-daemon runs at start
    ["-i", "GPU-3a1b8d4e", "-c", "DEFAULT"],              # and at stop
    ["--compute-mode=DEFAULT"], ["-pm", "1"], ["-pl", "300"], ["-mig", "1"], ["-r"], ["-lgc", "1000,1500"],
])
def test_the_guard_refuses_what_changes_the_gpu_and_logs_it(guard, argv):
    script, log = guard
    proc = subprocess.run([str(script)] + argv, capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode == 0, "the daemon aborts when nvidia-smi fails: the guard must not fail"
    assert "real:" not in proc.stdout and "gpulab guard: refused" in proc.stderr
    (entry,) = [json.loads(line) for line in log.read_text().splitlines()]
    assert entry["argv"] == argv


@pytest.mark.parametrize("argv", [["--query-gpu=index,uuid,compute_mode", "--format=csv,noheader"], ["-L"], ["-q"]])
def test_the_guard_passes_queries_to_the_real_nvidia_smi(guard, argv):
    script, log = guard
    proc = subprocess.run([str(script)] + argv, capture_output=True, text=True, timeout=30, check=False)
    assert proc.stdout == "real: %s\n" % " ".join(argv) and not log.exists()


# --- the scenarios: the collection's configs and what must be seen -------------------------------------------------

H200 = {"index": 0, "uuid": "GPU-3a1b8d4e-0000-0000-0000-000000000000", "name": "NVIDIA H200", "compute_capability": "9.0",
        "memory_total_mib": 143771, "memory_total_bytes": 143771 << 20, "mps_client_cap": 48, "compute_mode": "default",
        "mig_mode_current": "disabled"}
DRIVER = {"driver_version": "580.159.04", "driver_branch": 580, "cuda_driver_version": "13.0"}


def scenario(name):
    return lane.scenario(name, DRIVER, [H200], 20, dp, _plan, "/tmp/gpulab-dp-lane/host-pipe")


def test_every_scenario_is_planned():
    assert [scenario(n)["name"] for n in lane.SCENARIOS] == list(lane.SCENARIOS)


def test_upstream_aggregate_plugin():
    s = scenario("upstream-aggregate-plugin")
    assert s["config"]["sharing"]["mps"]["resources"] == [{"name": "nvidia.com/gpu", "replicas": 20}]
    assert s["expect"] == {"resources": {"nvidia.com/gpu": 20}, "share_mib": 7188, "two_replicas": "refused",
                           "alloc_ok": {7000: True, 8000: False}, "pipe_env": True}
    assert s["host_daemon"] is None


@pytest.mark.parametrize("name, resource", [("upstream-aggregate-host", "nvidia.com/gpu")])
def test_owner_host_scenarios_run_the_host_daemon_with_the_plans_share(name, resource):
    s = scenario(name)
    assert s["host_daemon"]["pinned_memory_limit_mps"] == {"0": "7188M"}
    assert s["host_daemon"]["active_thread_percentage"] == 5.0
    assert "timeSlicing" in s["config"]["sharing"] and s["expect"]["resources"] == {resource: 20}
    assert s["expect"]["pipe_env"] is False and s["expect"]["two_replicas"] == "refused"


def test_fork_individual_plugin_renders_the_replica_share():
    s = scenario("fork-individual-plugin")
    assert s["config"]["individualGPU"]["gpuConfigs"][0]["mps"]["pinnedMemoryLimit"] == 7188
    assert s["expect"]["alloc_ok"] == {7000: True, 8000: False}
    assert s["expect"]["two_replicas"] == "accepted"  # the fork's fault, recorded as such


def test_the_seed_config_reproduces_the_total_memory_fault():
    s = scenario("fork-individual-plugin-seed-config")
    assert "pinnedMemoryLimit" not in s["config"]["individualGPU"]["gpuConfigs"][0]["mps"]
    assert s["expect"]["alloc_ok"] == {7000: True, 8000: True}


def test_the_rename_scenario_expects_upstream_to_drop_the_per_gpu_names():
    s = scenario("upstream-per-gpu-rename-host")
    assert s["config"]["sharing"]["timeSlicing"]["resources"] == [
        {"name": "nvidia.com/gpu", "rename": "nvidia.com/gpu0", "devices": [0], "replicas": 20}]
    assert s["expect"]["resources"] == {"nvidia.com/gpu": 20} and s["expect"]["alloc_ok"] == {}


def test_the_lane_refuses_to_run_as_another_user(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    args = type("Args", (), {"out": str(tmp_path), "bin": str(tmp_path), "replicas": 20, "only": None})()
    with pytest.raises(SystemExit, match="as root"):
        lane.Lane(args).setup()


# --- several GPUs (issue 15) -----------------------------------------------------------------------------------

FOUR = [{"index": i, "uuid": "GPU-%d-uuid" % i} for i in range(4)]


def test_devices_per_gpu_counts_each_gpus_replicas():
    ids = ["GPU-%d-uuid::%d" % (g, r) for g in range(4) for r in range(20 if g == 0 else 4)] + ["strange"]
    assert lane.devices_per_gpu(ids, FOUR) == {"GPU-0-uuid": 20, "GPU-1-uuid": 4, "GPU-2-uuid": 4, "GPU-3-uuid": 4,
                                               "other": 1}


@pytest.mark.parametrize("envs, gpus", [
    ({"NVIDIA_VISIBLE_DEVICES": "GPU-2-uuid"}, ["GPU-2-uuid"]),            # upstream: the UUID asked for
    ({"NVIDIA_VISIBLE_DEVICES": "0", "CUDA_VISIBLE_DEVICES": "0"}, ["GPU-0-uuid"]),   # the fork, for gpu2 too
    ({"NVIDIA_VISIBLE_DEVICES": "2,3", "CUDA_VISIBLE_DEVICES": "1"}, ["GPU-3-uuid"]),
    ({}, ["GPU-0-uuid", "GPU-1-uuid", "GPU-2-uuid", "GPU-3-uuid"]),
    ({"NVIDIA_VISIBLE_DEVICES": "none"}, []),
])
def test_container_gpus_does_what_the_runtime_and_cuda_do(envs, gpus):
    assert lane.container_gpus(FOUR, envs) == gpus


def test_the_fork_on_four_gpus_is_refused_and_on_one_accepted():
    four = [dict(g, memory_total_mib=143771, compute_capability="9.0", mps_client_cap=48) for g in FOUR]
    assert lane.fork_refusal(dp, four, 20) is True
    assert "sees 4 GPUs" in lane.fork_refusal(dp, four, 20, message=True)
    assert lane.fork_refusal(dp, four[:1], 20) is False


def test_scenarios_on_four_gpus_expect_each_gpus_replicas():
    four = [dict(g, memory_total_mib=143771, memory_total_bytes=143771 << 20, compute_capability="9.0",
                 mps_client_cap=48, compute_mode="default", name="NVIDIA H200") for g in FOUR]
    s = lane.scenario("fork-individual-plugin", DRIVER, four, 20, dp, _plan, "/tmp/x")
    assert s["expect"]["resources"] == dict(("nvidia.com/gpu%d" % i, 20) for i in range(4))
    assert [r["resource"] for r in s["node"]["gpus"]] == ["nvidia.com/gpu%d" % i for i in range(4)]
    s = lane.scenario("upstream-aggregate-host", DRIVER, four, 20, dp, _plan, "/tmp/x")
    assert s["expect"]["resources"] == {"nvidia.com/gpu": 80}
    assert s["host_daemon"]["pinned_memory_limit_mps"] == dict((str(i), "7188M") for i in range(4))


# --- the binaries folder (the project builds none of them) ----------------------------------------------------------

import binaries  # noqa: E402


def fake_release(folder, version="v0.20.0", gz=False):
    """A --bin folder as a user lays it out, each binary a script that prints a version as the real ones do."""
    import gzip
    for source in ("upstream", "fork"):
        os.makedirs(os.path.join(str(folder), source), exist_ok=True)
        for name in ("nvidia-device-plugin", "mps-control-daemon"):
            path = os.path.join(str(folder), source, name)
            text = "#!/bin/sh\necho 'NVIDIA Device Plugin version %s'\necho 'commit: 1b826acc'\n" % version
            if gz:
                with gzip.open(path + ".gz", "wb") as handle:
                    handle.write(text.encode())
            else:
                with open(path, "w") as handle:
                    handle.write(text)
                os.chmod(path, 0o755)
    with open(os.path.join(str(folder), lane.PROTO), "w") as handle:
        handle.write(TRANSCRIPTION)


@pytest.mark.parametrize("gz", [False, True])
def test_the_lane_takes_released_binaries_from_its_folder(tmp_path, gz):
    fake_release(tmp_path / "bin", gz=gz)
    found, report = binaries.take(str(tmp_path / "bin"), lane.BINARIES, str(tmp_path / "work"))
    assert sorted(found) == sorted(w.path for w in lane.BINARIES)
    assert all(entry["ok"] for entry in report)
    upstream = next(e for e in report if e["path"] == "upstream/nvidia-device-plugin")
    assert "v0.20.0" in upstream["version"] and len(upstream["sha256"]) == 64
    assert lane.binary_line(upstream).startswith("upstream/nvidia-device-plugin sha256 ")
    assert os.access(found["upstream/mps-control-daemon"], os.X_OK)


def test_a_missing_folder_names_everything_it_must_hold(tmp_path):
    with pytest.raises(binaries.BinariesError) as error:
        binaries.take(str(tmp_path / "nothing"), lane.BINARIES, str(tmp_path / "work"))
    for wanted in lane.BINARIES:
        assert wanted.path in str(error.value)
    assert "nvcr.io/nvidia/k8s-device-plugin:v0.20.0" in str(error.value)


def test_every_missing_or_wrong_binary_is_named_at_once(tmp_path):
    fake_release(tmp_path / "bin", version="v0.17.1")
    os.remove(str(tmp_path / "bin" / "fork" / "mps-control-daemon"))
    with pytest.raises(binaries.BinariesError) as error:
        binaries.take(str(tmp_path / "bin"), lane.BINARIES, str(tmp_path / "work"))
    text = str(error.value)
    assert "fork/mps-control-daemon is missing" in text
    # Upstream must be the pinned release; the fork has no release, so its version is only recorded.
    assert text.count("expected") == 2 and "v0.17.1" in text


def test_a_checksum_file_pins_the_binaries(tmp_path):
    fake_release(tmp_path / "bin")
    _found, report = binaries.take(str(tmp_path / "bin"), lane.BINARIES, str(tmp_path / "work"))
    sums = tmp_path / "SHA256SUMS"
    sums.write_text("".join("%s  %s\n" % (e["sha256"], e["path"]) for e in report))
    binaries.take(str(tmp_path / "bin"), lane.BINARIES, str(tmp_path / "work2"), checksums=str(sums))
    with open(str(tmp_path / "bin" / "fork" / "nvidia-device-plugin"), "a") as handle:
        handle.write("# not the binary that was pinned\n")
    with pytest.raises(binaries.BinariesError) as error:
        binaries.take(str(tmp_path / "bin"), lane.BINARIES, str(tmp_path / "work3"), checksums=str(sums))
    assert "fork/nvidia-device-plugin: SHA-256" in str(error.value)
    sums.write_text("not a checksum line\n")
    with pytest.raises(binaries.BinariesError, match="is not '<sha256>  <path>'"):
        binaries.take(str(tmp_path / "bin"), lane.BINARIES, str(tmp_path / "work4"), checksums=str(sums))


def test_the_lane_requires_its_binaries_folder():
    with pytest.raises(SystemExit):
        lane.main(["--out", "/nonexistent"])
