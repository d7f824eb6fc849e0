# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""A minimal CUDA client for probing MPS, using only the driver (libcuda.so.1) through ctypes.

This is a private module_utils of gpulab.mps: its API may change without notice.

Why its own client: a CUDA client whose CUDA_MPS_PIPE_DIRECTORY points nowhere does not fail,
it silently runs without MPS. The only proof is to see the client's PID in the daemon's `ps`
while it holds a context. This client needs no CUDA toolkit, PyTorch or CuPy, so the check
runs on any host with a driver. CLIENT_SOURCE is run as `python -c CLIENT_SOURCE` in a child
process; the same file also runs on its own: `python _cuda_client.py --hold 30`.

Protocol: once its context exists, the client (with --ps-binary) asks the MPS control daemon for
its `ps` table until its own PID shows (at most --ps-wait seconds), so that the table is read
while the context is held; it prints one JSON line (pid, device, free and total memory as the
client sees them, the outcome of an optional allocation, the raw `ps` output), holds the context
for --hold seconds (or until its stdin closes, with --release-on-stdin 1), releases it and exits 0.
On a CUDA error it prints one JSON line with "error" and exits 2.
"""

from __future__ import annotations

import json

CLIENT_SOURCE = r'''
import ctypes, json, os, select, subprocess, sys, time

def read_ps(binary, pid, wait):
    """The daemon's ps output, polled until this PID is listed or `wait` seconds pass."""
    deadline = time.time() + wait
    while True:
        try:
            done = subprocess.run([binary], input="ps\n", capture_output=True, text=True, timeout=20)
            output, rc = done.stdout + done.stderr, done.returncode
        except (OSError, subprocess.SubprocessError) as e:
            output, rc = str(e), -1
        listed = any(line.split()[:1] == [str(pid)] for line in output.splitlines())
        if listed or rc != 0 or time.time() >= deadline:
            return output, rc
        time.sleep(0.2)

def main(argv):
    args = dict(device=0, alloc_mib=0, hold=60.0, release_on_stdin=0, ps_binary="", ps_wait=10.0)
    it = iter(argv)
    for a in it:
        key = a.lstrip("-").replace("-", "_")
        args[key] = type(args[key])(next(it))
    out = {"pid": os.getpid(), "device": args["device"]}
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError as e:
        out["error"] = "cannot load libcuda.so.1 (is the NVIDIA driver installed?): %s" % e
        print(json.dumps(out)); sys.stdout.flush(); return 2

    def name(rc):
        s = ctypes.c_char_p()
        cuda.cuGetErrorName(rc, ctypes.byref(s))
        return (s.value or b"CUDA_ERROR_%d" % rc).decode()

    def check(rc, what):
        if rc != 0:
            raise RuntimeError("%s failed: %s" % (what, name(rc)))

    ctx = ctypes.c_void_p()
    dev = ctypes.c_int()
    ptr = ctypes.c_uint64()
    try:
        check(cuda.cuInit(0), "cuInit")
        check(cuda.cuDeviceGet(ctypes.byref(dev), args["device"]), "cuDeviceGet")
        # The primary context: its API is the same on every driver since CUDA 7.
        check(cuda.cuDevicePrimaryCtxRetain(ctypes.byref(ctx), dev), "cuDevicePrimaryCtxRetain")
        check(cuda.cuCtxSetCurrent(ctx), "cuCtxSetCurrent")
        free, total = ctypes.c_size_t(), ctypes.c_size_t()
        check(cuda.cuMemGetInfo_v2(ctypes.byref(free), ctypes.byref(total)), "cuMemGetInfo")
        out["free_bytes"], out["total_bytes"] = free.value, total.value
        if args["alloc_mib"] > 0:
            size = args["alloc_mib"] << 20
            rc = cuda.cuMemAlloc_v2(ctypes.byref(ptr), ctypes.c_size_t(size))
            out["alloc"] = {"mib": args["alloc_mib"], "ok": rc == 0, "error": None if rc == 0 else name(rc)}
            if rc == 0:
                check(cuda.cuMemsetD8_v2(ptr, ctypes.c_ubyte(1), ctypes.c_size_t(size)), "cuMemsetD8")
                check(cuda.cuCtxSynchronize(), "cuCtxSynchronize")
    except RuntimeError as e:
        out["error"] = str(e)
        print(json.dumps(out)); sys.stdout.flush(); return 2
    if args["ps_binary"]:
        out["ps"], out["ps_rc"] = read_ps(args["ps_binary"], out["pid"], args["ps_wait"])
    print(json.dumps(out)); sys.stdout.flush()
    deadline = time.time() + args["hold"]
    while time.time() < deadline:
        wait = min(0.5, max(0.0, deadline - time.time()))
        if not args["release_on_stdin"]:
            time.sleep(wait)
            continue
        ready, _, _ = select.select([sys.stdin], [], [], wait)
        if ready and not os.read(sys.stdin.fileno(), 4096):
            break
    if ptr.value:
        cuda.cuMemFree_v2(ptr)
    cuda.cuDevicePrimaryCtxRelease_v2(dev)
    return 0

sys.exit(main(sys.argv[1:]))
'''


def client_argv(python, device=0, alloc_mib=0, hold=60, release_on_stdin=False, ps_binary=None, ps_wait=10):
    """argv that runs the client with the given Python interpreter."""
    argv = [python, "-c", CLIENT_SOURCE, "--device", str(int(device)), "--alloc-mib", str(int(alloc_mib)),
            "--hold", str(float(hold)), "--release-on-stdin", "1" if release_on_stdin else "0"]
    if ps_binary:
        argv += ["--ps-binary", ps_binary, "--ps-wait", str(float(ps_wait))]
    return argv


def parse_client_report(output):
    """The client's JSON line (the last line of its output) as a dict; ValueError when there is none."""
    lines = [line for line in (output or "").splitlines() if line.strip()]
    if not lines:
        raise ValueError("the client printed nothing")
    report = json.loads(lines[-1])
    if not isinstance(report, dict) or "pid" not in report:
        raise ValueError("not a client report: %r" % (lines[-1],))
    return report


if __name__ == "__main__":
    exec(compile(CLIENT_SOURCE, "cuda_client", "exec"))
