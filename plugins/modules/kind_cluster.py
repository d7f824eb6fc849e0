#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: kind_cluster
short_description: Create or delete a Kind (Kubernetes in Docker) cluster
version_added: "0.1.0"
description:
  - Makes sure a Kind cluster of a given name exists (O(state=present)) or does not (O(state=absent)).
  - Reads C(kind get clusters) first and runs C(kind create cluster) or C(kind delete cluster) only when the
    state differs, so a second run changes nothing.
  - Kind cannot change a running cluster. A changed O(config) has no effect on an existing cluster; delete it
    (O(state=absent)) and create it again to apply it.
  - When the cluster exists but the file named by O(kubeconfig) does not, the module writes it with
    C(kind export kubeconfig).
author:
  - gpulab.mps contributors (@gpulab)
requirements:
  - kind on the target (see O(kind_path)), and a Docker engine that the user running the module can reach.
extends_documentation_fragment:
  - gpulab.mps.attributes
attributes:
  check_mode:
    support: full
    details: Reports what would be created or deleted without running C(kind create) or C(kind delete).
  diff_mode:
    support: full
    details: Shows the clusters before and after.
  idempotent:
    support: full
    details: A cluster that already is in the requested state is left alone.
options:
  name:
    description:
      - Name of the cluster. Kind names the nodes C(<name>-control-plane), C(<name>-worker), C(<name>-worker2), and
        the kubeconfig context C(kind-<name>).
    type: str
    default: kind
  state:
    description:
      - V(present) creates the cluster when it does not exist; V(absent) deletes it when it exists.
    type: str
    choices: [present, absent]
    default: present
  config:
    description:
      - Path of a Kind config file (C(kind.x-k8s.io/v1alpha4)) on the target, used when the cluster is created.
    type: path
  image:
    description:
      - Node image, for example C(kindest/node:v1.33.1). Overrides the images of the config. Kind's default when
        unset.
    type: str
  kubeconfig:
    description:
      - Kubeconfig file that C(kind create cluster) updates (and C(kind delete cluster) cleans). Kind's default,
        C($KUBECONFIG) or C(~/.kube/config), when unset.
    type: path
  wait:
    description:
      - Seconds that C(kind create cluster) waits for the control plane to be ready (C(--wait)), 0 to 3600. V(0) does
        not wait. Every kind call is bounded - a query by 120 s, create and delete by O(wait) plus 300 s - and killed
        when it runs past that.
    type: int
    default: 300
  kind_path:
    description:
      - Path of the kind binary. Searched in C(PATH) and C(/usr/local/bin) when unset.
    type: path
"""

EXAMPLES = r"""
- name: Create the lab cluster from a rendered config
  gpulab.mps.kind_cluster:
    name: gpulab
    config: /etc/gpulab/kind-gpulab.yaml
    image: kindest/node:v1.33.1
    kubeconfig: /root/.kube/kind-gpulab.yaml

- name: Delete the lab cluster
  gpulab.mps.kind_cluster:
    name: gpulab
    state: absent
    kubeconfig: /root/.kube/kind-gpulab.yaml
"""

RETURN = r"""
name:
  description: Name of the cluster.
  returned: always
  type: str
  sample: gpulab
context:
  description: The kubeconfig context of the cluster.
  returned: always
  type: str
  sample: kind-gpulab
clusters:
  description: The Kind clusters on this host after the module ran (what it expects in check mode).
  returned: always
  type: list
  elements: str
  sample: [gpulab]
nodes:
  description:
    - Names of the cluster's nodes (its Docker containers), sorted; empty when the cluster does not exist, or in
      check mode before it is created.
  returned: always
  type: list
  elements: str
  sample: [gpulab-control-plane, gpulab-worker]
cmd:
  description: The last kind command that ran, as an argv list.
  returned: when a kind command ran
  type: list
  elements: str
  sample: [/usr/local/bin/kind, create, cluster, --name, gpulab, --config, /etc/gpulab/kind-gpulab.yaml]
rc:
  description: Exit code of the last kind command.
  returned: when a kind command ran
  type: int
  sample: 0
stdout:
  description: Standard output of the last kind command.
  returned: when a kind command ran
  type: str
stderr:
  description: Standard error of the last kind command (kind reports its progress there).
  returned: when a kind command ran
  type: str
  sample: "Creating cluster \"gpulab\" ..."
