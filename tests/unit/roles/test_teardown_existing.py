# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""playbooks/teardown.yml on an existing cluster removes what site.yml added there, and only that.

Regression (cluster lane, 2026-12-04, a real Kubernetes v1.36.2): after site.yml with kind_cluster_target existing and
playbooks/teardown.yml, the RuntimeClass nvidia that the kind_cluster role had added was still there. The role now adds
it only where the cluster has none (labelled app.kubernetes.io/managed-by=gpulab.mps, never adopting one that was
there), and the teardown removes it only when it carries that label. The real run is the lane's (tests/cluster); this
checks the playbooks on the CPU."""

from __future__ import annotations

import os

import yaml

from ansible_collections.gpulab.mps.plugins.module_utils import _kind

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def load(*path):
    with open(os.path.join(ROOT, *path)) as handle:
        return yaml.safe_load(handle)


def tasks(items):
    for task in items or []:
        yield task
        for key in ("block", "rescue", "always"):
            yield from tasks(task.get(key))


def test_the_runtime_class_the_collection_adds_is_labelled_as_its_own():
    assert _kind.runtime_class("nvidia")["metadata"]["labels"] == {"app.kubernetes.io/managed-by": "gpulab.mps"}


def test_kind_cluster_adds_the_runtime_class_only_where_there_is_none():
    ready = list(tasks(load("roles", "kind_cluster", "tasks", "cluster_ready.yml")))
    (add,) = [t for t in ready if "RuntimeClass" in t.get("name", "") and "kubernetes.core.k8s" in t]
    assert not add["kubernetes.core.k8s"].get("apply"), "apply adopts (and labels) a RuntimeClass that was there"
    assert any("runtime_class_found.resources" in str(w) and "length == 0" in str(w) for w in add["when"]), add


def test_teardown_removes_the_runtime_class_of_the_collection_and_no_other():
    plays = load("playbooks", "teardown.yml")
    removals = [t for p in plays for t in tasks(p.get("tasks"))
                if (t.get("kubernetes.core.k8s") or {}).get("kind") == "RuntimeClass"
                and t["kubernetes.core.k8s"].get("state") == "absent"]
    assert len(removals) == 1, "teardown.yml removes no RuntimeClass"
    assert "app.kubernetes.io/managed-by" in str(removals[0].get("when")) and "gpulab.mps" in str(removals[0]["when"])
