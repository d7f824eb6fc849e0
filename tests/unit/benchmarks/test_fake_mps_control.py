# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The fake control's client list: a registration left by a client that ended names no client, even when another
process now has its PID. Regression: a busy loop of the machine (python3 -c 'while True: pass') got the PID of a
simulated client that had ended, and the QoS lane's rehearsal failed with 'the daemon ... already serves clients'."""
from __future__ import annotations

import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import fake_mps_control  # noqa: E402


def register(folder, pid, content):
    with open(os.path.join(folder, str(pid)), "w") as handle:
        handle.write(content)


def test_only_the_process_that_registered_is_a_client(tmp_path):
    folder = tmp_path / "sim-clients"
    folder.mkdir()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        register(folder, live.pid, fake_mps_control.start_time(live.pid))
        # What an ended client leaves, now that its PID is another process's: another start time, or none at all.
        register(folder, other.pid, str(int(fake_mps_control.start_time(other.pid)) - 1))
        register(folder, os.getpid(), "")
        register(folder, 4194304 + 7, "1")  # past any pid_max: no such process
        assert fake_mps_control.clients(str(tmp_path)) == [live.pid]
    finally:
        for process in (live, other):
            process.kill()
            process.wait()
    assert fake_mps_control.clients(str(tmp_path)) == []
