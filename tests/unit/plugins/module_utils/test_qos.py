# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""QoS classes (_qos): checked once, against the GPUs and the daemon's defaults, into the environment a client of
each class gets; over the recorded H100's NVML figures and the plan's daemon."""

from __future__ import annotations

import pytest

from ansible_collections.gpulab.mps.plugins.module_utils import _plan, _qos

G = 1 << 30
H100 = {"name": "NVIDIA H100 80GB HBM3", "memory_total_mib": 81559, "memory_total_bytes": 85520809984}
GPUS = [dict(H100, index=0, uuid="GPU-058fcf08-fc4a-49f5-ddd9-6d7fedc642b2"),
        dict(H100, index=1, uuid="GPU-058fcf08-fc4a-49f5-ddd9-6d7fedc6c743")]


def daemon(percentage=None, pinned=None, visible=None):
    plan, errors = _plan.daemon_plan(GPUS, visible, percentage, pinned)
    assert errors == []
    return plan


def test_the_default_classes_on_a_host_daemon():
    qos, errors, warnings = _qos.qos_plan(_qos.DEFAULT_CLASSES, None, GPUS, daemon(), "/tmp/nvidia-mps")
    assert errors == [] and warnings == []
    assert qos["directory"] == "/etc/gpulab-mps/qos"
    batch, latency = qos["classes"]["batch"], qos["classes"]["latency"]
    assert batch["environment"] == {"CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": "12", "CUDA_MPS_CLIENT_PRIORITY": "1"}
    # latency sets no thread limit: it gets what its server allows; its priority is set, so that it stays normal
    # whatever the daemon's default client priority is.
    assert latency["environment"] == {"CUDA_MPS_CLIENT_PRIORITY": "0"}
    assert latency["env_file"] == "/etc/gpulab-mps/qos/latency.env"
    assert batch["env_file_environment"] == dict(batch["environment"], CUDA_MPS_PIPE_DIRECTORY="/tmp/nvidia-mps")


def test_a_pinned_limit_covers_every_device_a_client_may_number():
    classes = {"batch": {"active_thread_percentage": 12.5, "pinned_memory_limit": "16G"}}
    qos, errors, _warnings = _qos.qos_plan(classes, "/etc/q", GPUS, daemon(), None)
    assert errors == []
    env = qos["classes"]["batch"]["environment"]
    assert env == {"CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": "12.5", "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT": "0=16G,1=16G"}
    assert qos["classes"]["batch"]["pinned_memory_limit"] == 16 * G
    # No pipe directory when the host daemon serves no client (the device plugin owns MPS).
    assert "CUDA_MPS_PIPE_DIRECTORY" not in qos["classes"]["batch"]["env_file_environment"]
    # With visible_devices the daemon has one device: the client numbers one.
    one = daemon(visible=["1"])
    assert _qos.qos_plan(classes, None, GPUS, one)[0]["classes"]["batch"]["environment"][
        "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"] == "0=16G"


@pytest.mark.parametrize("settings, message", [
    ({"active_thread_percentage": 0}, "qos_classes.c.active_thread_percentage must be between 1 and 100, got 0"),
    ({"active_thread_percentage": 150}, "must be between 1 and 100, got 150"),
    ({"active_thread_percentage": True}, "must be a number between 1 and 100, got True"),
    ({"client_priority": 2}, "qos_classes.c.client_priority must be 0 (normal) or 1 (below normal), got 2"),
    ({"client_priority": "high"}, "must be 0 (normal) or 1 (below normal), got 'high'"),
    ({"client_priority": False}, "must be 0 (normal) or 1 (below normal), got False"),
    ({"pinned_memory_limit": "lots"}, "qos_classes.c.pinned_memory_limit: 'lots' is not a memory size"),
    ({"pinned_memory_limit": "1.5M"}, "is not a whole number of MiB"),
    ({"pinned_memory_limit": "90G"}, "90G is more than the 81559 MiB of the smallest GPU"),
    ({"pinned_memory_limit": {"0": "1G"}}, "must be one size"),
    ({"active_thread_precentage": 10}, "qos_classes.c: unknown setting active_thread_precentage (known: "),
    ({"description": "two\nlines"}, "qos_classes.c.description must be one line of printable text"),
    ("fast", "qos_classes.c must be a dict of"),
])
def test_bad_class_settings_are_named(settings, message):
    errors = _qos.qos_plan({"c": settings}, None, GPUS, daemon())[1]
    assert len(errors) == 1 and message in errors[0], errors


@pytest.mark.parametrize("name", ["Batch", "1st", "with space", "a" * 40, "x.y", ""])
def test_a_class_name_must_make_a_file_name(name):
    errors = _qos.qos_plan({name: {}}, None, GPUS, daemon())[1]
    assert errors and "must be lower-case letters, digits and dashes" in errors[0]


def test_every_bad_setting_is_named_at_once():
    errors = _qos.qos_plan({"a": {"client_priority": 5}, "b": {"active_thread_percentage": 0}}, "relative", GPUS,
                           daemon())[1]
    assert len(errors) == 3
    assert errors[0].startswith("qos_directory must be an absolute path")


def test_a_class_above_the_daemon_default_is_refused():
    """A client can only lower its server's share (NVIDIA's MPS docs): a batch class of 60 % under a daemon
    default of 50 % would silently get 50 %."""
    errors = _qos.qos_plan({"batch": {"active_thread_percentage": 60}}, None, GPUS, daemon(percentage=50))[1]
    assert errors == ["qos_classes.batch.active_thread_percentage 60 is above the daemon's "
                      "default_active_thread_percentage 50: a client can only lower its share below its server's, so "
                      "this class would get 50. Lower the class or raise mps_host_default_active_thread_percentage"]
    assert _qos.qos_plan({"batch": {"active_thread_percentage": 50}}, None, GPUS, daemon(percentage=50))[1] == []
    # The defaults fit any daemon default from 12 % up: latency asks no thread limit of its own.
    assert _qos.qos_plan(_qos.DEFAULT_CLASSES, None, GPUS, daemon(percentage=12))[1] == []


def test_a_pinned_limit_above_the_daemon_default_is_a_warning():
    _qos_plan, errors, warnings = _qos.qos_plan({"big": {"pinned_memory_limit": "20G"}}, None, GPUS,
                                                daemon(pinned="8G"))
    assert errors == []
    assert warnings == ["qos_classes.big.pinned_memory_limit 20G is above the daemon's default pinned limit on "
                        "device(s) 0, 1: a client can lower its limit below its server's; do not count on it going "
                        "above"]


def test_no_classes_and_no_daemon():
    qos, errors, _warnings = _qos.qos_plan({}, None, GPUS, None)
    assert errors == [] and qos["classes"] == {}
    # Without the daemon (the rest of the plan failed) the classes are still checked on their own.
    assert _qos.qos_plan({"x": {"client_priority": 3}}, None, GPUS, None)[1]
    assert _qos.qos_plan(["latency"], None, GPUS, None)[1] == [
        "qos_classes must be a dict from class name to its settings, got ['latency']"]


def test_pod_env_of_a_class():
    qos = _qos.qos_plan(_qos.DEFAULT_CLASSES, None, GPUS, daemon(), "/tmp/nvidia-mps")[0]
    plan = {"qos": qos}
    assert _qos.pod_env(plan, "batch") == [{"name": "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE", "value": "12"},
                                           {"name": "CUDA_MPS_CLIENT_PRIORITY", "value": "1"}]
    with pytest.raises(_qos.QosError, match=r"no QoS class 'gold' in this host's plan: it has batch, latency"):
        _qos.pod_env(plan, "gold")
    with pytest.raises(_qos.QosError, match="it has none"):
        _qos.pod_env({}, "batch")


@pytest.mark.parametrize("name", ["batch\n", "batch\nLD_PRELOAD", "../escape", "Batch"])
def test_a_class_name_that_is_not_a_plain_word_is_refused(name):
    """Regression: the name's check ended in `$`, which Python lets match before a final newline: "batch\\n" passed
    and named the file "batch\\n.env"."""
    qos, errors, _warnings = _qos.qos_plan({name: {"client_priority": 1}}, "/etc/q", GPUS, daemon(), None)
    assert errors and "qos class name %r" % name in errors[0] and name not in qos["classes"]


@pytest.mark.parametrize("description", ["bulk\rLD_PRELOAD=/tmp/x.so", "a\u2028b", "tab\there", "esc\x1b[0m", "a\\"])
def test_a_description_the_class_file_cannot_carry_is_refused(description):
    """The plan refuses what the file could not carry as one comment line (_formats.comment_line): a carriage return
    ends a line for systemd's EnvironmentFile=, a backslash escapes the line end in its comments."""
    _qos_plan, errors, _warnings = _qos.qos_plan({"batch": {"description": description}}, "/etc/q", GPUS, daemon(),
                                                 None)
    assert errors and "qos_classes.batch.description must be one line of printable text" in errors[0]
