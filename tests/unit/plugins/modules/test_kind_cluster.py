# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""gpulab.mps.kind_cluster: every kind command asserted by its exact argv, check mode parametrized."""

from __future__ import annotations

import json
from unittest import mock

import pytest

from ansible.module_utils import basic
from ansible.module_utils.testing import patch_module_args

from ansible_collections.gpulab.mps.plugins.module_utils import _command
from ansible_collections.gpulab.mps.plugins.modules import kind_cluster

KIND = "/usr/local/bin/kind"
# What kind v0.29 prints: names on stdout; "No kind clusters found." on stderr when there are none.
NONE = (0, "", "No kind clusters found.\n")
CREATE_LOG = ("Creating cluster \"gpulab\" ...\n \u2713 Ensuring node image (kindest/node:v1.33.1)\n"
              "Set kubectl context to \"kind-gpulab\"\n")


class ExitJson(Exception):
    pass


class FailJson(Exception):
    pass


def _exit(self, **kwargs):
    kwargs.setdefault("changed", False)
    raise ExitJson(kwargs)


def _fail(self, **kwargs):
    kwargs["failed"] = True
    raise FailJson(kwargs)


@pytest.fixture
def run(monkeypatch):
    monkeypatch.setattr(basic.AnsibleModule, "exit_json", _exit)
    monkeypatch.setattr(basic.AnsibleModule, "fail_json", _fail)
    monkeypatch.setattr(basic.AnsibleModule, "get_bin_path", mock.Mock(return_value=KIND))

    def _run(args, outputs, check_mode=False, diff=False, expect=ExitJson):
        args = dict(args)
        if check_mode:
            args["_ansible_check_mode"] = True
        if diff:
            args["_ansible_diff"] = True
        rc = mock.Mock(side_effect=list(outputs))
        monkeypatch.setattr(_command, "run_bounded", rc)
        with patch_module_args(args):
            with pytest.raises(expect) as exc:
                kind_cluster.main()
        return exc.value.args[0], [c.args[0] for c in rc.call_args_list]

    return _run


@pytest.fixture
def config(tmp_path):
    path = tmp_path / "kind.yaml"
    path.write_text(json.dumps({"kind": "Cluster", "apiVersion": "kind.x-k8s.io/v1alpha4"}))
    return str(path)


@pytest.mark.parametrize("check_mode", [False, True])
def test_create_when_absent(run, config, tmp_path, check_mode):
    kubeconfig = str(tmp_path / "kube.yaml")
    result, calls = run(
        {"name": "gpulab", "config": config, "image": "kindest/node:v1.33.1", "kubeconfig": kubeconfig, "wait": 120},
        [(0, "other\n", ""), (0, "", CREATE_LOG), (0, "gpulab-control-plane\ngpulab-worker\n", "")],
        check_mode=check_mode, diff=True)
    assert result["changed"] is True
    assert result["clusters"] == ["gpulab", "other"]
    assert result["context"] == "kind-gpulab"
    assert result["diff"] == {"before": {"clusters": ["other"], "kubeconfig_written": False},
                              "after": {"clusters": ["gpulab", "other"], "kubeconfig_written": True}}
    if check_mode:
        assert calls == [[KIND, "get", "clusters"]]
        assert result["nodes"] == []
    else:
        assert calls == [
            [KIND, "get", "clusters"],
            [KIND, "create", "cluster", "--name", "gpulab", "--config", config, "--image", "kindest/node:v1.33.1",
             "--kubeconfig", kubeconfig, "--wait", "120s"],
            [KIND, "get", "nodes", "--name", "gpulab"],
        ]
        assert result["nodes"] == ["gpulab-control-plane", "gpulab-worker"]


@pytest.mark.parametrize("check_mode", [False, True])
def test_present_is_idempotent(run, config, tmp_path, check_mode):
    kubeconfig = tmp_path / "kube.yaml"
    kubeconfig.write_text("apiVersion: v1\n")
    result, calls = run({"name": "gpulab", "config": config, "kubeconfig": str(kubeconfig)},
                        [(0, "gpulab\n", ""), (0, "gpulab-worker\ngpulab-control-plane\n", "")],
                        check_mode=check_mode)
    assert result["changed"] is False
    assert calls == [[KIND, "get", "clusters"], [KIND, "get", "nodes", "--name", "gpulab"]]
    assert result["nodes"] == ["gpulab-control-plane", "gpulab-worker"]


