# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The cluster lane's record of a playbook run: one JSON line per task result, with the time it ended.

Enabled by the lane only (ANSIBLE_CALLBACK_PLUGINS=tests/cluster/callback_plugins,
ANSIBLE_CALLBACKS_ENABLED=gpulab_lane_record), next to the default output; the file is named by GPULAB_LANE_RECORD.
Each line: {"t": epoch seconds, "play", "task", "host", "status": ok|changed|failed|skipped|unreachable,
"ignored": bool, "msg": the result's msg (truncated), and where the module returns them
"result", "stdout", "stderr", "rc"}. The lane reads it to time a task (the pod dial-tone's
success), to count what changed and to tell which steps ran (the fleet's drain).
"""

from __future__ import annotations

DOCUMENTATION = """
    name: gpulab_lane_record
    type: notification
    short_description: the cluster lane's record of a run (tests only)
    description:
      - Writes one JSON line per task result to the file named by GPULAB_LANE_RECORD.
    requirements:
      - enabled through ANSIBLE_CALLBACKS_ENABLED
"""

import json
import os
import time

from ansible.plugins.callback import CallbackBase


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "notification"
    CALLBACK_NAME = "gpulab_lane_record"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self, *args, **kwargs):
        super(CallbackModule, self).__init__(*args, **kwargs)
        self.path = os.environ.get("GPULAB_LANE_RECORD")
        self.play = ""

    def write(self, entry):
        if not self.path:
            return
        with open(self.path, "a") as handle:
            handle.write(json.dumps(entry, default=str) + "\n")

    def v2_playbook_on_play_start(self, play):
        self.play = play.get_name()

    def record(self, result, status, ignored=False):
        data = result._result or {}
        if status == "ok" and data.get("changed"):
            status = "changed"
        msg = data.get("msg")
        if msg is None and data.get("results"):
            msg = [r.get("msg") for r in data["results"] if isinstance(r, dict) and r.get("msg")]
        entry = {"t": time.time(), "play": self.play, "task": result._task.get_name(),
                 "host": result._host.get_name(), "status": status, "ignored": bool(ignored),
                 "msg": str(msg)[:2000] if msg else ""}
        # kubernetes.core.k8s_drain says what it did in `result`; k8s_exec's answer is in stdout/stderr/rc.
        for key in ("result", "stdout", "stderr", "rc"):
            if isinstance(data.get(key), (str, int)) and not isinstance(data.get(key), bool):
                entry[key] = data[key] if isinstance(data[key], int) else data[key][:2000]
        self.write(entry)

    def v2_runner_on_ok(self, result):
        self.record(result, "ok")

    def v2_runner_on_failed(self, result, ignore_errors=False):
        self.record(result, "failed", ignored=ignore_errors)

    def v2_runner_on_skipped(self, result):
        self.record(result, "skipped")

    def v2_runner_on_unreachable(self, result):
        self.record(result, "unreachable")
