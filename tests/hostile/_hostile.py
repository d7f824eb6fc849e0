# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the hostile replays of issue 20 share: real users and their processes, the stand-in daemon, the modules run
as Ansible runs them (with the environment and the time they took), and what a user checks afterwards.

Nothing here knows how the collection works inside: the tests look at module results, files, processes and time.
The fixtures that make and remove users, folders and daemons are in conftest.py beside this file.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
STANDINS = os.path.join(ROOT, "tests", "standins")
STANDIN = os.path.join(STANDINS, "nvidia-cuda-mps-control")
sys.path.insert(0, os.path.join(ROOT, "tests", "unit"))
from module_file import CONTROL  # noqa: E402  (the stand-in, wrapped as an executable for root)

# Every replay needs root (to make users and run the modules as root does); CI runs them as root.
NEEDS_ROOT = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("useradd") or not os.path.exists("/usr/bin/python3"),
    reason="the hostile replays need root, useradd and /usr/bin/python3 (CI has them)")

# The Python a throwaway user may run (a venv under root's home is not his to run).
USER_PYTHON = "/usr/bin/python3"
# The ps table of the H200 (driver 580): PID ID SERVER DEVICE NAMESPACE COMMAND, fixed widths.
PS_FORMAT = "%-10s%-10s%-15s%-26s%-15s%-15s"
GPU0 = "GPU-058fcf08-fc4a-49f5"   # the stand-in's GPU 0 (the recorded H100), cut to 22 characters as ps prints it


# --- processes -----------------------------------------------------------------------------------------------------

def alive(pid):
    """Whether pid is a live process (a zombie is dead)."""
    try:
        with open("/proc/%d/stat" % pid) as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def cmdline(pid):
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as handle:
            return handle.read()
    except OSError:
        return b""


def pids_of_uid(uid):
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.stat("/proc/" + entry).st_uid == uid and alive(int(entry)):
                    found.append(int(entry))
            except OSError:
                continue
    return found


def host_pid_namespace():
    return os.readlink("/proc/self/ns/pid").split("[", 1)[1].rstrip("]")


def wait_until(predicate, seconds, interval=0.05):
    deadline = time.time() + seconds
    while True:
        value = predicate()
        if value or time.time() >= deadline:
            return value
        time.sleep(interval)


def kill_pid(pid):
    """SIGKILL one process by its PID (only PIDs this suite started come here)."""
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:
        pass


class Processes(object):
    """Every process a test starts: each ended by its PID at the end of the test."""

    def __init__(self):
        self.procs = []
        self.pids = []

    def start(self, argv, user=None, **kwargs):
        """Popen(argv), as `user` ({"uid", "gid"}) when given; stdout/stderr to /dev/null unless given."""
        kwargs.setdefault("stdout", subprocess.DEVNULL)
        kwargs.setdefault("stderr", subprocess.DEVNULL)
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        if user is not None:
            kwargs.update(user=user["uid"], group=user["gid"], extra_groups=[])
        proc = subprocess.Popen(argv, cwd="/", **kwargs)
        self.procs.append(proc)
        return proc

    def sleeper(self, user=None, argv0=None, seconds=600):
        """A process that sleeps: as `user` (root when None), with argv[0] set to `argv0` (str or bytes, as
        `exec -a` or os.execv set it) once it runs. Returns its Popen; its PID is the sleeping process's."""
        if argv0 is None:
            return self.start(["sleep", str(seconds)], user=user)
        raw = argv0.encode("utf-8") if isinstance(argv0, str) else argv0
        code = "import os, sys; os.execv('/bin/sleep', [bytes.fromhex(sys.argv[1]), b'%d'])" % seconds
        proc = self.start([USER_PYTHON, "-c", code, raw.hex()], user=user)
        assert wait_until(lambda: cmdline(proc.pid).split(b"\0", 1)[0] == raw, 10), \
            "the process with argv[0] %r did not start" % (raw,)
        return proc

    def remember(self, pid):
        """A process the test did not Popen but must end (a grandchild a fake binary left behind)."""
        self.pids.append(pid)

    def cleanup(self):
        for proc in self.procs:
            if proc.poll() is None:
                kill_pid(proc.pid)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
        for pid in self.pids:
            if alive(pid):
                kill_pid(pid)


