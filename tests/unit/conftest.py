# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Fixtures of the unit tests: recorded H100 output, and a harness that drives modules as Ansible does.

The collection is importable through pytest.ini's pythonpath (.collections, made by `make collection`).
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if not os.path.isdir(os.path.join(ROOT, ".collections", "ansible_collections", "gpulab", "mps")):
    raise RuntimeError("%s/.collections/ansible_collections/gpulab/mps is missing: run `make collection` first" % ROOT)


# --- recorded H100 output -------------------------------------------------------------------------
FIXTURES = os.path.join(ROOT, "tests", "unit", "fixtures", "h100-transcripts")
_COMMAND_RE = re.compile(r"^\$ (?:echo (?P<quoted>\"?)(?P<stdin>.*?)(?P=quoted) \| )?(?P<argv>.*)$")


def load_transcript(name):
    """Entries of a recorded transcript: [{"command", "stdin", "output", "rc"}].

    A file holds `$ <command line>`, the output, then `[exit N]`; the exploration file holds many.
    For `echo X | nvidia-cuda-mps-control`, "stdin" is X, which is what the modules send.
    """
    with open(os.path.join(FIXTURES, name)) as handle:
        lines = handle.read().splitlines()
    entries, current = [], None
    for line in lines:
        match = re.match(r"^\[exit (\d+)\]$", line)
        if line.startswith("$ "):
            command = _COMMAND_RE.match(line)
            current = {"command": line[2:], "stdin": command.group("stdin"), "output": [], "rc": None}
        elif match and current is not None:
            current["rc"] = int(match.group(1))
            current["output"] = "\n".join(current["output"]) + ("\n" if current["output"] else "")
            entries.append(current)
            current = None
        elif current is not None:
            current["output"].append(line)
    return entries


def transcript_output(name, stdin=None):
    """(output, rc) of the one entry of a transcript file, or of the first entry sent `stdin`."""
    for entry in load_transcript(name):
        if stdin is None or entry["stdin"] == stdin:
            return entry["output"], entry["rc"]
    raise KeyError("%s has no entry for %r" % (name, stdin))


def transcript_text(name):
    """A recorded file whose content is not command/exit structured (logs, NVML dump)."""
    with open(os.path.join(FIXTURES, name)) as handle:
        return handle.read()


@pytest.fixture
def transcript():
    return transcript_output


# --- driving modules ------------------------------------------------------------------------------
class ModuleExit(Exception):
    """exit_json / fail_json of a module under test, with the result."""

    def __init__(self, result, failed):
        super(ModuleExit, self).__init__(result.get("msg"))
        self.result = result
        self.failed = failed


@pytest.fixture
def run_module(monkeypatch):
    """run_module(module, args, check_mode=False, diff=False) -> (result, failed); main() driven as Ansible does."""
    from ansible.module_utils import basic
    from ansible.module_utils.testing import patch_module_args

    def exit_json(self, **kwargs):
        kwargs.setdefault("changed", False)
        kwargs.setdefault("warnings", [])
        kwargs["warnings"] = list(kwargs["warnings"]) + list(getattr(self, "_gpulab_warnings", []))
        raise ModuleExit(kwargs, False)

    def fail_json(self, msg, **kwargs):
        kwargs["msg"] = msg
        raise ModuleExit(kwargs, True)

    def warn(self, warning):
        self._gpulab_warnings = getattr(self, "_gpulab_warnings", []) + [warning]

    monkeypatch.setattr(basic.AnsibleModule, "exit_json", exit_json)
    monkeypatch.setattr(basic.AnsibleModule, "fail_json", fail_json)
    monkeypatch.setattr(basic.AnsibleModule, "warn", warn)

    def run(module, args, check_mode=False, diff=False):
        args = dict(args, _ansible_check_mode=check_mode, _ansible_diff=diff)
        with patch_module_args(args):
            try:
                module.main()
            except ModuleExit as done:
                return done.result, done.failed
        raise AssertionError("the module returned without exit_json or fail_json")

    return run


class FakeCli(object):
    """Stands for _command.run_bounded (every external call of the collection): answers each expected call in order,
    recording the calls.

    expect(argv, data, output, rc) queues one call; replies not in the queue fail the test. Every call is
    checked for its exact argv and stdin, which is what the real CLI receives.
    """

    def __init__(self):
        self.expected = []
        self.calls = []

    def expect(self, argv, data=None, output="", rc=0, err="", effect=None, repeat=False):
        """effect: called when the command runs (what the real command does to the host, e.g. a pid file).
        repeat: answer this call as often as it comes (a poll), until another one comes."""
        self.expected.append((list(argv), data, output, rc, err, effect, repeat))
        return self

    def __call__(self, args, timeout, data=None, env=None, **kwargs):
        self.calls.append({"argv": list(args), "data": data, "env": dict(env or {}), "timeout": timeout})
        while self.expected and self.expected[0][6] and (self.expected[0][0], self.expected[0][1]) != (list(args), data):
            self.expected.pop(0)  # a poll that has ended
        if not self.expected:
            raise AssertionError("unexpected command %r with stdin %r" % (args, data))
        argv, want_data, output, rc, err, effect, repeat = self.expected[0] if self.expected[0][6] \
            else self.expected.pop(0)
        assert list(args) == argv, "argv %r, expected %r" % (args, argv)
        assert data == want_data, "stdin %r, expected %r (argv %r)" % (data, want_data, args)
        if effect:
            effect()
        return rc, output, err

    def done(self):
        left = [(e[0], e[1]) for e in self.expected if not e[6]]
        assert not left, "commands not run: %r" % left


