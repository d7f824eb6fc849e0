#!/usr/bin/env python
# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""STAND-IN for a CUDA workload, for hosts and pods WITHOUT a GPU (the cluster lane). THIS IS NOT CUDA.

It speaks the workloads' handshake of roles/cuda_workload (run_workloads.py): it "creates its CUDA context", prints
`READY <pid>`, waits for a line on stdin, then prints one `iteration N: X ms` line per iteration and
`RESULT {json}`. Where a real CUDA client connects to the MPS daemon of $CUDA_MPS_PIPE_DIRECTORY when it makes its
context, this one asks the project's stand-in daemon (tests/standins/nvidia-cuda-mps-control) to take it as a client
with the hidden hook `standin_attach_client self`: the daemon reads the sender's PID from the socket (SO_PEERCRED), as
its own PID namespace sees it, so a client in a pod is listed under its host PID with its pod's PID namespace, as the
real daemon lists one. Like a real client, it runs on without MPS when nothing answers there (a silent fallback): only
the daemon's `ps` tells.

    standin_cuda_client.py [--iterations 3] [--handshake]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time


def attach(pipe_directory):
    """Ask the daemon behind pipe_directory to take this process as a client: its answer, or why not."""
    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(10)
        sock.connect(os.path.join(pipe_directory, "control"))
        sock.sendall(b"standin_attach_client self\n")
        sock.shutdown(socket.SHUT_WR)
        answer = b""
        while True:
            chunk = sock.recv(4096)
            if not chunk:
                break
            answer += chunk
        sock.close()
        return answer.decode("utf-8", "replace").strip() or "attached"
    except OSError as error:
        return "no MPS (%s): running without it" % error


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--handshake", action="store_true")
    args = parser.parse_args(argv)
    said = attach(os.environ.get("CUDA_MPS_PIPE_DIRECTORY") or "/tmp/nvidia-mps")
    print("context: %s" % said, flush=True)
    if args.handshake:
        print("READY %d" % os.getpid(), flush=True)
        if not sys.stdin.readline():
            return 1
    times = []
    for i in range(args.iterations):
        started = time.time()
        time.sleep(0.01)
        times.append((time.time() - started) * 1000)
        print("iteration %d: %.3f ms" % (i, times[-1]), flush=True)
    print("RESULT " + json.dumps({"workload": "standin", "pid": os.getpid(), "check": "ok", "stand_in": True,
                                  "context": said}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
