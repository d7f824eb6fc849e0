#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: driver_check
short_description: Check that the NVIDIA driver is present and recent enough for MPS
version_added: 0.1.0
description:
  - Reads the driver version, its branch and the CUDA version the driver supports through NVML.
  - Fails with a message that says what to do when NVML or the driver is missing, when the kernel
    driver is not loaded, or when the driver is older than O(min_version).
  - Changes nothing.
extends_documentation_fragment:
  - gpulab.mps.attributes
  - gpulab.mps.attributes.info_module
options:
  min_version:
    description:
      - Oldest driver accepted, as a branch (V(550)) or a full version (V(550.54.15)).
    type: str
    default: "550"
requirements:
  - nvidia-ml-py (module pynvml) on the target
  - the NVIDIA driver (libnvidia-ml.so.1)
author:
  - gpulab.mps contributors (@gpulab)
"""

EXAMPLES = r"""
- name: Require driver 550 or newer
  gpulab.mps.driver_check:

- name: Require a specific point release
  gpulab.mps.driver_check:
    min_version: 570.124.06
"""

RETURN = r"""
driver_version:
  description: Driver version.
  returned: success
  type: str
  sample: 580.159.04
driver_branch:
  description: Major version (branch) of the driver.
  returned: success
  type: int
  sample: 580
cuda_driver_version:
  description: Newest CUDA version the driver supports.
  returned: success
  type: str
  sample: "13.0"
nvml_version:
  description: Version of the NVML library.
  returned: success
  type: str
  sample: 13.580.159.04
min_version:
  description: The minimum that was checked.
  returned: always
  type: str
  sample: "550"
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.gpulab.mps.plugins.module_utils._common import query_gpus
from ansible_collections.gpulab.mps.plugins.module_utils._nvml import driver_problem, version_tuple


def main():
    module = AnsibleModule(argument_spec=dict(min_version=dict(type="str", default="550")),
                           supports_check_mode=True)
    minimum = module.params["min_version"]
    try:
        version_tuple(minimum)
    except ValueError as error:
        module.fail_json(msg="min_version: %s" % error, min_version=minimum)
    driver, _gpus = query_gpus(module)
    problem = driver_problem(driver["driver_version"], minimum)
    if problem:
        module.fail_json(msg=problem, min_version=minimum, **driver)
    module.exit_json(changed=False, min_version=minimum, **driver)


if __name__ == "__main__":
    main()
