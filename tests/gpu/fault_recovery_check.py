"""Does the collection's FAULT recovery work on a real GPU (issue 14)? For the lead to run on the GPU host:

    python3 tests/gpu/fault_recovery_check.py --out DIR [--control-binary PATH]

It starts its OWN control daemon in a private pipe directory (a fresh 0700 directory under /run or /root), never the
lab's, and stops it (and the servers it listed) at the end. Then, with the collection's code and WITHOUT Ansible
(module_utils imported through a temporary ansible_collections link, as tests/gpu/device_plugin/lane.py does):
  1. two CuPy clients that linger after their error (tests/gpu/mps_fault_experiment.py's), one healthy, one writing
     out of bounds: the server goes to FAULT (the H200's sticky experiment);
  2. MpsControl.health (what mps_info reports) must say server_fault, unhealthy;
  3. _mps_recovery.recover (what mps_daemon fault_recovery=end_clients runs) must end exactly those two clients;
  4. the server must be ACTIVE again, health healthy, and a new CuPy client must then run.
Prints a verdict (PASS/FAIL), writes DIR/fault_recovery.json; under 90 s. It never changes compute mode, clocks,
power, persistence or MIG.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "device_plugin"))
from mps_fault_experiment import FAULTY, HEALTHY, SHORT  # noqa: E402  (the clients of the recorded experiment)
from lane import collection_path  # noqa: E402  (stdlib only: the temporary ansible_collections link)

CLI_TIMEOUT = 10


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--control-binary", default=shutil.which("nvidia-cuda-mps-control") or
                        "/usr/local/nvidia/bin/nvidia-cuda-mps-control")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    started = time.monotonic()
    base = collection_path()
    sys.path.insert(0, base)
    from ansible_collections.gpulab.mps.plugins.module_utils._mps_control import MpsControl
    from ansible_collections.gpulab.mps.plugins.module_utils._mps_recovery import describe, recover

    root = tempfile.mkdtemp(prefix="gpulab-recovery-", dir="/run" if os.access("/run", os.W_OK) else None)
    os.chmod(root, 0o700)
    pipe, logs = os.path.join(root, "pipe"), os.path.join(root, "log")
    os.mkdir(pipe, 0o700)
    os.mkdir(logs, 0o700)
    env = dict(os.environ, CUDA_MPS_PIPE_DIRECTORY=pipe, CUDA_MPS_LOG_DIRECTORY=logs)
    control = MpsControl(args.control_binary, pipe, logs, timeout=CLI_TIMEOUT)
    report = {"pipe_directory": pipe, "checks": {}, "steps": []}
    clients, servers_seen, daemon_pid = [], set(), None

    def note(step, **data):
        entry = dict(t=round(time.monotonic() - started, 2), step=step, **data)
        report["steps"].append(entry)
        print(json.dumps(entry, default=str), flush=True)

    def client(code, *argv):
        proc = subprocess.Popen([sys.executable, "-c", code] + [str(a) for a in argv], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        clients.append(proc)
        return proc

    def wait_line(proc, word, seconds):
        deadline = time.time() + seconds
        while time.time() < deadline:
            line = proc.stdout.readline()
            if not line:
                return None
            if word in line:
                return line.strip()
        return None

    try:
        rc = control.start_daemon()[0]
        if not control.wait(control.is_running, 10):
            raise RuntimeError("the private MPS daemon did not answer (rc %s)" % rc)
        daemon_pid = control.daemon_pid()
        note("daemon started", pid=daemon_pid)
        healthy = client(HEALTHY, 60, 60)
        note("healthy client", pid=healthy.pid, line=wait_line(healthy, "ready", 30))
        faulty = client(FAULTY, 60)
        note("faulty client", pid=faulty.pid, line=wait_line(faulty, "ERROR", 30))
        fault_server = None
        deadline = time.time() + 15
        while time.time() < deadline and fault_server is None:
            state = control.snapshot()
            servers_seen.update(s["pid"] for s in state["servers"])
            fault_server = next((s["pid"] for s in state["servers"] if s["status"] == "FAULT"), None)
            time.sleep(0.2)
        note("fault", server=fault_server, servers=state["servers"])
        report["checks"]["server in FAULT"] = fault_server is not None
        state, health = control.health()
        note("health before", health=health)
        report["checks"]["health says server_fault"] = (not health["healthy"]) and any(
            p["kind"] == "server_fault" and p["server"] == fault_server for p in health["problems"])
        lingering = sorted(next((s["clients"] for s in state["servers"] if s["pid"] == fault_server), []))
        predicted = recover(control, state, check_mode=True, timeout=30)
        note("check mode", would_end=predicted["would_end"], refused=predicted["refused"])
        report["checks"]["check mode ends nothing"] = healthy.poll() is None and faulty.poll() is None
        result = recover(control, control.snapshot(), timeout=30)
        note("recovered", result=result, text=describe(result))
        report["checks"]["the two lingering clients were ended"] = (
            sorted((result["signals"] or {}).get("ended", [])) == sorted([healthy.pid, faulty.pid]) == lingering)
        report["checks"]["clients gone"] = healthy.wait(timeout=5) is not None and faulty.wait(timeout=5) is not None
        report["checks"]["server ACTIVE again, same PID"] = result["status_after"].get(fault_server) == "ACTIVE"
        state, health = control.health()
        note("health after", health=health)
        report["checks"]["health healthy after"] = health["healthy"]
        new = client(SHORT)
        line = wait_line(new, "ok", 30)
        note("new client", pid=new.pid, line=line, rc=new.wait(timeout=30))
        report["checks"]["a new client runs"] = bool(line) and new.returncode == 0
    except Exception as exc:  # the report says what failed; the clean-up runs
        note("error", error="%s: %s" % (type(exc).__name__, exc))
        report["checks"]["no error"] = False
    finally:
        for proc in clients:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
        try:
            servers_seen.update(control.server_list())
            control.run("quit")
        except Exception as exc:  # noqa: BLE001  the daemon may be gone already
            note("quit failed", error=str(exc))
        time.sleep(1)
        # Only what this run's own daemon listed, and only while it still is an MPS binary.
        for pid in sorted(servers_seen | ({daemon_pid} if daemon_pid else set())):
            try:
                with open("/proc/%d/cmdline" % pid, "rb") as handle:
                    if b"nvidia-cuda-mps" in handle.read().split(b"\0")[0]:
                        os.kill(pid, signal.SIGKILL)
                        note("killed leftover", pid=pid)
            except OSError:
                pass
        for name in ("control.log", "server.log"):
            if os.path.exists(os.path.join(logs, name)):
                shutil.copy(os.path.join(logs, name), os.path.join(args.out, "recovery-" + name))
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(base, ignore_errors=True)
    report["verdict"] = "PASS" if report["checks"] and all(report["checks"].values()) else "FAIL"
    report["seconds"] = round(time.monotonic() - started, 1)
    with open(os.path.join(args.out, "fault_recovery.json"), "w") as handle:
        json.dump(report, handle, indent=1, default=str)
    print("%s: %s" % (report["verdict"], ", ".join("%s=%s" % kv for kv in report["checks"].items())))
    return 0 if report["verdict"] == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
