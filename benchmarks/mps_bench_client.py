# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""One client of the MPS benchmark: a separate process, because MPS shares the GPU between processes.

mps_benchmark.py starts a pool of these with CUDA_MPS_PIPE_DIRECTORY set for the mode (an empty directory for
"MPS off", the daemon's for "MPS on"). Each one creates its CUDA context, warms up every workload and checks
its results, then says "ready" and waits for commands on stdin. Protocol: one JSON object per line; the
client's own lines on stdout start with "@@gpulab " (libraries may print too).

  -> {"cmd": "run", "workload": "spin", "start_at": <epoch s>, "duration": 1.0, "warmup": 1}
  <- {"event": "result", "pid", "workload", "count" (launches completed in the window), "latency_ms": [...],
      "start_delay_ms", "check": "ok" | "<what was wrong>"}
  -> {"cmd": "inspect"}
  <- {"event": "inspect", "pid", "sm_count_attribute" (the SM count CUDA gives this process), "sms_used" (distinct
      SMs that a wide probe kernel's blocks ran on, read from %smid), "mem_free_mib", "mem_total_mib",
      "mps_env" (the CUDA_MPS_* variables this process has)}: what MPS really gives the client, not what it asked
  -> {"cmd": "exit"}

The noisy-neighbour benchmark (mps_qos_benchmark.py) adds two spin kernels of their own size: `latency`
(--latency-blocks, 16 by default: a latency-critical service's small kernels) and `fill` (--fill-blocks, the
GPU's SM count: one block per SM, a neighbour that fills the GPU); --calibrate latency=0.24,fill=2.0 makes the
probe calibrate each to that many ms alone. A run with "times": true also returns each launch's start offset.

Every launch is timed from submit to completion (the client synchronizes after each one): that is the latency
a process sees; the common start instant (start_at, wall clock, shared by the processes of one host) lines
the clients up. With --probe the client instead reports the device, calibrates the spin kernel to a target
duration, checks every workload against a reference, and exits.

Backends
- cupy (preferred): the spin kernel below through NVRTC (fixed blocks per launch, one block fills an SM),
  cuBLAS SGEMM for matmul, an elementwise kernel for copy.
- torch: matmul and copy alike; the spin kernel becomes torch.cuda._sleep (ONE block of one thread per
  launch, so blocks per client = 1).
- sim: no GPU. A model for testing the harness: launches sleep, and a shared lock file per SM group stands
  for the hardware (one group under time-slicing; SMs / blocks groups under MPS). The noisy-neighbour kernels run on
  a virtual clock: a latency launch reports what a model of the neighbours that run at that moment says it takes
  (SimWorkloads.latency_ms), never the time a busy machine took to run it, so that a criterion judged on the
  simulation passes or fails the same way on an idle and on a loaded machine (a timing only a GPU can show belongs
  to the GPU lane). The client counts as an MPS
  client when CUDA_MPS_PIPE_DIRECTORY holds a daemon (files "control" and the daemon's pid file), as the CUDA
  driver does, and then registers its PID where the test's fake nvidia-cuda-mps-control lists it;
  GPULAB_SIM_NO_MPS=1 makes it a client that silently runs without MPS (as one with a wrong pipe directory does).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import traceback

PREFIX = "@@gpulab "
THREADS = 1024
CHAINS = 40
# 40 independent FMA chains per thread: enough independent work for 32 warps to keep an SM's FP32 units busy,
# and 48 registers per thread (ptxas, sm_90), so that only ONE 1024-thread block fits on an SM (2 x 1024 x 48 >
# 65536 registers). One block = one SM is what makes the ideal "SMs / blocks per client" exact.
SPIN_SOURCE = r"""
#define CHAINS %d
extern "C" __global__ void __launch_bounds__(%d, 1)
gpulab_spin(float *out, const long long iters)
{
    float acc[CHAINS];
#pragma unroll
    for (int c = 0; c < CHAINS; ++c) acc[c] = (float)((threadIdx.x + c) & 255) * 1e-3f;
    for (long long i = 0; i < iters; ++i) {
#pragma unroll
        for (int c = 0; c < CHAINS; ++c) acc[c] = fmaf(acc[c], 0.999f, 0.001f);
    }
    float s = 0.0f;
#pragma unroll
    for (int c = 0; c < CHAINS; ++c) s += acc[c];
    out[blockIdx.x * blockDim.x + threadIdx.x] = s;
}
""" % (CHAINS, THREADS)

# Where a block runs: each block spins a few microseconds (so that the blocks spread over every SM the client may
# use) and writes its SM id. The distinct ids are the SMs MPS lets this client occupy.
SMID_SOURCE = r"""
extern "C" __global__ void gpulab_smid(unsigned int *out, const long long cycles)
{
    unsigned int id;
    asm volatile("mov.u32 %0, %%smid;" : "=r"(id));
    long long start = clock64();
    while (clock64() - start < cycles) { }
    if (threadIdx.x == 0) out[blockIdx.x] = id;
}
"""
QOS_KERNELS = ("latency", "fill")


def _start_time():
    """This process's start time (field 22 of /proc/self/stat): what the simulated backend registers with the fake
    control (tests/unit/benchmarks/fake_mps_control.py), so that a PID reused after it ends is no client."""
    with open("/proc/self/stat") as handle:
        return handle.read().rsplit(")", 1)[1].split()[19]


def emit(obj):
    sys.stdout.write(PREFIX + json.dumps(obj) + "\n")
    sys.stdout.flush()


def spin_expected(iters):
    """What every block of gpulab_spin writes, per thread: a_n = 1 + (a_0 - 1) * 0.999^n, summed over chains."""
    decay = 0.999 ** iters
    return [sum(1.0 + (((t + c) & 255) * 1e-3 - 1.0) * decay for c in range(CHAINS)) for t in range(THREADS)]


def spin_tolerance(iters):
    # fp32 rounding of a contracting recurrence: a few ulps per step at worst, summed over the chains.
    return 1e-3 + CHAINS * min(iters, 10 ** 7) * 1.2e-7


class Workloads(object):
    """Base: launch(name) runs one unit of work and returns when it has completed."""

    backend = None
    spin_blocks = None  # blocks per spin launch, as really launched
    iters = 0
    kernels = None  # the noisy-neighbour kernels: {"latency": {"blocks", "iters"}, "fill": {...}}

    def launch(self, name):
        raise NotImplementedError

    def smoke(self):
        """One short launch of everything, so that a backend that cannot compile or run fails HERE, at start,
        and "auto" moves on to the next one (CuPy compiles its kernel at the first launch, not before)."""
        saved = (self.iters, dict((k, v["iters"]) for k, v in self.kernels.items()))
        self.iters = 16
        for kernel in self.kernels.values():
            kernel["iters"] = 16
        try:
            for name in ("spin", "matmul", "copy") + tuple(self.kernels):
                self.launch(name)
        finally:
            self.iters = saved[0]
            for name, iters in saved[1].items():
                self.kernels[name]["iters"] = iters

    def inspect(self):
        """What this process really gets: SM count, SMs its blocks run on, memory (see the module docstring)."""
        raise NotImplementedError

    def prepare_run(self, name):
        """Poison the output of `name` so that the check after the run proves every launch wrote it."""

    def begin_run(self, name):
        """A run of `name` begins (the simulated backend marks its fill neighbours running)."""

    def end_run(self, name):
        """The run of `name` ended."""

    def check(self, name):
        return "ok"


class CupyWorkloads(Workloads):
    backend = "cupy"

    def __init__(self, args):
        import cupy
        import numpy
        self.cp, self.np = cupy, numpy
        self.device = cupy.cuda.Device(args.device)
        self.device.use()
        props = cupy.cuda.runtime.getDeviceProperties(args.device)
        name = props["name"]
        self.info = {
            "name": name.decode() if isinstance(name, bytes) else str(name),
            "sm_count": int(props["multiProcessorCount"]),
            "compute_capability": "%d.%d" % (props["major"], props["minor"]),
            "memory_total_mib": int(props["totalGlobalMem"]) >> 20,
            "cupy": cupy.__version__,
        }
        self.spin_blocks = args.spin_blocks or max(1, self.info["sm_count"] // 8)
        self.iters = args.spin_iters
        self.kernel = cupy.RawKernel(SPIN_SOURCE, "gpulab_spin")
        self.out = cupy.empty(self.spin_blocks * THREADS, dtype=cupy.float32)
        n = args.matmul_size
        rng = cupy.random.default_rng(os.getpid())
        self.a = rng.random((n, n), dtype=cupy.float32) - 0.5
        self.b = rng.random((n, n), dtype=cupy.float32) - 0.5
        self.c = cupy.empty((n, n), dtype=cupy.float32)
        elems = (args.copy_mib << 20) // 4
        self.x = rng.random(elems, dtype=cupy.float32)
        self.y = cupy.empty(elems, dtype=cupy.float32)
        self.copy_reps = args.copy_reps
        self.c_rows = None
        self.full_sms = args.fill_blocks or self.info["sm_count"]
        self.kernels = {}
        for kernel, blocks, iters in (("latency", args.latency_blocks, args.latency_iters),
                                      ("fill", self.full_sms, args.fill_iters)):
            self.kernels[kernel] = {"blocks": blocks, "iters": iters,
                                    "out": cupy.empty(blocks * THREADS, dtype=cupy.float32)}
        self.smid_kernel = cupy.RawKernel(SMID_SOURCE, "gpulab_smid")
        self.smoke()

    def sync(self):
        self.cp.cuda.Device().synchronize()

    def inspect(self):
        """Each figure on its own: one that cannot be read is None, with why in "inspect_errors"."""
        runtime = self.cp.cuda.runtime
        device = self.cp.cuda.Device().id
        seen = {"sm_count_attribute": None, "sms_used": None, "probe_blocks": None, "mem_free_mib": None,
                "mem_total_mib": None, "inspect_errors": []}
        try:  # 16 is cudaDevAttrMultiProcessorCount
            seen["sm_count_attribute"] = int(runtime.deviceGetAttribute(16, device))
        except Exception as exc:
            seen["inspect_errors"].append("SM count: %s: %s" % (type(exc).__name__, exc))
        try:
            blocks = 4 * max(self.full_sms, seen["sm_count_attribute"] or 0)
            ids = self.cp.zeros(blocks, dtype=self.cp.uint32)
            self.smid_kernel((blocks,), (THREADS,), (ids, self.np.int64(20000)))
            self.sync()
            seen["sms_used"], seen["probe_blocks"] = int(len(set(ids.get().tolist()))), blocks
        except Exception as exc:
            seen["inspect_errors"].append("SM probe: %s: %s" % (type(exc).__name__, exc))
        try:
            free, total = runtime.memGetInfo()
            seen["mem_free_mib"], seen["mem_total_mib"] = int(free) >> 20, int(total) >> 20
        except Exception as exc:
            seen["inspect_errors"].append("memory: %s: %s" % (type(exc).__name__, exc))
        return seen

    def launch(self, name):
        if name == "spin":
            self.kernel((self.spin_blocks,), (THREADS,), (self.out, self.np.int64(self.iters)))
        elif name in self.kernels:
            kernel = self.kernels[name]
            self.kernel((kernel["blocks"],), (THREADS,), (kernel["out"], self.np.int64(kernel["iters"])))
        elif name == "matmul":
            self.cp.matmul(self.a, self.b, out=self.c)
        elif name == "copy":
            for _unused in range(self.copy_reps):
                self.cp.multiply(self.x, 2.0, out=self.y)
        else:
            raise ValueError("unknown workload %r" % name)
        self.sync()

    def prepare_run(self, name):
        if name in self.kernels:
            target = self.kernels[name]["out"]
        else:
            target = {"spin": self.out, "matmul": self.c, "copy": self.y}[name]
        target.fill(float("nan"))
        self.sync()

    def check(self, name):
        np = self.np
        if name == "spin" or name in self.kernels:
            out, blocks, iters = (self.out, self.spin_blocks, self.iters) if name == "spin" else (
                self.kernels[name]["out"], self.kernels[name]["blocks"], self.kernels[name]["iters"])
            got = out.get().reshape(blocks, THREADS)
            want = np.array(spin_expected(iters), dtype=np.float64)
            err = float(np.max(np.abs(got - want[None, :]))) if np.all(np.isfinite(got)) else float("nan")
            return "ok" if err <= spin_tolerance(iters) else "%s kernel output off by %r" % (name, err)
        if name == "matmul":
            rows = self.c[:8].get().astype(np.float64)
            if self.c_rows is None:  # first check: against float64 on the host, then keep the rows
                ref = self.a[:8].get().astype(np.float64) @ self.b.get().astype(np.float64)
                rel = float(np.linalg.norm(rows - ref) / np.linalg.norm(ref)) if np.all(np.isfinite(rows)) else 1.0
                if not rel < 5e-3:
                    return "matmul relative error %r against float64" % rel
                self.c_rows = rows
                return "ok"
            same = np.all(np.isfinite(rows)) and float(np.max(np.abs(rows - self.c_rows))) <= 1e-3
            return "ok" if same else "matmul result changed between runs"
        if name == "copy":
            ok = bool(self.cp.all(self.y == self.x * 2.0))
            return "ok" if ok else "copy output wrong"
        return "ok"


class TorchWorkloads(Workloads):
    backend = "torch"

    def __init__(self, args):
        import torch
        self.torch = torch
        self.dev = torch.device("cuda", args.device)
        torch.cuda.set_device(self.dev)
        props = torch.cuda.get_device_properties(self.dev)
        self.info = {
            "name": props.name,
            "sm_count": int(props.multi_processor_count),
            "compute_capability": "%d.%d" % (props.major, props.minor),
            "memory_total_mib": int(props.total_memory) >> 20,
            "torch": torch.__version__,
        }
        # torch has no kernel with a chosen block count; torch.cuda._sleep spins ONE thread block.
        self.spin_blocks = 1
        self.iters = args.spin_iters  # clock cycles for _sleep
        n = args.matmul_size
        gen = torch.Generator(device=self.dev).manual_seed(os.getpid())
        self.a = torch.rand((n, n), generator=gen, device=self.dev) - 0.5
        self.b = torch.rand((n, n), generator=gen, device=self.dev) - 0.5
        self.c = torch.empty((n, n), device=self.dev)
        elems = (args.copy_mib << 20) // 4
        self.x = torch.rand(elems, generator=gen, device=self.dev)
        self.y = torch.empty(elems, device=self.dev)
        self.copy_reps = args.copy_reps
        self.c_rows = None
        # No kernel with a chosen block count in torch: latency is torch.cuda._sleep (one block), fill the matmul.
        self.kernels = {"latency": {"blocks": 1, "iters": args.latency_iters}, "fill": {"blocks": None, "iters": 0}}
        self.smoke()

    def sync(self):
        self.torch.cuda.synchronize(self.dev)

    def inspect(self):
        seen = {"sm_count_attribute": None, "sms_used": None, "probe_blocks": None, "mem_free_mib": None,
                "mem_total_mib": None, "inspect_errors": ["SM probe: torch has no kernel that reads its SM"]}
        try:
            seen["sm_count_attribute"] = int(self.torch.cuda.get_device_properties(self.dev).multi_processor_count)
            free, total = self.torch.cuda.mem_get_info(self.dev)
            seen["mem_free_mib"], seen["mem_total_mib"] = int(free) >> 20, int(total) >> 20
        except Exception as exc:
            seen["inspect_errors"].append("%s: %s" % (type(exc).__name__, exc))
        return seen

    def launch(self, name):
        if name == "spin":
            self.torch.cuda._sleep(int(self.iters))
        elif name == "latency":
            self.torch.cuda._sleep(int(self.kernels["latency"]["iters"]))
        elif name in ("matmul", "fill"):
            self.torch.matmul(self.a, self.b, out=self.c)
        elif name == "copy":
            for _unused in range(self.copy_reps):
                self.torch.mul(self.x, 2.0, out=self.y)
        else:
            raise ValueError("unknown workload %r" % name)
        self.sync()

    def prepare_run(self, name):
        if name in ("matmul", "copy"):
            {"matmul": self.c, "copy": self.y}[name].fill_(float("nan"))
            self.sync()

    def check(self, name):
        torch = self.torch
        if name == "matmul":
            rows = self.c[:8].double().cpu()
            if self.c_rows is None:
                ref = self.a[:8].double() @ self.b.double()
                ref = ref.cpu()
                rel = float(torch.linalg.norm(rows - ref) / torch.linalg.norm(ref)) if bool(
                    torch.isfinite(rows).all()) else 1.0
                if not rel < 5e-3:
                    return "matmul relative error %r against float64" % rel
                self.c_rows = rows
                return "ok"
            same = bool(torch.isfinite(rows).all()) and float((rows - self.c_rows).abs().max()) <= 1e-3
            return "ok" if same else "matmul result changed between runs"
        if name == "copy":
            return "ok" if bool(torch.equal(self.y, self.x * 2.0)) else "copy output wrong"
        return "ok"


class SimWorkloads(Workloads):
    """No GPU: see the module docstring. Launch times are --sim-ms per workload; SMs from --sim-sms."""

    backend = "sim"

    def __init__(self, args):
        import fcntl
        self.fcntl = fcntl
        self.info = {"name": "simulated GPU", "sm_count": args.sim_sms, "compute_capability": "0.0",
                     "memory_total_mib": 0}
        self.spin_blocks = args.spin_blocks or max(1, args.sim_sms // 8)
        self.iters = args.spin_iters
        self.ms = dict(spin=args.sim_ms, matmul=args.sim_ms * 1.5, copy=args.sim_ms * 0.5)
        pipe = os.environ.get("CUDA_MPS_PIPE_DIRECTORY", "/tmp/nvidia-mps")
        self.mps = (os.path.exists(os.path.join(pipe, "control"))
                    and os.path.exists(os.path.join(pipe, "nvidia-cuda-mps-control.pid"))
                    and not os.environ.get("GPULAB_SIM_NO_MPS"))
        self.sim_dir = args.sim_dir or os.path.join(pipe if self.mps else "/tmp", "gpulab-sim-gpu")
        os.makedirs(self.sim_dir, exist_ok=True)
        if self.mps:  # what the fake control's `ps` lists (see tests/unit/benchmarks/fake_mps_control.py)
            clients = os.path.join(pipe, "sim-clients")
            os.makedirs(clients, exist_ok=True)
            with open(os.path.join(clients, str(os.getpid())), "w") as handle:
                handle.write(_start_time())
        self.handles = {}
        # The noisy-neighbour kernels run on a VIRTUAL clock (see _qos_launch): what a launch reports is what the model
        # says it took, so that no result of the simulation depends on how busy the machine running it is.
        self.kernels = {"latency": {"blocks": args.latency_blocks, "iters": args.latency_iters},
                        "fill": {"blocks": args.fill_blocks or args.sim_sms, "iters": args.fill_iters}}
        self.ms.update(latency=args.sim_latency_ms, fill=args.sim_fill_ms)
        self.mem_total_mib = args.sim_mem_mib
        try:
            self.threads = min(100.0, float(os.environ.get("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE", "100")))
        except ValueError:
            self.threads = 100.0
        self.marker = None

    SIM_GROUPS = 8

    def _lock(self, name, blocking):
        path = os.path.join(self.sim_dir, name)
        handle = self.handles.get(path) or open(path, "a")
        self.handles[path] = handle
        try:
            self.fcntl.flock(handle, self.fcntl.LOCK_EX | (0 if blocking else self.fcntl.LOCK_NB))
        except OSError:
            return None
        return handle

    def groups(self):
        """The SM groups (of SIM_GROUPS) a fill launch of this client occupies: all without MPS or a thread limit,
        else as many as its thread percentage allows (limited fills crowd into the same first groups)."""
        if not self.mps:
            return self.SIM_GROUPS
        return max(1, int(math.ceil(self.SIM_GROUPS * self.threads / 100.0 - 1e-9)))

    def begin_run(self, name):
        """A fill neighbour says, for the whole of its run, that it runs and how many groups it occupies: a marker
        file it holds locked (a neighbour that died holds nothing)."""
        if name != "fill":
            return
        path = os.path.join(self.sim_dir, "fill-%d" % os.getpid())
        self.marker = open(path, "w")
        self.marker.write("%d\n" % self.groups())
        self.marker.flush()
        self.fcntl.flock(self.marker, self.fcntl.LOCK_EX)

    def end_run(self, name):
        if self.marker is not None:
            self.fcntl.flock(self.marker, self.fcntl.LOCK_UN)
            self.marker.close()
            self.marker = None

    def running_fills(self):
        """The groups each fill neighbour that runs now occupies, from the markers they hold."""
        found = []
        for entry in sorted(os.listdir(self.sim_dir)):
            if not entry.startswith("fill-"):
                continue
            try:
                handle = open(os.path.join(self.sim_dir, entry))
            except OSError:
                continue
            with handle:
                try:
                    self.fcntl.flock(handle, self.fcntl.LOCK_SH | self.fcntl.LOCK_NB)
                    self.fcntl.flock(handle, self.fcntl.LOCK_UN)
                    continue  # nobody holds it: that neighbour does not run
                except OSError:
                    pass
                text = handle.read().strip()
                found.append(int(text) if text.isdigit() else self.SIM_GROUPS)
        return found

    def latency_ms(self):
        """What a latency launch takes in the model, from the neighbours that run now:
        - alone: its own time;
        - time-slicing (not an MPS client): it waits for every running neighbour's slice (one fill launch each);
        - MPS: it runs at once where the neighbours leave a group of SMs free (thread-limited neighbours crowd into
          the same first groups), else it waits for one fill launch to end."""
        fills = self.running_fills()
        if not fills:
            return self.ms["latency"]
        if not self.mps:
            return self.ms["latency"] + len(fills) * self.ms["fill"]
        if max(fills) < self.SIM_GROUPS:
            return self.ms["latency"]
        return self.ms["latency"] + self.ms["fill"]

    def _qos_launch(self, name):
        """One launch of a noisy-neighbour kernel; returns its duration on the virtual clock (ms).

        A fill takes its SM groups (lock files: one for all without MPS) for its time, so that the neighbours' pace is
        that of a shared GPU; a latency launch takes what latency_ms() says, and sleeps as long only to keep pace."""
        if name == "fill":
            handles = [self._lock("qos-ts" if not self.mps else "qos-group%d" % i, True)
                       for i in range(1 if not self.mps else self.groups())]
            try:
                time.sleep(self.ms["fill"] / 1000.0)
            finally:
                for handle in handles:
                    self.fcntl.flock(handle, self.fcntl.LOCK_UN)
            return self.ms["fill"]
        took = self.latency_ms()
        time.sleep(took / 1000.0)
        return took

    def inspect(self):
        share = self.threads if self.mps else 100.0
        sms = int(math.ceil(self.info["sm_count"] * share / 100.0 - 1e-9))
        free = self.mem_total_mib
        pinned = os.environ.get("CUDA_MPS_PINNED_DEVICE_MEM_LIMIT", "") if self.mps else ""
        for item in pinned.split(","):
            device, _sep, size = item.partition("=")
            if device.strip() == "0" and size.strip()[:-1].isdigit():
                free = min(free, int(size.strip()[:-1]) << {"M": 0, "G": 10}.get(size.strip()[-1].upper(), 0))
        return {"sm_count_attribute": sms, "sms_used": sms, "probe_blocks": 4 * self.info["sm_count"],
                "mem_free_mib": max(0, free - 512), "mem_total_mib": self.mem_total_mib}

    def _slots(self, name):
        if not self.mps:
            return 1  # time-slicing: one process on the GPU at a time
        if name == "spin":
            return max(1, self.info["sm_count"] // self.spin_blocks)
        return 1  # matmul and copy fill the GPU by themselves

    def launch(self, name):
        if name not in self.ms:
            raise ValueError("unknown workload %r" % name)
        if name in self.kernels:
            return self._qos_launch(name)
        slots = self._slots(name)
        while True:
            for i in range(slots):
                path = os.path.join(self.sim_dir, "%s-slot%d" % ("mps" if self.mps else "ts", i))
                handle = self.handles.get(path) or open(path, "a")
                self.handles[path] = handle
                try:
                    self.fcntl.flock(handle, self.fcntl.LOCK_EX | self.fcntl.LOCK_NB)
                except OSError:
                    continue
                try:
                    time.sleep(self.ms[name] / 1000.0)
                finally:
                    self.fcntl.flock(handle, self.fcntl.LOCK_UN)
                return
            time.sleep(0.0002)


def make_workloads(args):
    """The backend asked for, or for "auto" the first that initializes: cupy, then torch."""
    if args.backend == "sim":
        return SimWorkloads(args), []
    order = ["cupy", "torch"] if args.backend == "auto" else [args.backend]
    errors = []
    for name in order:
        try:
            return (CupyWorkloads if name == "cupy" else TorchWorkloads)(args), errors
        except Exception as exc:  # try the next backend, and say why this one failed
            errors.append("%s: %s: %s" % (name, type(exc).__name__, str(exc).splitlines()[0] if str(exc) else ""))
    raise RuntimeError("no usable backend: " + "; ".join(errors))


def timed_launch(work, name):
    """Milliseconds of one launch of `name`, synchronized: submit to completion on the host's clock, or what a
    backend with a virtual clock says it took (the simulated noisy-neighbour kernels)."""
    t0 = time.perf_counter()
    virtual = work.launch(name)
    return float(virtual) if virtual is not None else (time.perf_counter() - t0) * 1000.0


def time_launches(work, name, count):
    """Median milliseconds of `count` launches of `name`, each synchronized."""
    times = sorted(timed_launch(work, name) for _unused in range(count))
    return times[len(times) // 2]


def calibrate_spin(work, target_ms, name="spin"):
    """Pick spin iterations (cycles for torch) so that one launch alone takes about target_ms: of the spin kernel,
    or of a noisy-neighbour kernel (`name` latency or fill, whose iterations are its own)."""
    def get():
        return work.iters if name == "spin" else work.kernels[name]["iters"]

    def put(value):
        if name == "spin":
            work.iters = value
        else:
            work.kernels[name]["iters"] = value

    iters = get()
    for _unused in range(6):
        put(iters)
        work.launch(name)  # warm
        ms = time_launches(work, name, 5)
        if ms <= 0:
            iters *= 4
            continue
        # At most x16 a step, and never past 2^40: a launch that takes no time (no GPU work) must not run away.
        new = max(16, min(int(iters * min(16.0, target_ms / ms)), 1 << 40))
        if abs(new - iters) <= 0.05 * iters:
            break
        iters = new
    put(iters)
    return iters, time_launches(work, name, 5)


def warm_up(work, workloads, launches):
    """First launches pay for module load, NVRTC/cuBLAS set-up and clocks: keep them out of the figures."""
    checks = {}
    for name in workloads:
        work.prepare_run(name)
        for _unused in range(launches):
            work.launch(name)
        checks[name] = work.check(name)
    return checks


def run_command(work, cmd):
    """One timed run: warm-up launches, wait for the common start, then launch-and-wait until the window ends."""
    name, start_at, duration = cmd["workload"], float(cmd["start_at"]), float(cmd["duration"])
    max_launches = int(cmd.get("max_launches", 100000))
    work.prepare_run(name)
    work.begin_run(name)
    try:
        return _run_window(work, cmd, name, start_at, duration, max_launches)
    finally:
        work.end_run(name)


def _run_window(work, cmd, name, start_at, duration, max_launches):
    for _unused in range(int(cmd.get("warmup", 1))):
        work.launch(name)
    # Sleep until just before the start, then spin on the clock: processes start within ~0.1 ms of each other.
    while True:
        left = start_at - time.time()
        if left <= 0:
            break
        time.sleep(left - 0.002 if left > 0.003 else 0)
    begin = time.time()
    end_at = start_at + duration
    done, latency, offsets = 0, [], []
    while done < max_launches:
        started = time.time()
        latency.append(round(timed_launch(work, name), 4))
        offsets.append(round((started - start_at) * 1000.0, 2))
        if time.time() > end_at:
            break  # this launch ended after the window: not counted, so that no client gets a longer window
        done += 1
    result = {"event": "result", "pid": os.getpid(), "workload": name, "count": done,
              "latency_ms": latency[:done], "start_delay_ms": round((begin - start_at) * 1000.0, 3),
              "check": work.check(name)}
    if cmd.get("times"):
        result["offsets_ms"] = offsets[:done]  # when each counted launch was submitted, from start_at
    return result


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
    p.add_argument("--backend", default="auto", choices=["auto", "cupy", "torch", "sim"])
    p.add_argument("--device", type=int, default=0)
    p.add_argument("--workloads", default="spin,matmul,copy")
    p.add_argument("--spin-blocks", type=int, default=0, help="blocks per spin launch (0: SMs // 8)")
    p.add_argument("--spin-iters", type=int, default=4096, help="loop count (torch: clock cycles)")
    p.add_argument("--matmul-size", type=int, default=4096)
    p.add_argument("--copy-mib", type=int, default=256)
    p.add_argument("--copy-reps", type=int, default=4)
    p.add_argument("--warmup", type=int, default=3, help="warm-up launches of each workload at start")
    p.add_argument("--probe", action="store_true", help="report the device, calibrate, check, exit")
    p.add_argument("--target-ms", type=float, default=2.0, help="probe: spin launch duration to calibrate to")
    p.add_argument("--latency-blocks", type=int, default=16, help="blocks per launch of the latency kernel")
    p.add_argument("--latency-iters", type=int, default=4096, help="loop count of the latency kernel")
    p.add_argument("--fill-blocks", type=int, default=0, help="blocks per fill launch (0: the SM count CUDA gives)")
    p.add_argument("--fill-iters", type=int, default=4096, help="loop count of the fill kernel")
    p.add_argument("--calibrate", default="", help="probe: KERNEL=MS,... (latency, fill) to calibrate to")
    p.add_argument("--sim-sms", type=int, default=132)
    p.add_argument("--sim-latency-ms", type=float, default=0.3)
    p.add_argument("--sim-fill-ms", type=float, default=2.0)
    p.add_argument("--sim-mem-mib", type=int, default=143771)
    p.add_argument("--sim-ms", type=float, default=4.0)
    p.add_argument("--sim-dir", default="")
    p.add_argument("--sim-fail", default="", help="sim: 'init' fails at start, 'hang' never answers a run")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    names = [w for w in args.workloads.split(",") if w]
    try:
        if args.backend == "sim" and args.sim_fail == "init":
            raise RuntimeError("simulated start-up failure")
        work, errors = make_workloads(args)
        if work.backend == "torch" and args.probe:
            work.iters = 2000000  # clock cycles for torch.cuda._sleep (about 1 ms), before calibration
        if args.probe:
            checks = warm_up(work, names, args.warmup)
            probe = {"event": "probe", "pid": os.getpid(), "backend": work.backend, "backend_errors": errors,
                     "device": work.info, "spin_blocks": work.spin_blocks, "checks": checks, "solo_ms": {}}
            if "spin" in names:
                probe["spin_iters"], probe["solo_ms"]["spin"] = calibrate_spin(work, args.target_ms)
                work.prepare_run("spin")
                work.launch("spin")
                probe["checks"]["spin"] = work.check("spin")
                if work.backend == "cupy":
                    try:
                        probe["spin_registers"] = int(work.kernel.num_regs)
                    except Exception:  # informative only
                        probe["spin_registers"] = None
            items = [item.partition("=") for item in args.calibrate.split(",") if item]
            targets = dict((k, float(v)) for k, _sep, v in items)
            for name in names:
                if name in targets:
                    iters, probe["solo_ms"][name] = calibrate_spin(work, targets[name], name)
                    probe.setdefault("kernels", {})[name] = {"blocks": work.kernels[name]["blocks"], "iters": iters}
                    work.prepare_run(name)
                    work.launch(name)
                    probe["checks"][name] = work.check(name)
                elif name != "spin":
                    probe["solo_ms"][name] = time_launches(work, name, 5)
            emit(probe)
            return 0
        checks = warm_up(work, names, args.warmup)
        emit({"event": "ready", "pid": os.getpid(), "backend": work.backend, "checks": checks,
              "spin_blocks": work.spin_blocks, "spin_iters": work.iters, "device": work.info,
              "kernels": dict((k, {"blocks": v["blocks"], "iters": v["iters"]}) for k, v in work.kernels.items())})
        for line in sys.stdin:
            line = line.strip()
            if not line:
                continue
            cmd = json.loads(line)
            if cmd.get("cmd") == "exit":
                return 0
            if cmd.get("cmd") == "run":
                if args.sim_fail == "hang":
                    time.sleep(3600)
                emit(run_command(work, cmd))
            elif cmd.get("cmd") == "inspect":
                seen = work.inspect()
                seen.update(event="inspect", pid=os.getpid(), uid=os.getuid(), mps_env=dict(
                    (k, v) for k, v in sorted(os.environ.items()) if k.startswith("CUDA_MPS_")))
                emit(seen)
            else:
                emit({"event": "error", "pid": os.getpid(), "message": "unknown command %r" % cmd.get("cmd")})
        return 0  # stdin closed: the benchmark is gone
    except Exception as exc:
        emit({"event": "error", "pid": os.getpid(), "message": "%s: %s" % (type(exc).__name__, exc),
              "traceback": traceback.format_exc()[-2000:]})
        return 3


if __name__ == "__main__":
    sys.exit(main())
