# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The seeds' experiment on a GPU host without Ansible: what `make lab` reports at its end, against a daemon of its own.

    python3 benchmarks/seed_experiment.py --out OUT        (about a minute on an H200; tests/gpu/run_all.sh's `workloads`)
    python3 benchmarks/seed_experiment.py --dry-run

It starts its OWN MPS control daemon on a private pipe directory (no limits: what a lab without replicas gives) and
always quits it at the end, all through the collection's client (MpsControl: the binary find_control_binary finds,
the daemon's environment built, never this process's). It builds kernel_pair.cu with nvcc where nvcc is there (else
the CuPy/PyTorch version of the kernels runs), then does the experiment of the role cuda_workload with the same code
(roles/cuda_workload/files/run_workloads.py --experiment): seed 002's matmul workers and seed 003's kernel pair, each
alone and all at once, with time-slicing (an empty pipe directory: each proven NOT an MPS client) and under the daemon
(each proven to be one by get_client_list). It changes no GPU setting.

Output: OUT/seed_experiment.json and OUT/seed_experiment.md (the table), OUT/seed_experiment.log, and the table, last.
Exit 0 when every run passed, 1 when a check failed, 2 when it could not start. Supersedes sample_workloads.sh.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
FILES = os.path.join(HERE, "..", "roles", "cuda_workload", "files")
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.abspath(FILES))
import mps_benchmark as bench  # noqa: E402  (the daemon, through the collection's client)
import run_workloads  # noqa: E402  (the experiment, the proof and the table: the role's own code)

from ansible_collections.gpulab.mps.plugins.module_utils._command import (  # noqa: E402
    CommandError, CommandTimeout, base_environment, run_bounded)

NVCC_PLACES = ("/usr/local/cuda/bin/nvcc", "/usr/bin/nvcc", "/usr/local/bin/nvcc")
LIBRARY_PROBE = 'import importlib.util as u; print(" ".join(m for m in ("torch", "cupy") if u.find_spec(m)))'


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="seed_experiment_out")
    p.add_argument("--dry-run", action="store_true", help="say what would run; start nothing")
    p.add_argument("--python", default=os.environ.get("PYTHON") or sys.executable,
                   help="the Python with PyTorch or CuPy that runs the workers (default $PYTHON, else this one)")
    p.add_argument("--nvcc", help="nvcc for the kernel pair (default: the first of %s); 'none': no build" %
                   ", ".join(NVCC_PLACES))
    p.add_argument("--matmul-workers", type=int, default=2, help="0 leaves seed 002's workers out")
    p.add_argument("--iterations", type=int, default=10, help="timed iterations of every worker")
    p.add_argument("--device", type=int, default=0)
    p.add_argument("--control-binary", help="nvidia-cuda-mps-control (default: root's and NVIDIA's directories)")
    p.add_argument("--lib", help="a directory holding ansible_collections/gpulab/mps (default: this checkout)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds for one run")
    args = p.parse_args(argv)
    if args.matmul_workers < 0 or args.iterations < 1:
        p.error("--matmul-workers must be >= 0 and --iterations >= 1")
    return args


def find_nvcc(given):
    if given == "none":
        return None
    for path in ([given] if given else NVCC_PLACES):
        if path and os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return None


def libraries(python, say):
    """The CUDA libraries (torch, cupy) that `python` has, through the one runner."""
    try:
        rc, out, err = run_bounded([python, "-c", LIBRARY_PROBE], 60, env=base_environment())
    except (CommandError, CommandTimeout) as exc:
        say("cannot run %s: %s" % (python, exc))
        return []
    return out.split() if rc == 0 else []


def build_kernel_pair(nvcc, workdir, say):
    """The CUDA C kernel pair, or None (then kernel_pair.py runs the same kernels through CuPy or PyTorch)."""
    target = os.path.join(workdir, "kernel_pair")
    try:
        rc, out, err = run_bounded([nvcc, "-O2", "-o", target, os.path.join(FILES, "kernel_pair.cu")], 300,
                                   env=base_environment({"PATH": os.path.dirname(nvcc) + ":/usr/bin:/bin"}))
    except (CommandError, CommandTimeout) as exc:
        say("nvcc could not build kernel_pair.cu (%s): the CuPy/PyTorch version runs instead" % exc)
        return None
    if rc != 0:
        say("nvcc could not build kernel_pair.cu: %s: the CuPy/PyTorch version runs instead" % (out + err).strip()[-600:])
        return None
    say("kernel pair built with %s" % nvcc)
    return target


