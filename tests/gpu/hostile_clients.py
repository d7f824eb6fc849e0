# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Other users in front of the lab's MPS daemon, for real (issue 20's GPU check; tests/gpu/hostile.yml drives it).

    python3 tests/gpu/hostile_clients.py start --state FILE [--standin]    # clients with hostile names, as 2 users
    python3 tests/gpu/hostile_clients.py odd-commands --state FILE         # a non-root user's odd commands
    python3 tests/gpu/hostile_clients.py fault --state FILE                 # the faulty client hits its error
    python3 tests/gpu/hostile_clients.py check --state FILE                 # JSON: who is alive (victims, clients)
    python3 tests/gpu/hostile_clients.py two-users --state FILE             # two users' clients 1 s apart
    python3 tests/gpu/hostile_clients.py stop --state FILE                  # end everything this script started

As root, on the GPU host, beside the lab's daemon (CUDA_MPS_PIPE_DIRECTORY of the plan). Two throwaway users are made
(gpulab-h20a, gpulab-h20b) and removed by `stop`. `start` runs CuPy clients (one innocent, then hostile-named ones:
argv[0] with a newline, a \\x1e, bytes that are not UTF-8, and ps rows forged to name VICTIM processes as clients of the
running server), a faulty client that will hit an out-of-bounds write on `fault`, and victims: plain processes of
root and of a user, which are nobody's MPS client. Every PID goes into the state file. With --standin (a CPU
rehearsal) the clients use no CUDA: they register with the project's stand-in daemon through its test hook.
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import signal
import subprocess
import sys
import tempfile
import time

USERS = ("gpulab-h20a", "gpulab-h20b")
# The clients' Python: one with CuPy that every user may run (the GPU host's /opt/torch venv), chosen by --client-python,
# and its sys.path: a client's argv[0] is its own (a name with no slash makes Python look for its prefix on PATH, and a
# venv's site-packages would be lost), so the clients get the path of the chosen interpreter in PYTHONPATH.
PYTHON = None
PYTHON_PATH = ""

CLIENT = r"""
import os, sys, time
standin, stop, trigger = sys.argv[1] == "1", sys.argv[2], sys.argv[3]
if standin:
    print("ready %d" % os.getpid(), flush=True)
    while not os.path.exists(stop):
        time.sleep(0.2)
    sys.exit(0)
import cupy as cp
k = cp.RawKernel(r'''extern "C" __global__ void spin(float* x, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x; if (i < n) { float v = x[i];
  for (int j = 0; j < 200; j++) v = v * 0.999f + 0.001f; x[i] = v; } }''', "spin")
oob = cp.RawKernel(r'''extern "C" __global__ void oob(int* p) { p[(size_t)1 << 38] = 1; }''', "oob")
x = cp.zeros(1 << 16, dtype=cp.float32); p = cp.zeros(16, dtype=cp.int32)
k(((1 << 16) // 256,), (256,), (x, cp.int32(1 << 16))); cp.cuda.runtime.deviceSynchronize()
print("ready %d" % os.getpid(), flush=True)
# Whoever read "ready" is gone: from here on the client writes to a file of its own (a print to the dead pipe
# would end it with BrokenPipeError at its first error, and a FAULT that every client leaves at once lasts 0.4 s).
out = os.open(os.path.join(os.environ["CUPY_CACHE_DIR"], "out-%d" % os.getpid()), os.O_WRONLY | os.O_CREAT, 0o600)
os.dup2(out, 1); os.dup2(out, 2)
while not os.path.exists(stop):
    try:
        if trigger and os.path.exists(trigger):
            oob((1,), (1,), (p,)); cp.cuda.runtime.deviceSynchronize(); trigger = ""
        k(((1 << 16) // 256,), (256,), (x, cp.int32(1 << 16))); cp.cuda.runtime.deviceSynchronize()
    except Exception as exc:
        with open(os.path.join(os.environ["CUPY_CACHE_DIR"], "error-%d" % os.getpid()), "w") as handle:
            handle.write("%s: %s\n" % (type(exc).__name__, exc))
        print("ERROR %s: %s" % (type(exc).__name__, exc), flush=True)
        while not os.path.exists(stop):   # a service that logs its error and keeps its process
            time.sleep(0.2)
        sys.exit(3)
    time.sleep(0.05)
"""


