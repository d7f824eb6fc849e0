# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""FAKE CUDA client for testing tests/gpu/pod_boundary.sh without a GPU (same JSON line as _cuda_client.py).

It "uses MPS" when the control socket in $CUDA_MPS_PIPE_DIRECTORY answers, and then sees the daemon's
default pinned limit as its free memory; otherwise it runs on "without MPS" and sees a whole H100.
"""

import json
import os
import socket
import sys
import time

args = dict(zip(sys.argv[1::2], sys.argv[2::2]))
hold = float(args.get("--hold", 5))
pipe = os.environ.get("CUDA_MPS_PIPE_DIRECTORY", "/tmp/nvidia-mps")
total = 85520809984
free = total - (900 << 20)
conn = None
try:
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.connect(os.path.join(pipe, "control"))
    conn.sendall(b"client\n")
    limit = conn.recv(64).decode().split()[1:] or [""]
    if limit[0]:
        free = int(limit[0][:-1]) << (30 if limit[0].endswith("G") else 20)
except OSError:
    conn = None
print(json.dumps({"pid": os.getpid(), "device": 0, "free_bytes": free, "total_bytes": total}))
sys.stdout.flush()
time.sleep(hold)
