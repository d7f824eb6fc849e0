"""The metrics collector of role mps_metrics against a REAL MPS daemon with real CUDA clients (issue 14).

Run as root on a GPU host, from a checkout, with prometheus-client importable (PYTHONPATH or the wheelhouse):

    python3 tests/gpu/metrics_check.py --out DIR

It lays out the collector as the roles install it (the mps_client role's list of module_utils files, copied under a
fresh root-owned 0755 directory, and the plan file), builds the host's plan with the collection's _plan from what NVML says (owner host,
aggregate sharing, 20 replicas: the plan's per-replica limits), starts its OWN control daemon in a private 0700
pipe directory with those defaults, then runs the collector in four states and reads the textfile it wrote with
prometheus-client's own parser:

  idle      the daemon, no server
  clients   two CuPy clients (1 GiB each, then asleep): a server, 2 clients, their NVML memory
  fault     a third client writes out of bounds while the two sleep: the server in FAULT, the host unhealthy
  stopped   the clients ended, the server ACTIVE again; then `quit`: the daemon stopped, nothing left

Each check prints ok/FAIL; DIR gets every .prom file and results.json. It never changes compute mode, clocks,
power, persistence or MIG, and stops its daemon and every process it started.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BINARY = shutil.which("nvidia-cuda-mps-control") or "/usr/local/nvidia/bin/nvidia-cuda-mps-control"


def load_experiment():
    spec = importlib.util.spec_from_file_location("fault_experiment",
                                                  os.path.join(ROOT, "tests", "gpu", "mps_fault_experiment.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def layout(base):
    """The roles' installed layout: <base>/lib/ansible_collections/gpulab/mps/plugins/module_utils (mps_client) + the
    collector's script (mps_metrics)."""
    # The client role's list (a plain YAML list of names; read without PyYAML, which the GPU host's Python may lack).
    files, inside = [], False
    with open(os.path.join(ROOT, "roles", "mps_client", "vars", "main.yml")) as handle:
        for line in handle:
            if line.startswith("__mps_client_module_utils:"):
                inside = True
            elif inside and line.startswith("  - "):
                files.append(line[4:].strip())
            elif inside:
                break
    if not files:
        raise SystemExit("no __mps_client_module_utils list in roles/mps_client/vars/main.yml")
    lib = os.path.join(base, "lib")
    target = os.path.join(lib, "ansible_collections", "gpulab", "mps", "plugins", "module_utils")
    os.makedirs(target)
    for name in files:
        shutil.copy(os.path.join(ROOT, "plugins", "module_utils", name), os.path.join(target, name))
    shutil.copy(os.path.join(ROOT, "roles", "mps_metrics", "files", "gpulab_mps_metrics.py"), lib)
    return lib


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--replicas", type=int, default=20)
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    experiment = load_experiment()
    base = tempfile.mkdtemp(prefix="gpulab-metrics-", dir="/run" if os.access("/run", os.W_OK) else None)
    os.chmod(base, 0o755)
    for name in ("etc", "textfile", "state"):
        os.mkdir(os.path.join(base, name), 0o755)
    pipe, log = os.path.join(base, "pipe"), os.path.join(base, "log")
    os.mkdir(pipe, 0o700)
    os.mkdir(log, 0o700)
    lib = layout(base)
    sys.path.insert(0, lib)
    from ansible_collections.gpulab.mps.plugins.module_utils import _nvml, _plan
    from prometheus_client.parser import text_string_to_metric_families

    with _nvml.Nvml() as session:
        driver, gpus = session.driver(), session.gpus()
    plan = _plan.build_plan(driver, gpus, {
        "owner": "host", "pipe_directory": pipe, "log_directory": log, "state_directory": os.path.join(base, "state"),
        "control_binary": BINARY, "service_manager": "direct",
        "sharing": {"mode": "aggregate", "replicas": args.replicas}})
    plan_file = os.path.join(base, "etc", "plan.json")
    with open(plan_file, "w") as handle:
        handle.write(_plan.plan_file_text(plan))
    config = os.path.join(base, "etc", "metrics.json")
    with open(config, "w") as handle:
        json.dump({"textfile_directory": os.path.join(base, "textfile"), "timeout": 10, "plan_file": plan_file}, handle)
    env = dict(os.environ, CUDA_MPS_PIPE_DIRECTORY=pipe, CUDA_MPS_LOG_DIRECTORY=log)
    results = {"plan_daemon": plan["daemon"], "states": {}, "checks": []}
    procs = []

    def cli(command):
        return subprocess.run([BINARY], input=command + "\n", env=env, capture_output=True, text=True,
                              timeout=15, check=False).stdout.strip()

    def collect(name):
        started = time.time()
        run = subprocess.run([sys.executable, os.path.join(lib, "gpulab_mps_metrics.py"), "--config", config],
                             capture_output=True, text=True, timeout=60, check=False)
        with open(os.path.join(base, "textfile", "gpulab_mps.prom")) as handle:
            text = handle.read()
        shutil.copy(os.path.join(base, "textfile", "gpulab_mps.prom"), os.path.join(args.out, name + ".prom"))
        samples = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                key = sample.name + ("{%s}" % ",".join("%s=%s" % kv for kv in sorted(sample.labels.items()))
                                     if sample.labels else "")
                samples[key] = sample.value
        results["states"][name] = {"rc": run.returncode, "stderr": run.stderr[-2000:], "seconds": time.time() - started,
                                   "samples": samples}
        return samples

    def check(name, ok, seen):
        results["checks"].append({"check": name, "ok": bool(ok), "seen": seen})
        print("  %s %s: %s" % ("ok  " if ok else "FAIL", name, json.dumps(seen)[:300]), flush=True)

    def series(samples, prefix):
        return {k: v for k, v in samples.items() if k.startswith(prefix)}

    try:
        subprocess.run([BINARY, "-d"], env=env, timeout=15, check=True)
        time.sleep(0.5)
        atp = plan["daemon"].get("active_thread_percentage")
        if atp is not None:
            cli("set_default_active_thread_percentage %s" % atp)
        for ordinal, size in sorted((plan["daemon"].get("pinned_memory_limit") or {}).items()):
            cli("set_default_device_pinned_mem_limit %s %dM" % (ordinal, int(size) // (1 << 20)))
        print("plan: %s" % json.dumps(plan["daemon"])[:400], flush=True)

        s = collect("idle")
        check("idle: the daemon is up and healthy", s.get("gpulab_mps_control_daemon_up") == 1
              and s.get("gpulab_mps_healthy") == 1, series(s, "gpulab_mps_control_daemon_up"))
        check("idle: limits as planned", s.get("gpulab_mps_limits_as_planned") == 1,
              series(s, "gpulab_mps_limits_as_planned"))
        check("idle: the collector succeeded", s.get("gpulab_mps_collector_success") == 1,
              results["states"]["idle"]["stderr"][-300:])

        for _client in range(2):
            procs.append(subprocess.Popen([sys.executable, "-c", experiment.HEALTHY, "60", "120"], env=env,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        # They loop kernels for 60 s and linger 120 s after an error (the FAULT below gives them one).
        time.sleep(2.5)
        s = collect("clients")
        clients = {k: v for k, v in s.items() if k.startswith("gpulab_mps_server_clients")}
        check("clients: a server with 2 clients", sum(clients.values()) == 2, clients)
        memory = series(s, "gpulab_mps_client_memory_bytes")
        check("clients: each client's GPU memory from NVML", len(memory) == 2 and all(v > 0 for v in memory.values()),
              memory)

        bad = subprocess.Popen([sys.executable, "-c", experiment.FAULTY, "120"], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(bad)
        time.sleep(4)
        s = collect("fault")
        check("fault: the server is in FAULT", any(v == 1 for v in series(s, "gpulab_mps_server_fault").values()),
              series(s, "gpulab_mps_server_fault"))
        check("fault: the host is unhealthy", s.get("gpulab_mps_healthy") == 0, series(s, "gpulab_mps_problems"))

        for proc in procs:
            proc.kill()
            proc.wait(timeout=20)
        time.sleep(2)
        s = collect("recovered")
        check("recovered: no server in FAULT, healthy", s.get("gpulab_mps_healthy") == 1
              and not any(series(s, "gpulab_mps_server_fault").values()), series(s, "gpulab_mps_server_status"))
        cli("quit")
        time.sleep(1)
        s = collect("stopped")
        check("stopped: the daemon is down", s.get("gpulab_mps_control_daemon_up") == 0,
              series(s, "gpulab_mps_daemon_state"))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
        if subprocess.run([BINARY], input="get_server_list\n", env=env, capture_output=True, text=True,
                          timeout=15, check=False).returncode == 0:
            cli("quit")
        with open(os.path.join(args.out, "results.json"), "w") as handle:
            json.dump(results, handle, indent=1)
        shutil.rmtree(base, ignore_errors=True)
    failed = [c for c in results["checks"] if not c["ok"]]
    print("VERDICT: %s (%d checks)" % ("PASS" if not failed else "FAIL", len(results["checks"])))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
