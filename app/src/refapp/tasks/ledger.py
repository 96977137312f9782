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
RAN_KEY = "refapp:ledger:ran"


# How long a count waits for the broker's Redis to answer again (a failover: a replica is
# promoted within seconds), before the task fails.
RETRY_SECONDS = 60.0


@functools.cache
def _client(url: str) -> redis.Redis:
    if url.startswith("sentinel://"):
        # The broker's own client: kombu asks the sentinels for the primary, again after a failover.
        return app.connection_for_write().default_channel.client
    return redis.Redis.from_url(url)


def _replicated(client: redis.Redis, url: str, token: str) -> None:
    """With a replicated broker (a Sentinel URL): note when the task ran (field ``token`` of
    ``refapp:ledger:ran``, the host's clock: the failover tests measure how long nothing ran),
    then wait (1 s at most) until a replica has the count: one the primary took just before its
    loss would be gone with it, and a task that ran would be counted as lost. Needs Redis's
    WAIT (the app's ACL user: +wait)."""
    if url.startswith("sentinel://"):
        client.hset(RAN_KEY, token, repr(time.time()))
        client.execute_command("WAIT", 1, 1000)


def record(token: str, seconds: float = 0.0) -> dict[str, Any]:
    """Sleep ``seconds`` then count one execution of ``token``; shared by both variants. A count
    the broker could not take (its primary lost, a replica not promoted yet) is tried again."""
    if seconds:
        time.sleep(seconds)
    deadline = time.monotonic() + RETRY_SECONDS
    while True:
        try:
            client = _client(app.conf.broker_url)
            count = client.hincrby(LEDGER_KEY, token, 1)
            _replicated(client, app.conf.broker_url, token)
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
