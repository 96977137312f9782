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


# How long a count waits for the broker's Redis to answer again (a failover: a replica is
# promoted within seconds), before the task fails.
RETRY_SECONDS = 60.0


@functools.cache
def _client(url: str) -> redis.Redis:
    if url.startswith("sentinel://"):
        # The broker's own client: kombu asks the sentinels for the primary, again after a failover.
        return app.connection_for_write().default_channel.client
    return redis.Redis.from_url(url)


def record(token: str, seconds: float = 0.0) -> dict[str, Any]:
    """Sleep ``seconds`` then count one execution of ``token``; shared by both variants. A count
    the broker could not take (its primary lost, a replica not promoted yet) is tried again."""
    if seconds:
        time.sleep(seconds)
    deadline = time.monotonic() + RETRY_SECONDS
    while True:
        try:
            count = _client(app.conf.broker_url).hincrby(LEDGER_KEY, token, 1)
            break
        except (redis.ConnectionError, redis.TimeoutError, redis.ReadOnlyError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    return {"token": token, "count": int(count)}


@app.task
def record_fast(token: str, seconds: float = 0.0) -> dict[str, Any]:
    """Ledger entry through the ``high`` queue."""
    return record(token, seconds)


@app.task
def record_slow(token: str, seconds: float = 0.0) -> dict[str, Any]:
    """Ledger entry through the ``low`` queue."""
    return record(token, seconds)
