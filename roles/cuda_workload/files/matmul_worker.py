# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The matmul worker of seed 002: a 4096x4096 float32 matrix product, 10 times, each one timed.

Run two (or more) at once, with and without MPS, to compare by eye what seed 002 compared; run_workloads.py
does that and proves which ones were MPS clients. A matmul of this size fills the GPU by itself, so MPS is not
expected to make it faster: that is the point of the comparison.

    matmul_worker.py [--size 4096] [--iterations 10] [--device 0] [--handshake] [--backend auto|torch|cupy]

Prints one line per iteration ("iteration 3: 2.812 ms, 48.9 TFLOP/s") and, last, "RESULT {json}". Each
iteration is timed with CUDA events around the product after a warm-up (cuBLAS handle and kernels loaded); the
RESULT also gives the wall clock at the start and the end of the timed iterations (started_at, ended_at: what the
runner's aggregate of workers side by side is measured with). The first rows of the result are checked against
float64 on the host.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time


def result(**fields):
    print("RESULT " + json.dumps(dict({"workload": "matmul", "pid": os.getpid()}, **fields)), flush=True)


def handshake(enabled):
    if not enabled:
        return True
    print("READY %d" % os.getpid(), flush=True)
    return bool(sys.stdin.readline())


class Torch(object):
    name = "torch"

    def __init__(self, size, device):
        import torch
        self.torch = torch
        self.dev = torch.device("cuda", device)
        gen = torch.Generator(device=self.dev).manual_seed(os.getpid())
        self.a = torch.rand((size, size), generator=gen, device=self.dev) - 0.5
        self.b = torch.rand((size, size), generator=gen, device=self.dev) - 0.5
        self.c = torch.empty((size, size), device=self.dev)
        self.device_name = torch.cuda.get_device_properties(self.dev).name
        self.matmul()  # fails here, not after the handshake, when this library cannot run on this GPU
        torch.cuda.synchronize(self.dev)

    def matmul(self):
        self.torch.matmul(self.a, self.b, out=self.c)

    def timed(self):
        start, stop = self.torch.cuda.Event(enable_timing=True), self.torch.cuda.Event(enable_timing=True)
        start.record()
        self.matmul()
        stop.record()
        stop.synchronize()
        return start.elapsed_time(stop)

    def poison(self):
        self.c.fill_(float("nan"))

    def rel_error(self, rows):
        ref = self.a[:rows].double() @ self.b.double()
        got = self.c[:rows].double()
        if not bool(self.torch.isfinite(got).all()):
            return float("inf")
        return float(self.torch.linalg.norm(got - ref) / self.torch.linalg.norm(ref))


class Cupy(object):
    name = "cupy"

    def __init__(self, size, device):
        import cupy
        self.cp = cupy
        cupy.cuda.Device(device).use()
        rng = cupy.random.default_rng(os.getpid())
        self.a = rng.random((size, size), dtype=cupy.float32) - 0.5
        self.b = rng.random((size, size), dtype=cupy.float32) - 0.5
        self.c = cupy.empty((size, size), dtype=cupy.float32)
        name = cupy.cuda.runtime.getDeviceProperties(device)["name"]
        self.device_name = name.decode() if isinstance(name, bytes) else name
        self.matmul()
        cupy.cuda.Device(device).synchronize()

    def matmul(self):
        self.cp.matmul(self.a, self.b, out=self.c)

    def timed(self):
        start, stop = self.cp.cuda.Event(), self.cp.cuda.Event()
        start.record()
        self.matmul()
        stop.record()
        stop.synchronize()
        return self.cp.cuda.get_elapsed_time(start, stop)

    def poison(self):
        self.c.fill(float("nan"))

    def rel_error(self, rows):
        ref = self.a[:rows].astype(self.cp.float64) @ self.b.astype(self.cp.float64)
        got = self.c[:rows].astype(self.cp.float64)
        if not bool(self.cp.isfinite(got).all()):
            return float("inf")
        return float(self.cp.linalg.norm(got - ref) / self.cp.linalg.norm(ref))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=4096)
    p.add_argument("--iterations", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--device", type=int, default=0)
    p.add_argument("--handshake", action="store_true")
    p.add_argument("--backend", choices=["auto", "torch", "cupy"], default="auto")
    args = p.parse_args()
    errors, work = [], None
    for cls in (Torch, Cupy):
        if args.backend not in ("auto", cls.name):
            continue
        try:
            work = cls(args.size, args.device)
            break
        except Exception as exc:  # try the other library
            errors.append("%s: %s: %s" % (cls.name, type(exc).__name__, exc))
    if work is None:
        result(check="error", error="no CUDA library works (torch or cupy): " + "; ".join(errors))
        return 2
    try:
        for _unused in range(args.warmup):
            work.matmul()
        work.timed()
        if not handshake(args.handshake):
            return 0
        flop = 2.0 * args.size ** 3
        times = []
        started = time.time()  # the wall clock, shared by the workers of one host: the runner's aggregate
        for it in range(args.iterations):
            work.poison()
            times.append(work.timed())
            print("iteration %d: %.3f ms, %.1f TFLOP/s" % (it, times[-1], flop / (times[-1] * 1e-3) / 1e12),
                  flush=True)
        ended = time.time()
        rel = work.rel_error(8)
        # float32 on the SIMT units lands far under 1e-3; TF32 tensor cores near 3e-4 (if someone enabled them).
        check = "ok" if rel < 5e-3 else "relative error %.3g against float64" % rel
        result(implementation=work.name, device=work.device_name, size=args.size, ms=[round(t, 4) for t in times],
               tflops_median=round(flop / (sorted(times)[len(times) // 2] * 1e-3) / 1e12, 2),
               relative_error=rel, started_at=started, ended_at=ended, check=check)
        return 0 if check == "ok" else 1
    except Exception as exc:
        result(check="error", error="%s: %s" % (type(exc).__name__, exc))
        return 2


if __name__ == "__main__":
    sys.exit(main())
