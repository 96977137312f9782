"""Exactly-once accounting for load tests.

Each execution increments field ``token`` of the Redis hash ``refapp:ledger`` on the broker's
Redis; a load test then checks every token was counted exactly once.
"""

from __future__ import annotations

import functools
import time
from typing import Any

import redis

from refapp.celery import app

LEDGER_KEY = "refapp:ledger"


@functools.cache
def _client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url)


def record(token: str, seconds: float = 0.0) -> dict[str, Any]:
    """Sleep ``seconds`` then count one execution of ``token``; shared by both variants."""
    if seconds:
        time.sleep(seconds)
    count = _client(app.conf.broker_url).hincrby(LEDGER_KEY, token, 1)
    return {"token": token, "count": int(count)}


@app.task
def record_fast(token: str, seconds: float = 0.0) -> dict[str, Any]:
    """Ledger entry through the ``high`` queue."""
    return record(token, seconds)


@app.task
def record_slow(token: str, seconds: float = 0.0) -> dict[str, Any]:
    """Ledger entry through the ``low`` queue."""
    return record(token, seconds)