def as_user(user, code, timeout=30):
    """Run Python `code` as `user`; returns its stdout (fails the test when it fails)."""
    done = subprocess.run([USER_PYTHON, "-c", code], user=user["uid"], group=user["gid"], extra_groups=[],
                          capture_output=True, text=True, timeout=timeout, check=False, cwd="/")
    assert done.returncode == 0, done.stderr
    return done.stdout


# --- the stand-in daemon -------------------------------------------------------------------------------------------

def mps_env(pipe, log):
    return dict(os.environ, CUDA_MPS_PIPE_DIRECTORY=pipe, CUDA_MPS_LOG_DIRECTORY=log)


def control(lab, command, user=None, binary=None):
    """`printf COMMAND | nvidia-cuda-mps-control` for the lab's pipe directory, as root or as `user`: the raw
    stdout (bytes). COMMAND is sent as it is (str or bytes), a newline added."""
    data = command if isinstance(command, bytes) else command.encode("utf-8", "surrogateescape")
    env = mps_env(lab["pipe"], lab["log"])
    if user is None:
        argv = [binary or CONTROL]
        kwargs = {}
    else:
        # What any user on the host may run: the CLI, with the system's Python (the stand-in is stdlib only).
        argv = [USER_PYTHON, STANDIN]
        kwargs = {"user": user["uid"], "group": user["gid"], "extra_groups": []}
        env = {"PATH": "/usr/bin:/bin", "CUDA_MPS_PIPE_DIRECTORY": lab["pipe"], "CUDA_MPS_LOG_DIRECTORY": lab["log"]}
    done = subprocess.run(argv, input=data + b"\n", capture_output=True, env=env, timeout=60, check=False, cwd="/",
                          **kwargs)
    return done.stdout


def ctl(lab, command):
    """control() as text, for the commands root sends to look at the daemon."""
    return control(lab, command).decode("utf-8", "replace")


def start_daemon(lab):
    """Root starts the stand-in daemon for the lab (as `nvidia-cuda-mps-control -d` does); returns its pid."""
    env = mps_env(lab["pipe"], lab["log"])
    subprocess.run([CONTROL, "-d"], env=env, check=True, timeout=30, capture_output=True)
    pid_file = os.path.join(lab["pipe"], "nvidia-cuda-mps-control.pid")
    assert wait_until(lambda: os.path.exists(pid_file), 10)
    return daemon_pid(lab)


def daemon_pid(lab):
    try:
        with open(os.path.join(lab["pipe"], "nvidia-cuda-mps-control.pid")) as handle:
            return int(handle.read().strip())
    except (OSError, ValueError):
        return None


def servers(lab):
    return [int(line) for line in ctl(lab, "get_server_list").split() if line.isdigit()]


def attach(lab, pid, uid=0, device=0):
    """The stand-in's hidden test hook: live process `pid` becomes a client of the server of `uid`. Returns that
    server's PID."""
    before = set(servers(lab))
    answer = ctl(lab, "standin_attach_client %d %d %d" % (pid, device, uid))
    assert answer == "", answer
    for server in servers(lab):
        if pid in client_list(lab, server):
            return server
    raise AssertionError("client %d is on no server (before: %s)" % (pid, sorted(before)))


def client_list(lab, server):
    return [int(line) for line in ctl(lab, "get_client_list %d" % server).split() if line.isdigit()]


def status(lab, server):
    return ctl(lab, "get_server_status %d" % server).strip()


def fault(lab, pid):
    """The stand-in's hidden test hook: client `pid` hits a fatal GPU error; its server goes to FAULT."""
    assert ctl(lab, "standin_fault %d" % pid) == ""


def ps_row(pid, server, namespace, command, client_id=9, device=GPU0):
    """One row of the H200's ps table (what a forged one must look like to pass for real)."""
    return PS_FORMAT % (pid, client_id, server, device, namespace, command)