def workloads(args, kernel_pair, with_matmul):
    """run_workloads.py --workload GROUP/NAME=COMMAND arguments, as the role plans them (tasks/plan.yml)."""
    common = "--iterations %d --device %d --handshake" % (args.iterations, args.device)
    items = []
    if with_matmul:
        items += ["matmul/matmul-%d=%s %s --size 4096 %s" % (i, args.python, os.path.join(FILES, "matmul_worker.py"),
                                                             common) for i in range(args.matmul_workers)]
    program = kernel_pair or "%s %s" % (args.python, os.path.join(FILES, "kernel_pair.py"))
    items += ["kernel_pair/%s=%s --kernel %s --n 16777216 --blocks 4 %s" % (k, program, k, common)
              for k in ("add", "scale")]
    return items


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    say = bench.Console()
    nvcc = find_nvcc(args.nvcc)
    say("plan: seed 002's matmul workers (%d, through %s) and seed 003's kernel pair (%s), %d iterations each, alone "
        "and at once, time-slicing then MPS, against a daemon of this script's own" % (
            args.matmul_workers, args.python, "built with %s" % nvcc if nvcc else "CuPy/PyTorch", args.iterations))
    if args.dry_run:
        say("dry run: nothing started")
        return 0
    os.makedirs(args.out, exist_ok=True)
    workdir = tempfile.mkdtemp(prefix="gpulab-seed-experiment-")
    daemon, report, status = None, None, 2
    try:
        found = libraries(args.python, say)
        with_matmul = args.matmul_workers > 0 and bool(found)
        if args.matmul_workers and not found:
            say("%s has neither PyTorch nor CuPy: seed 002's matmul workers are left out" % args.python)
        kernel_pair = build_kernel_pair(nvcc, workdir, say) if nvcc else None
        if not kernel_pair and not found:
            raise bench.BenchError("neither nvcc nor a Python with PyTorch or CuPy (%s): nothing can run the kernel "
                                   "pair; pass --python or --nvcc" % args.python)
        daemon = bench.Daemon(os.path.join(workdir, "pipe"), os.path.join(workdir, "log"), True, say,
                              control_binary=args.control_binary, state_dir=os.path.join(workdir, "state"))
        daemon.start()
        runner_argv = ["--experiment", "--pipe-dir", daemon.pipe_dir, "--log-dir", daemon.log_dir,
                       "--control-binary", daemon.binary, "--timeout", str(args.timeout)]
        for item in workloads(args, kernel_pair, with_matmul):
            runner_argv += ["--workload", item]
        runner_args = run_workloads.parse_args(runner_argv)
        runner_args.binary_problem = None
        report = run_workloads.experiment(runner_args, daemon.control, runner_args.groups, runner_args.client_env)
        status = 0 if report["ok"] else 1
    except bench.BenchError as exc:
        say("ERROR: %s" % exc)
    finally:
        if daemon is not None and daemon.own:
            try:
                daemon.stop()
            except bench.BenchError as exc:
                say("WARNING: %s" % exc)
                status = max(status, 1)
        shutil.rmtree(workdir, ignore_errors=True)
    if report is not None:
        with open(os.path.join(args.out, "seed_experiment.json"), "w") as handle:
            handle.write(json.dumps(report, indent=1, sort_keys=True) + "\n")
        with open(os.path.join(args.out, "seed_experiment.md"), "w") as handle:
            handle.write(report["markdown"])
    with open(os.path.join(args.out, "seed_experiment.log"), "w") as handle:
        handle.write("\n".join(say.lines) + "\n")
    if report is not None:
        print("\n" + report["table_text"] + "\nThe daemon's defaults: %s." % report["daemon"]["defaults"], flush=True)
        for problem in report["problems"]:
            print("PROBLEM: " + problem, flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
