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

Protocol: once its context exists (and the optional allocation was tried), the client prints one
JSON line (pid, device, the number of devices it sees and the UUID of the one it uses, as the driver
inside the client reports them, free and total memory as the client sees it, the outcome of the allocation),
then holds the context until its stdin closes (--release-on-stdin 1) or --hold seconds pass, releases
it and exits 0. The caller reads the daemon's `ps` while the context is held (ClientProcess does the
waiting, with a bound). On a CUDA error it prints one JSON line with "error" and exits 2.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import time

# What the probe keeps of each stream of its client (its report is one short line).
MAX_OUTPUT = 1 << 20

CLIENT_SOURCE = r'''
import ctypes, json, os, select, sys, time

def main(argv):
    args = dict(device=0, alloc_mib=0, hold=60.0, release_on_stdin=0)
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
        count = ctypes.c_int()
        check(cuda.cuDeviceGetCount(ctypes.byref(count)), "cuDeviceGetCount")
        out["device_count"] = count.value
        check(cuda.cuDeviceGet(ctypes.byref(dev), args["device"]), "cuDeviceGet")
        # Which physical GPU this really is (under MPS and CUDA_VISIBLE_DEVICES the ordinal says nothing).
        raw = ctypes.create_string_buffer(16)
        get_uuid = getattr(cuda, "cuDeviceGetUuid_v2", None) or cuda.cuDeviceGetUuid
        check(get_uuid(raw, dev), "cuDeviceGetUuid")
        h = raw.raw.hex()
        out["uuid"] = "GPU-%s-%s-%s-%s-%s" % (h[:8], h[8:12], h[12:16], h[16:20], h[20:])
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


def client_argv(python, device=0, alloc_mib=0, hold=60, release_on_stdin=False):
    """argv that runs the client with the given Python interpreter."""
    return [python, "-c", CLIENT_SOURCE, "--device", str(int(device)), "--alloc-mib", str(int(alloc_mib)),
            "--hold", str(float(hold)), "--release-on-stdin", "1" if release_on_stdin else "0"]


def parse_client_report(output):
    """The client's JSON line (the last line of its output) as a dict; ValueError when there is none."""
    lines = [line for line in (output or "").splitlines() if line.strip()]
    if not lines:
        raise ValueError("the client printed nothing")
    report = json.loads(lines[-1])
    if not isinstance(report, dict) or "pid" not in report:
        raise ValueError("not a client report: %r" % (lines[-1],))
    return report


class ClientTimeout(Exception):
    """The client did not do its part in time; it was killed."""


class ClientProcess(object):
    """The probe client as a child process that holds its context until release(); every wait is bounded."""

    def __init__(self, argv, env):
        self.argv = argv
        # A session of its own: kill() ends whatever it started too.
        self.proc = subprocess.Popen(argv, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, close_fds=True, start_new_session=True)
        self.stdout = b""
        self.stderr = b""

    def _read(self, until, deadline):
        """Read stdout and stderr until until() holds, both close, or the deadline passes (then kill)."""
        streams = {self.proc.stdout.fileno(): "stdout", self.proc.stderr.fileno(): "stderr"}
        while streams and not until():
            left = deadline - time.time()
            if left <= 0:
                self.kill()
                raise ClientTimeout()
            ready = select.select(list(streams), [], [], min(left, 0.5))[0]
            for fd in ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    del streams[fd]
                elif streams[fd] == "stdout":
                    self.stdout = (self.stdout + chunk)[:MAX_OUTPUT]
                else:
                    self.stderr = (self.stderr + chunk)[:MAX_OUTPUT]

    def report(self, deadline):
        """The client's JSON line, once it holds its context (or failed); raises ClientTimeout."""
        self._read(lambda: b"\n" in self.stdout, deadline)
        return parse_client_report(self.stdout.decode("utf-8", "replace").split("\n", 1)[0])

    def release(self, deadline):
        """Let the client release its context and exit; returns its exit code (raises ClientTimeout)."""
        try:
            self.proc.stdin.close()
        except (OSError, ValueError):
            pass
        self._read(lambda: False, deadline)
        try:
            return self.proc.wait(timeout=max(0.1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            self.kill()
            raise ClientTimeout()

    def kill(self):
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except OSError:
                self.proc.kill()
            self.proc.wait()

    def output(self):
        return self.stdout.decode("utf-8", "replace"), self.stderr.decode("utf-8", "replace")


if __name__ == "__main__":
    exec(compile(CLIENT_SOURCE, "cuda_client", "exec"))
