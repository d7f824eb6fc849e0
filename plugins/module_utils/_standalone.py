# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""What the collection's module_utils ask of an Ansible `module`, for a program that runs without Ansible.

This is a private module_utils of gpulab.mps: its API may change without notice. STANDARD LIBRARY ONLY.

_mps_control.MpsControl and _command.run_bounded take an Ansible-like `module` only for run_command (and
fail_json when a binary cannot be executed). The metrics collector (roles/mps_metrics) runs from a systemd timer,
with no Ansible on the host: Runner is that `module`, on subprocess, with the same argv-only, no-shell calls, so
that the collector uses the very client, parser and health judgement the modules use.
"""

from __future__ import annotations

import os
import subprocess


class RunnerError(RuntimeError):
    """fail_json of a Runner: the message and the fields a module would have returned."""

    def __init__(self, msg, **details):
        super(RunnerError, self).__init__(msg)
        self.details = details


class Runner(object):
    """The part of AnsibleModule that _command.run_bounded uses: run_command, fail_json, get_bin_path.

    env: the environment commands start from (default: this process's), under each call's environ_update."""

    check_mode = False

    def __init__(self, env=None):
        self.env = env

    def run_command(self, args, data=None, environ_update=None, before_communicate_callback=None,
                    handle_exceptions=True, binary_data=False, check_rc=False):
        """(rc, stdout, stderr) of argv `args` (a list; never a shell), as AnsibleModule.run_command returns them.

        data goes to stdin, with a newline added unless binary_data (as run_command does); environ_update is laid
        over this process's environment; before_communicate_callback(proc) is called once the child runs, before
        its output is read (run_bounded arms its timer there). With handle_exceptions an OSError becomes
        fail_json, else it is raised.
        """
        if not isinstance(args, (list, tuple)) or not args:
            raise TypeError("run_command takes an argv list, got %r" % (args,))
        env = dict(os.environ if self.env is None else self.env)
        env.update(environ_update or {})
        if data is not None and not binary_data:
            data = data if data.endswith("\n") else data + "\n"
        try:
            proc = subprocess.Popen([str(a) for a in args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, env=env, close_fds=True)
            if before_communicate_callback is not None:
                before_communicate_callback(proc)
            out, err = proc.communicate(data.encode("utf-8") if isinstance(data, str) else data)
        except OSError as error:
            if not handle_exceptions:
                raise
            self.fail_json(msg="Error executing %s: %s" % (args[0], error), cmd=list(args), rc=None)
        rc = proc.returncode
        out, err = out.decode("utf-8", "replace"), err.decode("utf-8", "replace")
        if check_rc and rc != 0:
            self.fail_json(msg="%s exited %d" % (args[0], rc), cmd=list(args), rc=rc, stdout=out, stderr=err)
        return rc, out, err

    def fail_json(self, msg, **details):
        raise RunnerError(msg, **details)

    @staticmethod
    def get_bin_path(name, required=False, opt_dirs=None):
        for directory in os.environ.get("PATH", "").split(os.pathsep) + list(opt_dirs or []):
            path = os.path.join(directory, name)
            if directory and os.path.isfile(path) and os.access(path, os.X_OK):
                return path
        if required:
            raise RunnerError("%s not found in PATH or %s" % (name, ", ".join(opt_dirs or [])))
        return None
