# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Every Kubernetes object and Kind config the collection renders, for 1, 4 and 8 GPUs, validated offline.

- Kubernetes objects: kubernetes-validate, strict (unknown fields are errors), against Kubernetes 1.33.
- Kind configs: kind's v1alpha4 fields (schemas.KIND_V1ALPHA4), strict.
- Device plugin config files: what the REAL loaders say (upstream v0.20.0 for aggregate, the seed-004 fork for
  individual), recorded from their own code with strict decoding in fixtures/device_plugin_loaders.json
  (fixtures/README.md says when and from which commits; the cases are loader_cases.py). A rendered config that is not
  in the record fails.

Two paths are covered: the roles themselves (tests/render/render.yml runs kind_cluster and
device_plugin in render-only mode through ansible-playbook), and the generation code directly, over
more combinations. A test that the validators reject a broken object keeps them honest.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys

import jsonschema
import kubernetes_validate
import pytest
import yaml

from ansible_collections.gpulab.mps.plugins.module_utils import _device_plugin as dp
from ansible_collections.gpulab.mps.plugins.module_utils import _pods as dt
from ansible_collections.gpulab.mps.plugins.module_utils import _kind as kind

import loader_cases
from schemas import KIND_V1ALPHA4

KUBERNETES_VERSION = "1.33"
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
H100 = {"name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0", "memory_total_mib": 81559, "mps_client_cap": 48}
GPU_COUNTS = [1, 4, 8]
CASES = [(n, mode, owner) for mode, owner in loader_cases.MODES_OWNERS for n in GPU_COUNTS]
FORK_IMAGE = "registry.local/k8s-device-plugin:individual-mps"


def h100s(n):
    return [dict(H100, index=i) for i in range(n)]


def validate_k8s(obj):
    """kubernetes-validate, strict, against the pinned Kubernetes version (raises on any error)."""
    kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


def validate_kind(config):
    jsonschema.validate(config, KIND_V1ALPHA4)
    roles = [node.get("role", "control-plane") for node in config["nodes"]]
    assert roles.count("control-plane") >= 1, "a Kind cluster needs a control-plane node"


def plugin_config_of(objects):
    (configmap,) = [o for o in objects if o["kind"] == "ConfigMap"]
    ((name, text),) = configmap["data"].items()
    return name, yaml.safe_load(text)


with open(os.path.join(HERE, "fixtures", "device_plugin_loaders.json")) as _handle:
    LOADERS = json.load(_handle)
RECORDED = dict((loader_cases.key(case["config"]), case) for case in LOADERS["cases"].values())


def fit(result):
    """A config is fit for a plugin only when its loader accepts it AND reads every key (strict decoding)."""
    return result["accepted"] and not result["unknown_fields"]


def recorded(config):
    """What the real loaders said about this very config; fails when it was never recorded."""
    case = RECORDED.get(loader_cases.key(config))
    assert case is not None, (
        "this rendered config was never fed to the real loaders (tests/render/fixtures/README.md): check it with the "
        "released plugin (the device-plugin or cluster lane) and record its verdict:\n%s" % json.dumps(config, indent=1))
    return case


def check_with_the_real_loader(mode, owner, config):
    """The loader of this mode's image accepts the config strictly and does with it what the plan says."""
    loader = loader_cases.LOADER_OF_MODE[mode]
    result = recorded(config)[loader]
    assert fit(result), (loader, result["error"], result["unknown_fields"])
    assert result["warnings"] == [], result["warnings"]  # nothing ignored
    assert result["sharing_strategy"] == ("mps" if owner == "plugin" else "time-slicing")
    effective = result["effective"]
    if mode == "individual":
        # What the fork read for each GPU (its Go types drop false and 0 when written back: omitempty).
        read = [g["mps"] for g in effective["individualGPU"]["gpuConfigs"]]
        assert read == [dict((k, v) for k, v in g["mps"].items() if v not in (False, 0))
                        for g in config["individualGPU"]["gpuConfigs"]]
    return result


# --- the roles, through ansible-playbook -------------------------------------------------------------------------