def log_line(pid, message, source="Control"):
    """One control.log line as the daemon writes it: [2026-12-04 10:00:00.000 Control   407] message."""
    now = datetime.datetime.now()
    return "[%s.%03d %s   %d] %s" % (now.strftime("%Y-%m-%d %H:%M:%S"), now.microsecond // 1000, source, pid, message)


# --- the modules, as Ansible runs them -----------------------------------------------------------------------------

class ModuleRun(object):
    """One run of a module: result (its JSON), elapsed seconds, raw output size, stderr."""

    def __init__(self, result, elapsed, size, stderr):
        self.result = result
        self.elapsed = elapsed
        self.size = size
        self.stderr = stderr

    def __getitem__(self, key):
        return self.result[key]

    def get(self, key, default=None):
        return self.result.get(key, default)


def run_module(name, args, folder, check=False, env=None, limit=120):
    """Run plugins/modules/NAME.py with ARGS as Ansible does (`python MODULE.py ARGS_FILE`), with the stand-in
    pynvml first on the path and the environment `env` (default: this one) under it; a ModuleRun.

    The module runs in a session of its own; when it has not returned after `limit` seconds, the whole session is
    killed and the test fails, saying so. A traceback anywhere fails the test."""
    path = os.path.join(folder, "%s-%d.json" % (name, time.monotonic_ns()))
    with open(path, "w") as handle:
        json.dump({"ANSIBLE_MODULE_ARGS": dict(args, _ansible_check_mode=check)}, handle)
    environment = dict(os.environ if env is None else env)
    environment["PYTHONPATH"] = os.pathsep.join([os.path.join(ROOT, ".collections"), STANDINS])
    started = time.time()
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "plugins", "modules", name + ".py"), path],
                            env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, start_new_session=True, cwd="/")
    try:
        out, err = proc.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            pass
        proc.stdout.close()
        proc.stderr.close()
        proc.wait(30)
        raise AssertionError("%s did not return within %d s (killed by the test); args %r" % (name, limit, args))
    elapsed = time.time() - started
    text, errors = out.decode("utf-8", "replace"), err.decode("utf-8", "replace")
    assert "Traceback" not in text + errors, (text + errors)[-6000:]
    lines = text.strip().splitlines()
    assert lines, "%s printed nothing; stderr: %s" % (name, errors[-3000:])
    return ModuleRun(json.loads(lines[-1]), elapsed, len(out), errors)


def summary(run):
    """What a failed assertion shows of a module's result (its msg and the first bytes of the rest)."""
    result = run.result if isinstance(run, ModuleRun) else run
    return "msg=%r; result=%s" % (result.get("msg"), json.dumps(result)[:3000])


# --- ansible-playbook against localhost and the stand-ins ----------------------------------------------------------

def playbook(play, inventory, variables, folder, env=None, limit=600):
    """ansible-playbook PLAY on localhost with `variables` (extra vars, from a JSON file); the CompletedProcess."""
    binary = os.path.join(os.path.dirname(sys.executable), "ansible-playbook")
    extra = os.path.join(folder, "vars-%d.json" % time.monotonic_ns())
    with open(extra, "w") as handle:
        json.dump(variables, handle)
    environment = dict(os.environ if env is None else env)
    environment.update(ANSIBLE_CONFIG=os.path.join(ROOT, "ansible.cfg"), ANSIBLE_NOCOLOR="1",
                       ANSIBLE_STDOUT_CALLBACK="ansible.builtin.default",
                       PYTHONPATH=STANDINS, ANSIBLE_LOCAL_TEMP=os.path.join(folder, "ansible-tmp"))
    return subprocess.run([binary, "-i", inventory, play, "-e", "@" + extra], cwd=ROOT, env=environment,
                          capture_output=True, text=True, timeout=limit, check=False)


def oneline(text):
    return " ".join((text or "").split())


# --- files ---------------------------------------------------------------------------------------------------------

def tree(*roots):
    """Everything under roots, without following links: {path: (type, mode, uid, size, content hash or target)}."""
    seen = {}
    for root in roots:
        if not os.path.lexists(root):
            continue
        for folder, dirs, files in os.walk(root, followlinks=False):
            for name in [""] + dirs + files:
                path = os.path.join(folder, name) if name else folder
                st = os.lstat(path)
                extra = None
                if stat.S_ISLNK(st.st_mode):
                    extra = os.readlink(path)
                elif stat.S_ISREG(st.st_mode):
                    with open(path, "rb") as handle:
                        extra = hashlib.sha256(handle.read()).hexdigest()
                seen[path] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid, st.st_size, extra)
            if os.path.islink(root):
                break
    return seen


