# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""run_bounded: AnsibleModule.run_command with a bound, over real child processes."""

from __future__ import annotations

import time

import pytest

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.testing import patch_module_args

from ansible_collections.gpulab.mps.plugins.module_utils._command import CommandTimeout, run_bounded


@pytest.fixture
def module():
    with patch_module_args({}):
        yield AnsibleModule(argument_spec={})


def script(tmp_path, body):
    path = tmp_path / "tool"
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return str(path)


def test_a_command_that_answers(module, tmp_path):
    assert run_bounded(module, [script(tmp_path, "cat\n")], 10, data="ps") == (0, "ps\n", "")


def test_a_command_that_hangs_is_killed_with_what_it_printed(module, tmp_path):
    started = time.time()
    with pytest.raises(CommandTimeout) as raised:
        run_bounded(module, [script(tmp_path, "echo begun\nexec sleep 600\n")], 1, data="ps")
    assert time.time() - started < 10
    assert raised.value.stdout == "begun\n" and raised.value.details()["timeout"] == 1.0


def test_a_command_that_does_not_read_its_stdin_still_answers(module, tmp_path):
    """Regression (seen on the H200): the control CLI exits without reading stdin when no daemon listens; the write
    of the command then broke the pipe and run_command failed with 'Error executing command: [Errno 32] Broken
    pipe' instead of returning the CLI's 'Cannot find MPS control daemon process'."""
    tool = script(tmp_path, "exec 0<&-\nsleep 0.3\necho 'Cannot find MPS control daemon process'\nexit 1\n")
    assert run_bounded(module, [tool], 10, data="get_server_list") == (
        1, "Cannot find MPS control daemon process\n", "")
