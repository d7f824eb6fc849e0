# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""External commands with a bound: AnsibleModule.run_command, killed when it runs past its timeout.

This is a private module_utils of gpulab.mps: its API may change without notice.

run_command has no timeout of its own; a control binary that hangs would hang the module and the
play. run_bounded arms a timer on the child (through run_command's before_communicate_callback) and
kills it when the time is up; run_command then returns what the child printed so far, and
run_bounded raises CommandTimeout with it.
"""

from __future__ import annotations

import threading

# No external call of the collection may wait longer than this, whatever a user asks.
MAX_TIMEOUT = 3600


class CommandTimeout(Exception):
    """A command ran past its bound and was killed."""

    def __init__(self, argv, timeout, stdout="", stderr=""):
        super(CommandTimeout, self).__init__("%s did not finish within %s s and was killed" % (
            " ".join(str(a) for a in argv), timeout))
        self.cmd = list(argv)
        self.timeout = timeout
        self.stdout = stdout
        self.stderr = stderr

    def details(self):
        return {"cmd": self.cmd, "rc": None, "stdout": self.stdout, "stderr": self.stderr, "timeout": self.timeout}


def run_bounded(module, argv, timeout, **kwargs):
    """module.run_command(argv, **kwargs), killed after `timeout` seconds: (rc, stdout, stderr).

    Raises CommandTimeout (with what the command printed until then) when it had to be killed.
    """
    timeout = float(timeout)
    state = {"killed": False, "timer": None}

    def kill(proc):
        if proc.poll() is None:
            state["killed"] = True
            proc.kill()

    def arm(proc):
        state["timer"] = threading.Timer(timeout, kill, (proc,))
        state["timer"].daemon = True
        state["timer"].start()

    try:
        rc, out, err = module.run_command(argv, before_communicate_callback=arm, **kwargs)
    finally:
        if state["timer"] is not None:
            state["timer"].cancel()
    if state["killed"]:
        raise CommandTimeout(argv, timeout, out, err)
    return rc, out, err