"""

import os

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.gpulab.mps.plugins.module_utils import _command
from ansible_collections.gpulab.mps.plugins.module_utils._command import MAX_TIMEOUT, CommandError, CommandTimeout
from ansible_collections.gpulab.mps.plugins.module_utils._kind import (
    KindConfigError,
    check_name,
    parse_clusters,
    parse_nodes,
)

EXTRA_PATHS = ["/usr/local/bin", "/usr/bin"]


# Every kind call is bounded: a query has this long; create and delete have `wait` plus this margin.
QUERY_TIMEOUT = 120
CREATE_MARGIN = 300


class KindCli(object):
    """The kind CLI, run with argv lists; every failure ends the module with cmd, rc, stdout and stderr."""

    def __init__(self, module):
        self.module = module
        path = module.params["kind_path"]
        if path:
            if not os.access(path, os.X_OK):
                module.fail_json(msg="kind binary %s is missing or not executable: install kind there (role "
                                     "gpulab.mps.kind_cluster) or fix kind_path" % path)
            self.binary = path
        else:
            self.binary = module.get_bin_path("kind", required=False, opt_dirs=EXTRA_PATHS)
            if not self.binary:
                module.fail_json(msg="kind was not found in PATH or %s: install it (role gpulab.mps.kind_cluster "
                                     "does, at a pinned version) or set kind_path" % ", ".join(EXTRA_PATHS))
        self.last = {}

    def run(self, args, what, timeout=QUERY_TIMEOUT):
        cmd = [self.binary] + args
        try:
            rc, out, err = _command.run_bounded(cmd, timeout, env=kind_environment())
        except CommandError as error:
            self.module.fail_json(msg="%s: %s" % (what, error), **error.details())
        except CommandTimeout as error:
            printed = (error.stderr or error.stdout or "it printed nothing").strip()[-800:]
            self.module.fail_json(msg="%s did not finish within %d s and was killed: %s; is the Docker engine "
                                      "answering (docker info)?" % (what, timeout, printed), **error.details())
        self.last = {"cmd": cmd, "rc": rc, "stdout": out, "stderr": err}
        if rc != 0:
            self.module.fail_json(msg="%s failed (exit %d): %s" % (what, rc, (err or out or "").strip()[-800:]),
                                  **self.last)
        return out

    def clusters(self):
        return parse_clusters(self.run(["get", "clusters"],
                                       "kind get clusters (is the Docker engine running and reachable by this user?)"))

    def nodes(self, name):
        return parse_nodes(self.run(["get", "nodes", "--name", name], "kind get nodes --name %s" % name))


def kind_environment():
    """kind's environment: root's PATH, this user's HOME (from the password database, not the environment) for its
    default kubeconfig, and the Docker engine the user points at (DOCKER_HOST); nothing else of the task's."""
    import pwd
    extra = {"HOME": pwd.getpwuid(os.geteuid()).pw_dir}
    for name in ("DOCKER_HOST", "DOCKER_CONTEXT", "DOCKER_CONFIG"):
        if os.environ.get(name):
            extra[name] = os.environ[name]
    return _command.base_environment(extra)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            name=dict(type="str", default="kind"),
            state=dict(type="str", choices=["present", "absent"], default="present"),
            config=dict(type="path"),
            image=dict(type="str"),
            kubeconfig=dict(type="path"),
            wait=dict(type="int", default=300),
            kind_path=dict(type="path"),
        ),
        supports_check_mode=True,
    )
    params = module.params
    name = params["name"]
    try:
        check_name(name)
    except KindConfigError as exc:
        module.fail_json(msg=str(exc))
    if not 0 <= params["wait"] <= MAX_TIMEOUT:
        module.fail_json(msg="wait must be 0 to %d seconds, got %d" % (MAX_TIMEOUT, params["wait"]))
    if params["state"] == "present" and params["config"] and not os.path.isfile(params["config"]):
        module.fail_json(msg="Kind config %s does not exist on the target: render it first (role "
                             "gpulab.mps.kind_cluster writes it)" % params["config"])

    kind = KindCli(module)
    before = kind.clusters()
    exists = name in before
    changed = False
    after = list(before)
    nodes = []
    kubeconfig_args = ["--kubeconfig", params["kubeconfig"]] if params["kubeconfig"] else []
    kubeconfig_before = bool(params["kubeconfig"]) and os.path.exists(params["kubeconfig"])
    kubeconfig_after = kubeconfig_before

    if params["state"] == "present":
        if not exists:
            changed = True
            after = sorted(before + [name])
            if not module.check_mode:
                args = ["create", "cluster", "--name", name]
                if params["config"]:
                    args += ["--config", params["config"]]
                if params["image"]:
                    args += ["--image", params["image"]]
                args += kubeconfig_args
                if params["wait"]:
                    args += ["--wait", "%ds" % params["wait"]]
                kind.run(args, "kind create cluster %s" % name, params["wait"] + CREATE_MARGIN)
            kubeconfig_after = bool(params["kubeconfig"])
        elif params["kubeconfig"] and not kubeconfig_before:
            changed = True
            kubeconfig_after = True
            if not module.check_mode:
                kind.run(["export", "kubeconfig", "--name", name] + kubeconfig_args,
                         "kind export kubeconfig --name %s" % name)
        if not (module.check_mode and not exists):
            nodes = kind.nodes(name)
    elif exists:
        changed = True
        after = [c for c in before if c != name]
        if not module.check_mode:
            kind.run(["delete", "cluster", "--name", name] + kubeconfig_args, "kind delete cluster %s" % name,
                     params["wait"] + CREATE_MARGIN)

    result = dict(changed=changed, name=name, context="kind-%s" % name, clusters=after, nodes=nodes)
    result.update(kind.last)
    if module._diff:
        result["diff"] = {
            "before": {"clusters": before},
            "after": {"clusters": after},
        }
        if params["kubeconfig"]:
            result["diff"]["before"]["kubeconfig_written"] = kubeconfig_before
            result["diff"]["after"]["kubeconfig_written"] = kubeconfig_after
    module.exit_json(**result)


if __name__ == "__main__":
    main()
