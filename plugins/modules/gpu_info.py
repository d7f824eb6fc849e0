#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: gpu_info
short_description: List the NVIDIA GPUs of a host with their memory, modes and MPS capacity
version_added: 0.1.0
description:
  - Reads every GPU through NVML - index, UUID, name, compute capability, memory total, used and
    free (bytes and MiB), compute mode and MIG mode - and the most MPS clients it takes
    (48 per device from Volta, compute capability 7.0, on; 16 before).
  - Given O(replicas), also the memory each replica gets when the GPU is shared that many ways
    (total MiB divided by replicas, rounded down), as the NVIDIA device plugin computes it.
  - Changes nothing.
extends_documentation_fragment:
  - gpulab.mps.attributes
  - gpulab.mps.attributes.info_module
options:
  replicas:
    description:
      - Number of MPS replicas (shares) per GPU, for the per-replica memory.
    type: int
requirements:
  - nvidia-ml-py (module pynvml) on the target
  - the NVIDIA driver (libnvidia-ml.so.1)
author:
  - gpulab.mps contributors (@gpulab)
"""

EXAMPLES = r"""
- name: List the GPUs, and what each of 4 replicas gets
  gpulab.mps.gpu_info:
    replicas: 4
  register: gpu

- name: Memory per replica of the first GPU
  ansible.builtin.debug:
    msg: "{{ gpu.gpus[0].memory_per_replica_mib }} MiB"
"""

RETURN = r"""
driver_version:
  description: Driver version.
  returned: always
  type: str
  sample: 580.159.04
cuda_driver_version:
  description: Newest CUDA version the driver supports.
  returned: always
  type: str
  sample: "13.0"
gpu_count:
  description: Number of GPUs.
  returned: always
  type: int
  sample: 1
gpus:
  description: One entry per GPU, by NVML index.
  returned: always
  type: list
  elements: dict
  sample:
    - index: 0
      uuid: GPU-058fcf08-fc4a-49f5-ddd9-6d7fedc642b2
      name: NVIDIA H100 80GB HBM3
      compute_capability: "9.0"
      memory_total_bytes: 85520809984
      memory_used_bytes: 912916480
      memory_free_bytes: 84607893504
      memory_total_mib: 81559
      memory_used_mib: 870
      memory_free_mib: 80689
      compute_mode: default
      mig_mode_current: disabled
      mig_mode_pending: disabled
      mps_client_cap: 48
      replicas: 4
      memory_per_replica_mib: 20389
      replicas_within_cap: true
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.gpulab.mps.plugins.module_utils._common import query_gpus
from ansible_collections.gpulab.mps.plugins.module_utils._sizes import replica_memory_mib


def add_replicas(gpu, replicas):
    """The per-replica view of one GPU."""
    return dict(gpu, replicas=replicas, memory_per_replica_mib=replica_memory_mib(gpu["memory_total_mib"], replicas),
                replicas_within_cap=replicas <= gpu["mps_client_cap"])


def main():
    module = AnsibleModule(argument_spec=dict(replicas=dict(type="int")), supports_check_mode=True)
    replicas = module.params["replicas"]
    if replicas is not None and replicas < 1:
        module.fail_json(msg="replicas must be at least 1, got %d" % replicas)
    driver, gpus = query_gpus(module)
    if replicas is not None:
        gpus = [add_replicas(gpu, replicas) for gpu in gpus]
        for gpu in gpus:
            if not gpu["replicas_within_cap"]:
                module.warn("GPU %d (%s, compute capability %s) takes at most %d MPS clients; %d replicas exceed "
                            "that" % (gpu["index"], gpu["name"], gpu["compute_capability"], gpu["mps_client_cap"],
                                      replicas))
    module.exit_json(changed=False, driver_version=driver["driver_version"],
                     cuda_driver_version=driver["cuda_driver_version"], gpu_count=len(gpus), gpus=gpus)


if __name__ == "__main__":
    main()
