# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""kernel_pair without nvcc: the two small kernels of seed 003 (kernel_pair_kernels.cuh) through CuPy (NVRTC);
without CuPy, the same two operations through PyTorch (whose elementwise kernels pick their own grid).

Same command line and output as kernel_pair.cu:
    kernel_pair.py --kernel add|scale [--n N] [--blocks B] [--threads T] [--iterations I] [--device D] [--handshake]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def result(**fields):
    print("RESULT " + json.dumps(dict({"workload": "kernel_pair", "pid": os.getpid()}, **fields)), flush=True)


def handshake(enabled):
    """Say READY once the context exists, then wait for the runner's go (see run_workloads.py)."""
    if not enabled:
        return True
    print("READY %d" % os.getpid(), flush=True)
    return bool(sys.stdin.readline())


class Unavailable(Exception):
    """This library cannot set the kernels up here (no NVRTC, no device...): try the next one."""


def with_cupy(args):
    try:
        import cupy
        cupy.cuda.Device(args.device).use()
        with open(os.path.join(HERE, "kernel_pair_kernels.cuh")) as handle:
            module = cupy.RawModule(code=handle.read())
        kernel = module.get_function("gpulab_add" if args.kernel == "add" else "gpulab_scale")  # compiles
        props = cupy.cuda.runtime.getDeviceProperties(args.device)
        idx = cupy.arange(args.n, dtype=cupy.int64)
        a = ((idx % 1000).astype(cupy.float32) * cupy.float32(0.001) + cupy.float32(0.5))
        b = (cupy.float32(1.0) + (idx % 7).astype(cupy.float32))
        c = cupy.empty_like(a)
        n = cupy.int64(args.n)
    except Exception as exc:
        raise Unavailable("cupy: %s: %s" % (type(exc).__name__, exc))
    if not handshake(args.handshake):
        return 0
    start, stop = cupy.cuda.Event(), cupy.cuda.Event()
    times = []
    started = time.time()
    for it in range(args.iterations):
        c.fill(float("nan"))
        start.record()
        if args.kernel == "add":
            kernel((args.blocks,), (args.threads,), (a, b, c, n))
        else:
            kernel((args.blocks,), (args.threads,), (a, c, cupy.float32(3.0), n))
        stop.record()
        stop.synchronize()
        times.append(cupy.cuda.get_elapsed_time(start, stop))
        print("iteration %d: %.3f ms" % (it, times[-1]), flush=True)
    ended = time.time()
    want = a + b if args.kernel == "add" else cupy.float32(3.0) * a
    wrong = int(cupy.count_nonzero(c != want))
    name = props["name"]
    result(kernel=args.kernel, implementation="cupy", device=name.decode() if isinstance(name, bytes) else name,
           sm_count=int(props["multiProcessorCount"]), blocks=args.blocks, threads=args.threads, n=args.n,
           ms=[round(t, 4) for t in times], started_at=started, ended_at=ended, wrong_elements=wrong,
           check="ok" if wrong == 0 else "wrong results")
    return 0 if wrong == 0 else 1


def with_torch(args):
    try:
        import torch
        dev = torch.device("cuda", args.device)
        idx = torch.arange(args.n, device=dev)
        a = (idx % 1000).float() * 0.001 + 0.5
        b = 1.0 + (idx % 7).float()
        c = torch.empty_like(a)
        props = torch.cuda.get_device_properties(dev)
    except Exception as exc:
        raise Unavailable("torch: %s: %s" % (type(exc).__name__, exc))
    if not handshake(args.handshake):
        return 0
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    started = time.time()
    for it in range(args.iterations):
        c.fill_(float("nan"))
        start.record()
        if args.kernel == "add":
            torch.add(a, b, out=c)
        else:
            torch.mul(a, 3.0, out=c)
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop))
        print("iteration %d: %.3f ms" % (it, times[-1]), flush=True)
    ended = time.time()
    want = a + b if args.kernel == "add" else a * 3.0
    wrong = int((c != want).sum())
    result(kernel=args.kernel, implementation="torch", device=props.name, sm_count=props.multi_processor_count,
           blocks=None, threads=None, n=args.n, ms=[round(t, 4) for t in times], started_at=started, ended_at=ended,
           wrong_elements=wrong, check="ok" if wrong == 0 else "wrong results")
    return 0 if wrong == 0 else 1


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kernel", choices=["add", "scale"], default="add")
    p.add_argument("--n", type=int, default=1 << 24)
    p.add_argument("--blocks", type=int, default=4)
    p.add_argument("--threads", type=int, default=256)
    p.add_argument("--iterations", type=int, default=10)
    p.add_argument("--device", type=int, default=0)
    p.add_argument("--handshake", action="store_true")
    p.add_argument("--backend", choices=["auto", "cupy", "torch"], default="auto")
    args = p.parse_args()
    errors = []
    for backend, run in (("cupy", with_cupy), ("torch", with_torch)):
        if args.backend not in ("auto", backend):
            continue
        try:
            __import__(backend)
        except ImportError as exc:
            errors.append("%s: %s" % (backend, exc))
            continue
        try:
            return run(args)
        except Unavailable as exc:  # set-up failed before any work: the next library may do
            errors.append(str(exc))
        except Exception as exc:  # report it in the protocol, as kernel_pair.cu does
            result(kernel=args.kernel, check="error", error="%s: %s" % (type(exc).__name__, exc))
            return 2
    result(kernel=args.kernel, check="error", error="neither CuPy nor PyTorch can run the kernels here: "
           + "; ".join(errors))
    return 2


if __name__ == "__main__":
    sys.exit(main())