def find_python(standin, given=None):
    """A python3 that another user may run and, unless this is a rehearsal, that imports CuPy."""
    tried = []
    for path in [given] if given else ("/opt/torch/.venv/bin/python3", "/usr/local/bin/python3", "/usr/bin/python3",
                                       sys.executable):
        if not os.path.exists(path):
            tried.append("%s: missing" % path)
            continue
        probe = ["-c", "import os"] if standin else ["-c", "import cupy"]
        nobody = pwd.getpwnam("nobody")
        cache = tempfile.mkdtemp(prefix="gpulab-h20-probe-")
        os.chown(cache, nobody.pw_uid, nobody.pw_gid)
        try:
            # CuPy makes its kernel cache under HOME when it is imported: nobody's home does not exist.
            done = subprocess.run([path] + probe, capture_output=True, timeout=120, check=False, cwd="/",
                                  user=nobody.pw_uid, group=nobody.pw_gid, extra_groups=[],
                                  env={"PATH": "/usr/bin:/bin", "HOME": cache, "CUPY_CACHE_DIR": cache})
        finally:
            subprocess.run(["rm", "-rf", cache], check=False, timeout=60)
        if done.returncode == 0:
            return path
        tried.append("%s: %s" % (path, done.stderr.decode("utf-8", "replace").strip()[-300:]))
    raise SystemExit("no python3 with CuPy that every user may run (give --client-python): " + "; ".join(tried))


def run(argv, **kwargs):
    return subprocess.run(argv, capture_output=True, encoding="utf-8", errors="replace", timeout=60, check=False,
                          **kwargs)


def load(path):
    with open(path) as handle:
        return json.load(handle)


def save(path, state):
    with open(path, "w") as handle:
        json.dump(state, handle, indent=1, sort_keys=True)


def make_users():
    for name in USERS:
        run(["pkill", "-KILL", "-u", name])   # left by a run that was killed: this script's users only
        run(["userdel", name])
        done = run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name])
        if done.returncode:
            raise SystemExit("useradd %s: %s" % (name, done.stderr))
    return dict((name, pwd.getpwnam(name).pw_uid) for name in USERS)


def spawn(argv0, args, uid=None, env=None, out=None):
    """A process whose argv[0] is `argv0` (bytes: any, as a client chooses it), as `uid`."""
    if env is not None and PYTHON_PATH:
        env = dict(env, PYTHONPATH=PYTHON_PATH)
    launcher = ("import os, sys; os.execv(sys.argv[1], [bytes.fromhex(sys.argv[2])] + sys.argv[3:])")
    argv = [PYTHON, "-c", launcher, PYTHON, argv0.hex()] + list(args)
    kwargs = {}
    if uid is not None:
        kwargs.update(user=uid, group=pwd.getpwuid(uid).pw_gid, extra_groups=[])
    return subprocess.Popen(argv, env=env, stdout=out or subprocess.PIPE, stderr=subprocess.STDOUT, cwd="/",
                            start_new_session=True, **kwargs)


def wait_ready(proc, seconds=120):
    """(ready, what it printed): a client is ready once it prints "ready <pid>"."""
    deadline = time.time() + seconds
    said = []
    while time.time() < deadline:
        line = proc.stdout.readline().decode("utf-8", "replace")
        said.append(line)
        if line.startswith("ready"):
            return True, "".join(said)
        if not line and proc.poll() is not None:
            return False, "".join(said) + "[exit %s]" % proc.returncode
    return False, "".join(said) + "[not ready after %d s]" % seconds


def control(state, command, uid=None):
    env = {"PATH": "/usr/bin:/bin", "CUDA_MPS_PIPE_DIRECTORY": state["pipe"]}
    kwargs = {}
    if uid is not None:
        kwargs.update(user=uid, group=pwd.getpwuid(uid).pw_gid, extra_groups=[])
    return run([state["binary"]], input=command + "\n", env=env, **kwargs)


def client_env(state, uid=None):
    """A CUDA client's environment: the pipe directory, and a CuPy kernel cache and HOME of its user's own (the
    throwaway users have no home directory)."""
    env = dict(os.environ, CUDA_MPS_PIPE_DIRECTORY=state["pipe"])
    env.pop("CUDA_VISIBLE_DEVICES", None)
    cache = os.path.join(state["cache"], str(0 if uid is None else uid))
    if not os.path.isdir(cache):
        os.mkdir(cache, 0o700)
        os.chown(cache, 0 if uid is None else uid, -1)
    env.update(HOME=cache, CUPY_CACHE_DIR=cache)
    return env


