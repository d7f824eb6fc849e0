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

import errno
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

    Raises CommandTimeout (with what the command printed until then) when it had to be killed. A command that
    exits before it reads its stdin (the control CLI does, when no daemon listens) is not an error: its answer
    is read as usual (run_command itself would fail on the broken pipe).
    """
    timeout = float(timeout)
    state = {"killed": False, "timer": None, "proc": None}

    def kill(proc):
        if proc.poll() is None:
            state["killed"] = True
            proc.kill()

    def arm(proc):
        state["proc"] = proc
        state["timer"] = threading.Timer(timeout, kill, (proc,))
        state["timer"].daemon = True
        state["timer"].start()

    try:
        try:
            rc, out, err = module.run_command(argv, before_communicate_callback=arm, handle_exceptions=False, **kwargs)
        except OSError as error:
            proc = state["proc"]
            if error.errno != errno.EPIPE or proc is None:
                module.fail_json(msg="Error executing %s: %s" % (argv[0], error), cmd=list(argv), rc=None,
                                 stdout="", stderr="")
            rc, out, err = _finish(proc, timeout)
    finally:
        if state["timer"] is not None:
            state["timer"].cancel()
    if state["killed"]:
        raise CommandTimeout(argv, timeout, out, err)
    return rc, out, err


def _finish(proc, timeout):
    """(rc, stdout, stderr) of a child whose stdin is gone, read to the end within the bound."""
    try:
        proc.stdin.close()
    except (OSError, ValueError):
        pass  # the data that could not be written: the command never wanted it
    proc.stdin = None
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out.decode("utf-8", "replace"), err.decode("utf-8", "replace")
