"""Helpers shared by the simulated tasks."""

from __future__ import annotations

import random
import time


def work(min_seconds: float, max_seconds: float | None = None) -> float:
    """Sleep for a duration in ``[min_seconds, max_seconds]`` and return it."""
    upper = min_seconds if max_seconds is None else max_seconds
    duration = random.uniform(min_seconds, upper)
    time.sleep(duration)
    return round(duration, 4)