@pytest.fixture(scope="session")
def rendered(tmp_path_factory):
    out = tmp_path_factory.mktemp("render")
    playbook = shutil.which("ansible-playbook", path=os.path.dirname(sys.executable)) or shutil.which("ansible-playbook")
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(ROOT, "ansible.cfg"), ANSIBLE_NOCOLOR="1",
               PYTHONPATH=os.path.join(ROOT, "tests", "standins"))  # NVML: the recorded H100's stand-in
    proc = subprocess.run([playbook, "-i", "localhost,", os.path.join(HERE, "render.yml"), "-e", "render_root=%s" % out],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, "render.yml failed:\n%s\n%s" % (proc.stdout[-4000:], proc.stderr[-2000:])
    return str(out)


def role_objects(rendered, n, mode, owner):
    path = os.path.join(rendered, "device_plugin", "%s-%s-%d" % (mode, owner, n), "manifests.yaml")
    return [doc for doc in yaml.safe_load_all(open(path)) if doc]


@pytest.mark.parametrize("n, mode, owner", CASES)
def test_role_objects_validate(rendered, n, mode, owner):
    objects = role_objects(rendered, n, mode, owner)
    kinds = [o["kind"] for o in objects]
    expected = ["Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "ConfigMap", "DaemonSet"]
    assert kinds == expected + (["DaemonSet"] if owner == "plugin" else [])
    for obj in objects:
        validate_k8s(obj)


@pytest.mark.parametrize("n, mode, owner", CASES)
def test_role_renders_what_the_code_renders(rendered, n, mode, owner):
    """The role passes its variables to the generator correctly: same objects as a direct call."""
    direct = dp.manifests(h100s(n), mode=mode, owner=owner, replicas=4,
                          image=FORK_IMAGE if mode == "individual" else None)
    assert role_objects(rendered, n, mode, owner) == direct


@pytest.mark.parametrize("n, mode, owner", CASES)
def test_role_plans(rendered, n, mode, owner):
    path = os.path.join(rendered, "device_plugin", "%s-%s-%d" % (mode, owner, n), "plans.yaml")
    ((node,),) = [yaml.safe_load(open(path))]
    plan = node["plan"]
    assert node["name"] == "gpu-node"
    if mode == "aggregate":
        assert plan["resources"] == {"nvidia.com/gpu": 4 * n}
    else:
        assert plan["resources"] == {"nvidia.com/gpu%d" % i: 4 for i in range(n)}
    assert [g["memory_per_replica_mib"] for g in plan["gpus"]] == [81559 // 4] * n
    assert plan["labels"] == {"nvidia.com/gpu.present": "true", "nvidia.com/mps.capable": "true",
                              "nvidia.com/device-plugin.config": "%s-gpu-mps" % mode, "gpulab.mps/mps-owner": owner}


@pytest.mark.parametrize("n", GPU_COUNTS)
@pytest.mark.parametrize("layout", ["single", "per_gpu"])
def test_role_kind_configs(rendered, n, layout):
    path = os.path.join(rendered, "kind", "kind-lab%d-%s.yaml" % (n, layout.replace("_", "")))
    config = yaml.safe_load(open(path))
    validate_kind(config)
    pipe = os.path.join(rendered, "pipe")
    for node in config["nodes"]:
        assert {"hostPath": pipe, "containerPath": pipe} in node["extraMounts"], node
        assert node["image"] == "kindest/node:v1.33.1"
    workers = [node for node in config["nodes"] if node["role"] == "worker"]
    device_paths = sorted(m["containerPath"] for w in workers for m in w["extraMounts"] if m["hostPath"] == "/dev/null")
    if layout == "single":
        assert device_paths == ["/var/run/nvidia-container-devices/all"]
    else:
        assert device_paths == sorted("/var/run/nvidia-container-devices/%d" % i for i in range(n))


# --- the generation code, over more combinations -------------------------------------------------------------------

@pytest.mark.parametrize("n, mode, owner", CASES)
@pytest.mark.parametrize("replicas", [2, 48])
def test_manifests_validate(n, mode, owner, replicas):
    objects = dp.manifests(h100s(n), mode=mode, owner=owner, replicas=replicas,
                           image=FORK_IMAGE if mode == "individual" else None)
    for obj in objects:
        validate_k8s(obj)
    name, config = plugin_config_of(objects)
    assert name == "%s-gpu-mps" % mode
    check_with_the_real_loader(mode, owner, config)
    if mode == "individual":
        assert len(config["individualGPU"]["gpuConfigs"]) == n


@pytest.mark.parametrize("n, mode, owner", CASES)
def test_role_configs_pass_the_real_loaders(rendered, n, mode, owner):
    name, config = plugin_config_of(role_objects(rendered, n, mode, owner))
    check_with_the_real_loader(mode, owner, config)


@pytest.mark.parametrize("name", sorted(loader_cases.rendered()))
def test_the_record_is_current(name):
    """Every config loader_cases renders is in the record as the code renders it today, with both loaders' verdicts."""
    mode, owner, config = loader_cases.rendered()[name]
    case = LOADERS["cases"][name]
    assert case["config"] == json.loads(json.dumps(config)), \
        "the collection renders this case differently from what was recorded (tests/render/fixtures/README.md)"
    check_with_the_real_loader(mode, owner, config)


def test_the_record_names_its_sources():
    assert LOADERS["sources"]["upstream"]["commit"] == "1b826acc6af3079d8923bac395c3124b8861a9a6"
    assert LOADERS["sources"]["upstream"]["version"] == dp.UPSTREAM_VERSION
    assert LOADERS["sources"]["fork"]["commit"] == "52596d72c2552fd011d870ae352a9113ac31c019"


def test_the_h200_fork_config_carries_the_replica_share():
    """The fork reads pinnedMemoryLimit: 143771 // 20 = 7188 MiB per client (without it, it set TOTAL memory)."""
    result = recorded(loader_cases.rendered()["individual-plugin-1xH200-r20"][2])["fork"]
    assert result["effective"]["individualGPU"]["gpuConfigs"][0]["mps"]["pinnedMemoryLimit"] == 7188


def test_the_individual_config_is_not_upstream():
    """Upstream's strict reading does not know individualGPU: that format is the fork's alone."""
    result = recorded(loader_cases.rendered()["individual-plugin-1xH100-r4"][2])["upstream"]
    assert result["accepted"] and "individualGPU" in result["unknown_fields"]


# --- what the real loaders do with broken configs, and that the collection refuses them first ------------------------

@pytest.mark.parametrize("name, unknown", [
    ("misspelt-sharing", "sharng"),
    ("misspelt-failRequestsGreaterThanOne", "sharing.mps.failRequestGreaterThanOne"),
])
def test_loaders_accept_misspelt_keys_silently_strict_decoding_catches_them(name, unknown):
    case = LOADERS["cases"][name]
    for loader in ("upstream", "fork"):
        assert case[loader]["accepted"], "the loader itself does not care"
        assert case[loader]["unknown_fields"] == [unknown]
        assert not fit(case[loader])
    if name == "misspelt-sharing":
        assert case["upstream"]["sharing_strategy"] == "none"  # no sharing at all, and no error


def test_a_misspelt_key_of_the_fork_is_caught():
    case = LOADERS["cases"]["misspelt-pinnedMemoryLimit"]["fork"]
    assert case["accepted"] and case["unknown_fields"] == ["individualGPU.gpuConfigs.0.mps.pinnedMemoryLimt"]


@pytest.mark.parametrize("name, message", [
    ("replicas-1", "number of replicas must be >= 2"),
    ("replicas-missing", "no replicas specified"),
])
def test_loaders_reject_what_the_collection_refuses_first(name, message):
    for loader in ("upstream", "fork"):
        result = LOADERS["cases"][name][loader]
        assert not result["accepted"] and message in result["error"]
    with pytest.raises(dp.DevicePluginError, match="at least 2 replicas"):
        dp.plugin_config(h100s(1), replicas=1)


def test_the_fork_takes_one_replica_for_a_gpu_the_collection_refuses_it():
    """The fork's loader accepts per-GPU replicas 1 (no sharing of that GPU, silently): refused before rendering."""
    assert fit(LOADERS["cases"]["fork-gpu-replicas-1"]["fork"])
    with pytest.raises(dp.DevicePluginError, match="at least 2 replicas"):
        dp.plugin_config(h100s(2), mode="individual", replicas=4, per_gpu_replicas={0: 1})


@pytest.mark.parametrize("name, section", [("timeSlicing-rename-devices", "timeSlicing"), ("mps-rename-devices", "mps")])
def test_upstream_drops_rename_and_devices(name, section):
    """Why individual mode needs the fork: upstream v0.20.0 accepts rename/devices and throws them away."""
    result = LOADERS["cases"][name]["upstream"]
    assert fit(result)
    assert result["effective"]["sharing"][section]["resources"] == [
        {"name": "nvidia.com/gpu", "devices": "all", "replicas": 4}]
    assert result["warnings"] == [
        "Setting the 'rename' field in sharing.%s.resources is not yet supported in the config. Ignoring..." % section,
        "Customizing the 'devices' field in sharing.%s.resources is not yet supported in the config. Ignoring..."
        % section]
    with pytest.raises(dp.DevicePluginError, match="cannot work with owner host"):
        dp.manifests(h100s(1), mode="individual", owner="host", replicas=4)


@pytest.mark.parametrize("n", GPU_COUNTS)
@pytest.mark.parametrize("layout", ["single", "per_gpu"])
@pytest.mark.parametrize("style", ["volume", "cdi"])
def test_kind_configs_validate(n, layout, style):
    config = kind.kind_config(n, name="lab", layout=layout, device_mount_style=style, cpu_workers=1,
                              node_image="kindest/node:v1.33.1",
                              extra_mounts=[{"hostPath": "/srv/data", "containerPath": "/data", "readOnly": True}])
    validate_kind(config)
    gpu_nodes = kind.gpu_nodes(config)
    seen = [g for node in gpu_nodes for g in (range(n) if node["gpus"] == "all" else node["gpus"])]
    assert sorted(seen) == list(range(n)), "every GPU goes to exactly one worker"


@pytest.mark.parametrize("source", ["host", "plugin"])
@pytest.mark.parametrize("host_ipc", [False, True])
def test_dialtone_pods_validate(source, host_ipc):
    validate_k8s(dt.dialtone_pod(source=source, host_ipc=host_ipc, node_name="lab-worker", resource="nvidia.com/gpu"))


def test_pods_in_a_qos_class_validate():
    from ansible_collections.gpulab.mps.plugins.module_utils import _qos
    plan = {"qos": _qos.qos_plan({"batch": {"active_thread_percentage": 12, "client_priority": 1,
                                            "pinned_memory_limit": "16G"}}, None, [{"memory_total_bytes": 150 << 30}])[0]}
    env = _qos.pod_env(plan, "batch")
    assert [e["name"] for e in env] == ["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE", "CUDA_MPS_CLIENT_PRIORITY",
                                        "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"]
    validate_k8s(dt.dialtone_pod(env=env))
    for obj in dt.workload_pod({"run.py": "print(1)"}, ["python3", "/opt/gpulab-workloads/run.py"], env=env):
        validate_k8s(obj)


def test_runtime_class_validates():
    validate_k8s(kind.runtime_class("nvidia"))


# --- the validators themselves reject broken input --------------------------------------------------------------------

def test_kubernetes_validate_rejects_an_unknown_field():
    daemonset = copy.deepcopy([o for o in dp.manifests(h100s(1), replicas=2) if o["kind"] == "DaemonSet"][0])
    daemonset["spec"]["template"]["spec"]["containers"][0]["volumeMount"] = []
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_k8s(daemonset)


def test_kubernetes_validate_rejects_a_wrong_type():
    pod = dt.dialtone_pod()
    pod["spec"]["hostIPC"] = "yes"
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_k8s(pod)


@pytest.mark.parametrize("mutate", [
    lambda c: c["nodes"][0].__setitem__("extraMount", []),
    lambda c: c["nodes"][0].__setitem__("role", "master"),
    lambda c: c["nodes"][1]["extraMounts"][0].__setitem__("propagation", "Shared"),
    lambda c: c.__setitem__("apiVersion", "kind.x-k8s.io/v1alpha3"),
])
def test_kind_schema_rejects_broken_configs(mutate):
    config = kind.kind_config(1)
    mutate(config)
    with pytest.raises(jsonschema.ValidationError):
        validate_kind(config)