@pytest.mark.parametrize("check_mode", [False, True])
def test_present_exports_missing_kubeconfig(run, tmp_path, check_mode):
    kubeconfig = str(tmp_path / "kube.yaml")
    outputs = [(0, "gpulab\n", "")]
    if not check_mode:
        outputs.append((0, "", "Set kubectl context to \"kind-gpulab\"\n"))
    outputs.append((0, "gpulab-control-plane\n", ""))
    result, calls = run({"name": "gpulab", "kubeconfig": kubeconfig}, outputs, check_mode=check_mode)
    assert result["changed"] is True
    expected = [[KIND, "get", "clusters"]]
    if not check_mode:
        expected.append([KIND, "export", "kubeconfig", "--name", "gpulab", "--kubeconfig", kubeconfig])
    expected.append([KIND, "get", "nodes", "--name", "gpulab"])
    assert calls == expected


@pytest.mark.parametrize("check_mode", [False, True])
def test_absent_deletes(run, check_mode):
    outputs = [(0, "gpulab\nother\n", "")]
    if not check_mode:
        outputs.append((0, "", "Deleting cluster \"gpulab\" ...\n"))
    result, calls = run({"name": "gpulab", "state": "absent"}, outputs, check_mode=check_mode, diff=True)
    assert result["changed"] is True
    assert result["clusters"] == ["other"]
    assert result["diff"] == {"before": {"clusters": ["gpulab", "other"]}, "after": {"clusters": ["other"]}}
    expected = [[KIND, "get", "clusters"]]
    if not check_mode:
        expected.append([KIND, "delete", "cluster", "--name", "gpulab"])
    assert calls == expected


@pytest.mark.parametrize("check_mode", [False, True])
def test_absent_when_already_gone(run, check_mode):
    result, calls = run({"name": "gpulab", "state": "absent"}, [NONE], check_mode=check_mode)
    assert result["changed"] is False
    assert result["clusters"] == []
    assert calls == [[KIND, "get", "clusters"]]


def test_wait_zero_omits_flag(run):
    dummy, calls = run({"name": "lab", "wait": 0}, [NONE, (0, "", ""), (0, "lab-control-plane\n", "")])
    assert calls[1] == [KIND, "create", "cluster", "--name", "lab"]


def test_get_clusters_failure_reports_command(run):
    err = "ERROR: failed to list clusters: command \"docker ps -a\" failed with error: exit status 1\n"
    result, calls = run({"name": "gpulab"}, [(1, "", err)], expect=FailJson)
    assert result["failed"] is True
    assert "is the Docker engine running" in result["msg"]
    assert result["cmd"] == [KIND, "get", "clusters"]
    assert result["rc"] == 1
    assert result["stderr"] == err
    assert calls == [[KIND, "get", "clusters"]]


def test_create_failure_reports_output(run):
    err = "ERROR: failed to create cluster: node(s) already exist for a cluster with the name \"gpulab\"\n"
    result, dummy = run({"name": "gpulab"}, [NONE, (1, "", err)], expect=FailJson)
    assert "kind create cluster gpulab failed (exit 1)" in result["msg"]
    assert "already exist" in result["msg"]
    assert result["cmd"][:3] == [KIND, "create", "cluster"]


@pytest.mark.parametrize("args, message", [
    ({"name": "Bad_Name"}, "must be lower-case"),
    ({"name": "gpulab", "wait": -1}, "wait must be 0 to 3600 seconds"),
    ({"name": "gpulab", "config": "/nonexistent/kind.yaml"}, "does not exist on the target"),
    ({"name": "gpulab", "kind_path": "/nonexistent/kind"}, "missing or not executable"),
])
def test_bad_input_fails_before_any_command(run, args, message):
    result, calls = run(args, [], expect=FailJson)
    assert message in result["msg"]
    assert calls == []


def test_missing_binary(run, monkeypatch):
    monkeypatch.setattr(basic.AnsibleModule, "get_bin_path", mock.Mock(return_value=None))
    result, calls = run({"name": "gpulab"}, [], expect=FailJson)
    assert "kind was not found" in result["msg"]
    assert calls == []
