# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A SCRIPTED nvidia-cuda-mps-control for the hostile replays: the stand-in daemon answers, and a scenario adds what
the H200 would have printed in a situation the stand-in cannot make by itself.

    python scripted_mps_control.py SCENARIO.json [CLI arguments]   (stdin: the commands, as the real CLI reads them)

With arguments (`-d`), the stand-in runs as it is. Without, the commands go to the stand-in's client and its
answer is passed on with the scenario's additions, read at each call (the test writes the scenario once it knows
the PIDs):
  {"client_lists": {"<server pid>": [pid, ...]},  PIDs get_client_list <server> lists after the stand-in's
   "ps_rows": ["<row>", ...]}                     rows printed right after ps's header (a header is printed when
                                                  the stand-in said "Server not found")
What it stands for, in the replays: a client in a pod, listed under its PID inside the pod's PID namespace (a number
that on the host belongs to another process); a PID reused by another process after its client ended, before the
daemon noticed; a client list that names a process the ps table puts on another server.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

STANDIN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "standins", "nvidia-cuda-mps-control")
HEADER = b"%-10s%-10s%-15s%-26s%-15s%-15s" % (b"PID", b"ID", b"SERVER", b"DEVICE", b"NAMESPACE", b"COMMAND")


def main(argv):
    scenario_path, args = argv[0], argv[1:]
    if args:
        os.execv(sys.executable, [sys.executable, STANDIN] + args)
    data = sys.stdin.buffer.read()
    done = subprocess.run([sys.executable, STANDIN], input=data, capture_output=True, check=False)
    out = done.stdout
    with open(scenario_path) as handle:
        scenario = json.load(handle)
    commands = [line.split() for line in data.decode("utf-8", "replace").split("\n") if line.strip()]
    if done.returncode == 0 and len(commands) == 1:
        words = commands[0]
        if words[0] == "get_client_list" and len(words) == 2:
            out += b"".join(b"%d\n" % pid for pid in scenario.get("client_lists", {}).get(words[1], []))
        elif words == ["ps"] and scenario.get("ps_rows"):
            rows = b"".join(row.encode("utf-8") + b"\n" for row in scenario["ps_rows"])
            if out.startswith(b"PID"):
                header, _newline, rest = out.partition(b"\n")
                out = header + b"\n" + rows + rest
            else:
                out = HEADER + b"\n" + rows
    sys.stdout.buffer.write(out)
    sys.stderr.buffer.write(done.stderr)
    return done.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
