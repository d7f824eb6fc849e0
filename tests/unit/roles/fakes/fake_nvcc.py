"""A fake nvcc for the cuda_workload role tests: `nvcc [flags] -o OUT SRC` writes OUT, a stand-in kernel_pair that
speaks the same protocol (READY, wait for a line, iterations, RESULT) on the simulated GPU of fake_gpu.py (it connects
to the fake MPS daemon the way the CUDA driver does, and runs beside the other kernel of the pair under MPS, in turns
under time-slicing). FAKE_NVCC_FAIL=1 fails the build."""
import os
import sys

PROGRAM = r'''#!%s
import sys
sys.path.insert(0, %r)
import fake_gpu
sys.exit(fake_gpu.main("kernel_pair", sys.argv[1:]))
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
    handle.write(PROGRAM % (sys.executable, os.path.dirname(os.path.abspath(__file__))))
os.chmod(out, 0o755)
