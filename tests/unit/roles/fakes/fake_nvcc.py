"""A fake nvcc for the cuda_workload role tests: `nvcc [flags] -o OUT SRC` writes OUT, a stand-in kernel_pair
that speaks the same protocol (READY, wait for a line, iterations, RESULT) and connects to the fake MPS daemon the
way the CUDA driver does (only when CUDA_MPS_PIPE_DIRECTORY holds a live daemon). FAKE_NVCC_FAIL=1 fails the build."""
import os
import sys

PROGRAM = r'''#!%s
import json, os, sys
pipe = os.environ.get("CUDA_MPS_PIPE_DIRECTORY", "")
if os.path.exists(os.path.join(pipe, "control")) and os.path.exists(os.path.join(pipe, "nvidia-cuda-mps-control.pid")):
    os.makedirs(os.path.join(pipe, "sim-clients"), exist_ok=True)
    open(os.path.join(pipe, "sim-clients", str(os.getpid())), "w").close()
kernel = sys.argv[sys.argv.index("--kernel") + 1]
if "--handshake" in sys.argv:
    print("READY %%d" %% os.getpid(), flush=True)
    if not sys.stdin.readline():
        sys.exit(0)
for i in range(3):
    print("iteration %%d: %%.3f ms" %% (i, 0.5), flush=True)
print("RESULT " + json.dumps({"workload": "kernel_pair", "kernel": kernel, "pid": os.getpid(),
                              "implementation": "cuda-c", "check": "ok"}), flush=True)
'''

if os.environ.get("FAKE_NVCC_FAIL"):
    print("kernel_pair.cu(1): error: simulated compile failure", file=sys.stderr)
    sys.exit(1)
args = sys.argv[1:]
out = args[args.index("-o") + 1]
source = args[-1]
if not source.endswith(".cu") or not os.path.exists(source):
    print("nvcc fatal: no input file %s" % source, file=sys.stderr)
    sys.exit(1)
with open(out, "w") as handle:
    handle.write(PROGRAM % sys.executable)
os.chmod(out, 0o755)