@pytest.fixture
def fake_cli(monkeypatch):
    from ansible_collections.gpulab.mps.plugins.module_utils import _command
    cli = FakeCli()
    monkeypatch.setattr(_command, "run_bounded", cli)
    return cli


class CliAnswers(object):
    """Stands for _command.run_bounded with answers by command (the stdin a call sends): {command: (rc, text)},
    as the CLI answered on a real GPU (e.g. tests/unit/fixtures/h200-fault/sticky-cli.json); a command in `hang`
    runs past its bound. Records every call's argv, stdin and environment."""

    def __init__(self, answers, hang=()):
        self.answers = answers
        self.hang = hang
        self.calls = []

    def __call__(self, args, timeout, data=None, env=None, **kwargs):
        from ansible_collections.gpulab.mps.plugins.module_utils._command import CommandTimeout
        self.calls.append({"argv": list(args), "data": data, "env": dict(env or {})})
        if data in self.hang:
            raise CommandTimeout(args, timeout)
        rc, text = self.answers[data]
        return rc, text if text.endswith("\n") or not text else text + "\n", ""


@pytest.fixture
def cli_answers(monkeypatch):
    """cli_answers(answers, hang=()) -> CliAnswers, installed as _command.run_bounded for the test."""
    from ansible_collections.gpulab.mps.plugins.module_utils import _command

    def install(answers, hang=()):
        fake = CliAnswers(answers, hang)
        monkeypatch.setattr(_command, "run_bounded", fake)
        return fake

    return install


@pytest.fixture
def standin_nvml(monkeypatch):
    """The recorded H100 (tests/standins/pynvml.py, values of 40_nvml.txt) in place of NVML."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("pynvml_standin", os.path.join(ROOT, "tests", "standins", "pynvml.py"))
    standin = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "pynvml_standin", standin)
    spec.loader.exec_module(standin)
    from ansible_collections.gpulab.mps.plugins.module_utils import _nvml
    monkeypatch.setattr(_nvml, "pynvml", standin)
    monkeypatch.setattr(_nvml, "HAS_PYNVML", True)
    from ansible_collections.gpulab.mps.plugins.module_utils import _common
    monkeypatch.setattr(_common, "HAS_PYNVML", True)
    return standin


# --- what a real daemon leaves in its pipe directory -------------------------------------------------------------
def make_socket(path):
    """A Unix socket at `path`, as the daemon makes its `control` (a bound, closed socket stays as a file)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    cwd = os.getcwd()
    try:
        os.chdir(os.path.dirname(str(path)))  # a relative bind: socket paths are limited to 108 bytes
        sock.bind(os.path.basename(str(path)))
    finally:
        os.chdir(cwd)
        sock.close()
    return str(path)


DAEMON_PROCESS = r"""
import ctypes, sys, time
ctypes.CDLL(None).prctl(15, ctypes.c_char_p(b"nvidia-cuda-mps"), 0, 0, 0)  # comm, as the real daemon shows it
print("ready", flush=True)
time.sleep(float(sys.argv[1]))
"""


class DaemonProcess(object):
    """A live process that looks like the control daemon of a pipe directory: its name, its environment, its pid
    file and its control socket. What the modules check before they act on a pid; the CLI itself is faked."""

    def __init__(self, pipe, lifetime=120):
        pipe = str(pipe)
        os.makedirs(pipe, exist_ok=True)
        env = dict(os.environ, CUDA_MPS_PIPE_DIRECTORY=pipe)
        self.proc = subprocess.Popen([sys.executable, "-c", DAEMON_PROCESS, str(lifetime)], env=env,
                                     stdout=subprocess.PIPE)
        self.proc.stdout.readline()
        self.pid = self.proc.pid
        with open(os.path.join(pipe, "nvidia-cuda-mps-control.pid"), "w") as handle:
            handle.write(str(self.pid))
        if not os.path.exists(os.path.join(pipe, "control")):
            make_socket(os.path.join(pipe, "control"))

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


@pytest.fixture
def daemon_process():
    """daemon_process(pipe) -> DaemonProcess; every one is stopped after the test."""
    started = []

    def start(pipe, lifetime=120):
        started.append(DaemonProcess(pipe, lifetime))
        return started[-1]

    yield start
    for daemon in started:
        daemon.stop()


__all__ = ["make_socket", "DaemonProcess", "load_transcript", "transcript_output", "transcript_text", "ModuleExit", "FakeCli"]
