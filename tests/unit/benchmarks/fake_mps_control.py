# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A fake nvidia-cuda-mps-control for testing benchmarks/mps_benchmark.py without a GPU.

It speaks like the real one (tests/unit/fixtures/h100-transcripts): `-d` starts a background "daemon" process
that writes the pid file and a `control` entry in CUDA_MPS_PIPE_DIRECTORY; commands come on stdin; with no
daemon it prints "Cannot find MPS control daemon process" and exits 1; `ps` prints "Server not found" or the
client table; the queries gpulab.mps.mps_daemon, mps_info and the benchmarks make get plausible answers (no limits
set, 100% threads, client priority 0). Its clients are the simulated benchmark clients (mps_bench_client.py --backend sim), which
register their PID in <pipe>/sim-clients/ (a file named by the PID, holding its start time) when they find a
daemon, as the CUDA driver connects to one.

The collection's client runs it with an environment of its own (built from the plan, never the caller's), so no
fault is injected through the fake's environment: a client that silently runs without MPS is a simulated client with
GPULAB_SIM_NO_MPS=1 (it does not register), as a real one whose pipe directory is wrong does not connect.
"""

from __future__ import annotations

import ctypes
import os
import socket
import subprocess
import sys
import time

PID_FILE = "nvidia-cuda-mps-control.pid"


def alive(pid):
    try:
        with open("/proc/%d/stat" % pid) as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (IOError, OSError, IndexError, ValueError):
        return False


def daemon_pid(pipe):
    try:
        with open(os.path.join(pipe, PID_FILE)) as handle:
            pid = int(handle.read().strip())
    except (IOError, OSError, ValueError):
        return None
    return pid if alive(pid) else None


def log(text):
    logdir = os.environ.get("CUDA_MPS_LOG_DIRECTORY", "/var/log/nvidia-mps")
    try:
        with open(os.path.join(logdir, "control.log"), "a") as handle:
            handle.write("[%s Control %6d] %s\n" % (time.strftime("%Y-%m-%d %H:%M:%S.000"), os.getpid(), text))
    except OSError:
        pass


def serve(pipe):
    """The background daemon: holds the pid file until `quit` leaves a marker. Like the real one it shows as
    "nvidia-cuda-mps" and its `control` is a Unix socket (what gpulab.mps checks before it talks to a daemon)."""
    try:
        ctypes.CDLL(None).prctl(15, ctypes.c_char_p(b"nvidia-cuda-mps"), 0, 0, 0)  # PR_SET_NAME
    except (OSError, AttributeError):
        pass
    with open(os.path.join(pipe, PID_FILE), "w") as handle:
        handle.write("%d\n" % os.getpid())
    if not os.path.exists(os.path.join(pipe, "control")):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        os.chdir(pipe)  # a relative bind: socket paths are limited to 108 bytes
        sock.bind("control")
        sock.close()
    log("Starting control daemon using socket %s/control" % pipe)
    quit_marker = os.path.join(pipe, "fake-quit")
    while True:
        if os.path.exists(quit_marker):
            break
        time.sleep(0.05)
    for name in (PID_FILE, "fake-quit"):
        try:
            os.unlink(os.path.join(pipe, name))
        except OSError:
            pass
    log("Exit")
    return 0


def start_time(pid):
    """The process's start time (field 22 of /proc/PID/stat), or None."""
    try:
        with open("/proc/%d/stat" % pid) as handle:
            return handle.read().rsplit(")", 1)[1].split()[19]
    except (IOError, OSError, IndexError, ValueError):
        return None


def registered(folder, name):
    """A registration is the client's PID as file name and its start time as content: a file left by a client that
    ended names no client, even when its PID is reused by another process (seen: a busy loop of the machine listed as
    a client of the benchmark's daemon)."""
    try:
        with open(os.path.join(folder, name)) as handle:
            said = handle.read().strip()
    except (IOError, OSError):
        return False
    return bool(said) and said == start_time(int(name)) and alive(int(name))


def clients(pipe):
    folder = os.path.join(pipe, "sim-clients")
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    return sorted(int(n) for n in names if n.isdigit() and registered(folder, n))


def main(argv):
    pipe = os.environ.get("CUDA_MPS_PIPE_DIRECTORY", "/tmp/nvidia-mps")
    if argv[:1] == ["--serve"]:
        return serve(pipe)
    if argv[:1] == ["-d"]:
        if daemon_pid(pipe):
            print("An instance of this daemon is already running")
            return 1
        os.makedirs(pipe, exist_ok=True)
        subprocess.Popen([sys.executable, os.path.abspath(__file__), "--serve"], start_new_session=True,
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return 0
    pid = daemon_pid(pipe)
    if not pid:
        print("Cannot find MPS control daemon process")
        return 1
    for line in sys.stdin:
        command = line.strip()
        if not command:
            continue
        log("Cmd:" + command)
        listed = clients(pipe)
        if command == "get_server_list":
            if listed:
                print(pid + 1)
        elif command == "ps":
            if not listed:
                print("Server not found")
            else:
                print("PID       ID        SERVER         DEVICE                    NAMESPACE      COMMAND        ")
                for i, client in enumerate(listed):
                    print("%-9d %-9d %-14d %-25s %-14s %-15s" % (
                        client, i + 1, pid + 1, "GPU-00000000-0000-0000", "4026531836", "python3"))
        elif command in ("get_default_active_thread_percentage",) or command.startswith("get_active_thread_percentage "):
            print("100.0")
        elif command.startswith(("get_default_device_pinned_mem_limit ", "get_device_pinned_mem_limit ")):
            pass  # no limit set: the real CLI prints nothing
        elif command == "get_default_client_priority":
            print("0")  # what the H100 printed (driver 580, 60_cli_exploration.txt)
        elif command.startswith("get_server_status "):
            print("ACTIVE")
        elif command.startswith("get_client_list "):
            for client in listed:
                print(client)
        elif command.startswith("quit"):
            open(os.path.join(pipe, "fake-quit"), "w").close()
        else:
            print('Unknown command "%s"' % command)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