def start_client(state, name, argv0, uid=None, faulty=False):
    args = ["1" if state["standin"] else "0", state["stop_file"], state["trigger_file"] if faulty else ""]
    proc = spawn(argv0, ["-c", CLIENT] + args, uid=uid, env=client_env(state, uid))
    ready, said = wait_ready(proc)
    if not ready:
        raise SystemExit("client %s (%s) did not become ready: %s" % (name, PYTHON, said[-3000:]))
    if state["standin"]:
        control(state, "standin_attach_client %d 0 %d" % (proc.pid, 0 if uid is None else uid))
    state["clients"][name] = {"pid": proc.pid, "uid": 0 if uid is None else uid, "argv0": repr(argv0)}
    return proc.pid


def server_of(state, pid):
    servers = control(state, "get_server_list").stdout.split()
    for server in servers:
        if str(pid) in control(state, "get_client_list %s" % server).stdout.split():
            return int(server)
    return None


def start(args):
    state = {"pipe": args.pipe, "binary": args.binary, "standin": args.standin, "clients": {}, "victims": {},
             "stop_file": args.state + ".stop", "trigger_file": args.state + ".fault", "users": make_users(),
             "cache": args.state + ".cache"}
    if os.path.isdir(state["cache"]):
        subprocess.run(["rm", "-rf", state["cache"]], check=False, timeout=60)
    os.mkdir(state["cache"], 0o711)
    for path in (state["stop_file"], state["trigger_file"]):
        if os.path.exists(path):
            os.unlink(path)
    a, b = state["users"][USERS[0]], state["users"][USERS[1]]
    # Victims: nobody's MPS client. A root process, and one of user b.
    for name, uid in (("root-victim", None), ("user-victim", b)):
        proc = spawn(b"sleep", ["-c", "import time; time.sleep(3600)"], uid=uid, out=subprocess.DEVNULL)
        state["victims"][name] = proc.pid
    first = start_client(state, "innocent", b"python3")
    server = server_of(state, first)

    def forged(pid, srv):
        """A line shaped exactly as a ps row of the H200, naming `pid` as a client of server `srv`."""
        return ("%-10d%-10d%-15d%-26s%-15s%s" % (pid, 7, srv, args.device_prefix, args.namespace, "forged")).encode()

    names = {
        "newline": b"job\nx",
        "record-separator": b"job\x1e" + forged(state["victims"]["root-victim"], server),
        "not-utf8": b"job-\xff\xfe\x80(",
        "forged-rows": b"job\n" + forged(state["victims"]["root-victim"], server) + b"\n"
                       + forged(state["victims"]["user-victim"], server) + b"\nUnknown command \"ps\"",
    }
    for name, argv0 in names.items():
        start_client(state, name, argv0, uid=a if name in ("not-utf8", "forged-rows") else None)
    start_client(state, "faulty", b"trainer\nCannot find MPS control daemon process", uid=a, faulty=True)
    state["server"] = server
    save(args.state, state)
    print(json.dumps(state, indent=1, sort_keys=True))


def odd_commands(args):
    """A non-root user's commands through the world-writable control socket: logged verbatim in control.log."""
    state = load(args.state)
    uid = state["users"][USERS[1]]
    said = {}
    for command in ("get_server_list x\x1ey", "shutdown_server %d" % state["server"], "quit",
                    "set_default_active_thread_percentage 1", "ps \u00e9\u00e8 \x1e[2026-12-04 10:00:00.000 Control 1]"
                    " Server %d exited with status 0" % state["server"], "terminate_client %d 1" % state["server"]):
        done = control(state, command, uid=uid)
        said[command] = {"rc": done.returncode, "out": (done.stdout + done.stderr)[-500:]}
    print(json.dumps(said, indent=1, ensure_ascii=True))


def fault(args):
    state = load(args.state)
    if state["standin"]:
        control(state, "standin_fault %d" % state["clients"]["faulty"]["pid"])
    else:
        open(state["trigger_file"], "w").close()
    print("fault triggered in client %d" % state["clients"]["faulty"]["pid"])