def owner_and_mode(path):
    st = os.lstat(path)
    return st.st_uid, stat.S_IMODE(st.st_mode)


def script(path, body, mode=0o755):
    """An executable /bin/sh script at path."""
    with open(path, "w") as handle:
        handle.write("#!/bin/sh\n" + body)
    os.chmod(path, mode)
    return path


def python_wrapper(path, target, *args):
    """An executable that runs `target` (a Python file) with this Python and `args` before its own arguments."""
    quoted = " ".join(shlex.quote(a) for a in [sys.executable, target] + list(args))
    return script(path, 'exec %s "$@"\n' % quoted)


# --- the metrics collector, installed as the mps_metrics role installs it ------------------------------------------

def plan_for(lab, folder, control_binary=CONTROL, **extra):
    """The host's plan (mps_plan, the stand-in NVML) for the lab's directories and this control binary."""
    done = run_module("mps_plan", dict({"pipe_directory": lab["pipe"], "log_directory": lab["log"],
                                        "state_directory": lab["state"], "control_binary": control_binary}, **extra),
                      folder)
    assert not done.get("failed"), summary(done)
    return done["plan"]


def install_collector(base, plan, timeout):
    """The collector's layout under base (root's 0755): the module_utils the role lists, the script, the
    configuration (the plan, a textfile directory, the timeout). Returns {"config", "textfile", "script"}."""
    import yaml
    with open(os.path.join(ROOT, "roles", "mps_client", "vars", "main.yml")) as handle:
        files = yaml.safe_load(handle)["__mps_client_module_utils"]
    lib = os.path.join(base, "lib")
    module_utils = os.path.join(lib, "ansible_collections", "gpulab", "mps", "plugins", "module_utils")
    os.makedirs(module_utils, 0o755)
    for name in files:
        shutil.copy(os.path.join(ROOT, "plugins", "module_utils", name), os.path.join(module_utils, name))
    script_path = os.path.join(lib, "gpulab_mps_metrics.py")
    shutil.copy(os.path.join(ROOT, "roles", "mps_metrics", "files", "gpulab_mps_metrics.py"), script_path)
    etc, textfile = os.path.join(base, "etc"), os.path.join(base, "textfile")
    os.makedirs(etc, 0o755)
    os.makedirs(textfile, 0o755)
    config = os.path.join(etc, "metrics.json")
    with open(os.path.join(etc, "plan.json"), "w") as handle:
        json.dump(plan, handle)
    with open(config, "w") as handle:
        json.dump({"textfile_directory": textfile, "timeout": timeout, "plan_file": os.path.join(etc, "plan.json")},
                  handle)
    return {"config": config, "textfile": textfile, "script": script_path}


def run_collector(collector, limit=120):
    """One run of the collector as its unit runs it (root, the venv's Python): (rc, stdout+stderr, elapsed).
    It runs in a session of its own; past `limit` seconds the session is killed and the test fails, saying so."""
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": STANDINS}  # the stand-in pynvml: no GPU here
    started = time.time()
    proc = subprocess.Popen([sys.executable, collector["script"], "--config", collector["config"]], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                            start_new_session=True, cwd="/")
    try:
        out, err = proc.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            pass
        proc.stdout.close()
        proc.stderr.close()
        proc.wait(30)
        raise AssertionError("the metrics collector did not return within %d s (killed by the test)" % limit)
    text = (out + err).decode("utf-8", "replace")
    assert "Traceback" not in text, text[-6000:]
    return proc.returncode, text, time.time() - started


def series(collector):
    """The .prom file the collector wrote: {'name{labels}': value}."""
    found = {}
    with open(os.path.join(collector["textfile"], "gpulab_mps.prom")) as handle:
        for line in handle:
            if line.strip() and not line.startswith("#"):
                key, value = line.rsplit(None, 1)
                found[key] = float(value)
    return found
