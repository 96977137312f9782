"""Callback for the benchmarks: the wall time of each play, written as JSON to the file that
CELERY_TOOLKIT_PLAY_TIMES names ([[play name, seconds], ...] in run order)."""

from __future__ import annotations

import json
import os
import time

from ansible.plugins.callback import CallbackBase


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "play_times"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self) -> None:
        super().__init__()
        self._plays: list[list] = []
        self._started = 0.0

    def _close(self) -> None:
        if self._plays and len(self._plays[-1]) == 1:
            self._plays[-1].append(round(time.monotonic() - self._started, 2))

    def v2_playbook_on_play_start(self, play) -> None:
        self._close()
        self._started = time.monotonic()
        self._plays.append([play.get_name().strip()])

    def v2_playbook_on_stats(self, stats) -> None:
        self._close()
        path = os.environ.get("CELERY_TOOLKIT_PLAY_TIMES")
        if path:
            with open(path, "w", encoding="utf-8") as out:
                json.dump(self._plays, out)