def alive(pid):
    try:
        with open("/proc/%d/stat" % pid, "rb") as handle:
            return handle.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return False


def check(args):
    state = load(args.state)
    errors = {}
    for name, client in state["clients"].items():
        path = os.path.join(state["cache"], str(client["uid"]), "error-%d" % client["pid"])
        if os.path.exists(path):
            with open(path) as handle:
                errors[name] = handle.read().strip()
    print(json.dumps({"victims": dict((n, alive(p)) for n, p in state["victims"].items()),
                      "clients": dict((n, alive(c["pid"])) for n, c in state["clients"].items()),
                      "errors": errors,
                      "client_pids": sorted(c["pid"] for c in state["clients"].values()),
                      "server": state["server"]}, sort_keys=True))


def two_users(args):
    """Two users' clients started 1 s apart under the lab's daemon: when each became ready, and its first kernels."""
    state = load(args.state)
    code = ("import time, sys, cupy as cp; t0 = float(sys.argv[1]); x = cp.ones(1 << 20); s = float(x.sum()); "
            "cp.cuda.runtime.deviceSynchronize(); print('ready %.2f' % (time.time() - t0), flush=True); "
            "n = 0; end = time.time() + 4\nwhile time.time() < end:\n  x *= 1.0001; cp.cuda.runtime.deviceSynchronize(); n += 1\n"
            "print('ran %d kernels in 4 s, done %.2f' % (n, time.time() - t0), flush=True)")
    if state["standin"]:
        code = "import time, sys; t0 = float(sys.argv[1]); print('ready %.2f' % (time.time() - t0)); print('done')"
    t0 = time.time()
    procs = []
    for number, name in enumerate(USERS):
        procs.append((name, spawn(b"python3", ["-c", code, str(t0)], uid=state["users"][name],
                                  env=client_env(state, state["users"][name]))))
        if number == 0:
            time.sleep(1.0)
    seen = {}
    for name, proc in procs:
        try:
            out, _err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _err = proc.communicate()
        seen[name] = {"uid": state["users"][name], "rc": proc.returncode, "said": out.decode("utf-8", "replace")}
    print(json.dumps(seen, indent=1, sort_keys=True))


def stop(args):
    state = load(args.state)
    open(state["stop_file"], "w").close()
    pids = [c["pid"] for c in state["clients"].values()] + list(state["victims"].values())
    time.sleep(1.0)
    for pid in pids:
        if alive(pid):
            try:
                os.killpg(pid, signal.SIGKILL)   # each was started in a session of its own by this script
            except OSError:
                pass
    for name in USERS:
        run(["pkill", "-KILL", "-u", name])
        run(["userdel", name])
    run(["rm", "-rf", state.get("cache") or args.state + ".cache"])
    print("stopped %d processes, removed %s" % (len(pids), ", ".join(USERS)))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("action", choices=["start", "odd-commands", "fault", "check", "two-users", "stop"])
    parser.add_argument("--state", required=True)
    parser.add_argument("--pipe", default="/tmp/nvidia-mps")
    parser.add_argument("--binary", default="/usr/local/nvidia/bin/nvidia-cuda-mps-control")
    parser.add_argument("--device-prefix", default="GPU-00000000-0000-0000", help="DEVICE as ps prints it")
    parser.add_argument("--namespace", default=os.readlink("/proc/self/ns/pid").split("[")[1].rstrip("]"))
    parser.add_argument("--standin", action="store_true", help="a CPU rehearsal against the stand-in daemon")
    parser.add_argument("--client-python", help="a python3 with CuPy that any user may run (default: found)")
    args = parser.parse_args(argv)
    global PYTHON, PYTHON_PATH
    if args.action in ("start", "two-users"):
        standin = args.standin or (args.action == "two-users" and load(args.state)["standin"])
        PYTHON = find_python(standin, args.client_python)
        PYTHON_PATH = subprocess.run([PYTHON, "-c", "import sys; print(':'.join(p for p in sys.path if p))"],
                                     capture_output=True, text=True, timeout=60, check=True).stdout.strip()
    if os.geteuid() != 0:
        raise SystemExit("run as root: it makes two users and runs their clients")
    {"start": start, "odd-commands": odd_commands, "fault": fault, "check": check, "two-users": two_users,
     "stop": stop}[args.action](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
