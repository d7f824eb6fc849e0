# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""FAKE nvidia-cuda-mps-control for testing tests/gpu/pod_boundary.sh without a GPU. NOT NVIDIA MPS.

What matters to the script is reproduced the way the real daemon does it: the daemon listens on a unix
socket in $CUDA_MPS_PIPE_DIRECTORY, knows its clients by the PID the kernel reports for the peer of that
socket (SO_PEERCRED, so a client in another PID namespace shows up with its host PID), and a client that
cannot reach the socket runs on without it. `-d` daemonizes and writes nvidia-cuda-mps-control.pid; the
client mode reads commands on stdin (ps, get_server_list, get_client_list, the pinned-limit defaults,
quit) and prints "Cannot find MPS control daemon process" with exit 1 when nothing listens.
"""

import os
import socket
import struct
import sys
import threading

PIPE = os.environ.get("CUDA_MPS_PIPE_DIRECTORY", "/tmp/nvidia-mps")
SOCK = os.path.join(PIPE, "control")
PIDFILE = os.path.join(PIPE, "nvidia-cuda-mps-control.pid")


def alive(pid):
    try:
        os.kill(pid, 0)
        return True
    except OSError:
        return False


def serve():
    state = {"clients": {}, "limit": ""}
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    if os.path.exists(SOCK):
        os.unlink(SOCK)
    server.bind(SOCK)
    os.chmod(SOCK, 0o666)
    server.listen(16)
    with open(PIDFILE, "w") as handle:
        handle.write(str(os.getpid()))

    def handle(conn):
        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        peer = struct.unpack("3i", creds)[0]
        data = b""
        while not data.endswith(b"\n"):
            chunk = conn.recv(4096)
            if not chunk:
                break
            data += chunk
        line = data.decode().strip()
        if line == "client":
            state["clients"][peer] = True
            conn.sendall(("limit %s\n" % state["limit"]).encode())
            conn.recv(1)  # held until the client goes
            state["clients"].pop(peer, None)
        else:
            conn.sendall(answer(line, state).encode())
        conn.close()

    while True:
        conn = server.accept()[0]
        threading.Thread(target=handle, args=(conn,), daemon=True).start()


def stop():
    if os.path.exists(PIDFILE):
        os.unlink(PIDFILE)
    os._exit(0)


def answer(line, state):
    words = line.split()
    live = sorted(p for p in state["clients"] if alive(p))
    me = os.getpid()
    if not words:
        return ""
    if words[0] == "ps":
        if not live:
            return "Server not found\n"
        rows = ["PID       ID        SERVER         DEVICE                    NAMESPACE      COMMAND        "]
        rows += ["%-9d %-9d %-14d %-25s %-14s %-15s" % (p, i + 1, me, "GPU-fake0000-0000-0000", "4026531836", "python3")
                 for i, p in enumerate(live)]
        return "\n".join(rows) + "\n"
    if words[0] == "get_server_list":
        return "%d\n" % me if live else ""
    if words[0] == "get_client_list":
        return "".join("%d\n" % p for p in live)
    if words[0] == "set_default_device_pinned_mem_limit" and len(words) == 3:
        state["limit"] = words[2]
        return ""
    if words[0] == "get_default_device_pinned_mem_limit":
        return state["limit"] + "\n" if state["limit"] else ""
    if words[0] == "quit":
        threading.Timer(0.2, stop).start()
        return ""
    return 'Unknown command "%s"\n' % words[0]


def daemonize():
    if os.path.exists(PIDFILE) and alive(int(open(PIDFILE).read() or 0)):
        print("An instance of this daemon is already running")
        return 1
    if os.fork():
        return 0
    os.setsid()
    if os.fork():
        os._exit(0)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    serve()


def client():
    status = 0
    for line in sys.stdin:
        try:
            conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            conn.connect(SOCK)
        except OSError:
            print("Cannot find MPS control daemon process")
            return 1
        conn.sendall((line.strip() + "\n").encode())
        out = b""
        while True:
            chunk = conn.recv(4096)
            if not chunk:
                break
            out += chunk
        sys.stdout.write(out.decode())
    return status


if __name__ == "__main__":
    sys.exit(daemonize() if sys.argv[1:] == ["-d"] else client())
