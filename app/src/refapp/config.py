"""Configuration of the reference Celery application.

Everything is derived from environment variables by the pure function :func:`from_env`,
which returns a ``dict`` of Celery setting names (lowercase, new-style) to values.
Importing this module never connects to a broker.

Environment variables
=====================

============================== ============================ ================================
Variable                       Default                      Meaning
============================== ============================ ================================
``CELERY_BROKER_URL``          ``redis://localhost:6379/0`` ``broker_url``
``CELERY_RESULT_BACKEND``      broker URL with db ``1`` if  ``result_backend``
                               Redis, else the broker URL
``REFAPP_HEAVY_TASK_SECONDS``  ``5``                        default duration (s) of the
                                                            simulated heavy tasks
``REFAPP_TASK_TIME_LIMIT``     ``1800``                     hard time limit (s) of the
                                                            heavy tasks
``REFAPP_VISIBILITY_TIMEOUT``  ``7200``                     Redis visibility timeout (s),
                                                            must be > the time limit plus
                                                            the longest countdown
``REFAPP_PREFETCH_MULTIPLIER`` ``1``                        ``worker_prefetch_multiplier``
============================== ============================ ================================

Variables read by the tasks at run time only (not by :func:`from_env`):
``CELERY_WORKER_GROUP`` and ``CELERY_APP_RELEASE`` (reported by ``refapp.tasks.probe.probe``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from celery.schedules import crontab
from kombu import Exchange, Queue

#: Queue names, highest priority first. ``task_create_missing_queues`` is off, so these are
#: the only queues a task can be sent to.
QUEUES: tuple[str, ...] = ("high", "default", "low")
DEFAULT_QUEUE = "default"

#: The routing table: task-name glob pattern -> queue name, resolved by Celery's own router
#: (``task_routes``). Exact names are matched before patterns; patterns in this order.
#: ``refapp.tasks.probe.probe`` is deliberately not matched: it goes to ``DEFAULT_QUEUE``
#: unless it is sent with an explicit ``queue=``.
ROUTES: dict[str, str] = {
    "refapp.tasks.notifications.*": "high",
    "refapp.tasks.background.*": "default",
    "refapp.tasks.heavy.*": "low",
    "refapp.tasks.ledger.record_fast": "high",
    "refapp.tasks.ledger.record_slow": "low",
}

#: Longest ``countdown``/``eta`` delay (s) any task of the app is sent with. None uses one.
LONGEST_COUNTDOWN_SECONDS = 0

DEFAULT_BROKER_URL = "redis://localhost:6379/0"
DEFAULT_HEAVY_TASK_SECONDS = 5.0
DEFAULT_TASK_TIME_LIMIT = 1800
DEFAULT_VISIBILITY_TIMEOUT = 7200
DEFAULT_PREFETCH_MULTIPLIER = 1
RESULT_EXPIRES_SECONDS = 86400

_REDIS_SCHEMES = ("redis", "rediss", "sentinel")


def _get_number(
    environ: Mapping[str, str], name: str, default: float, minimum: float, kind: type
) -> float:
    """The variable `name` read as `kind` (int or float), `default` when unset or empty."""
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = kind(raw)
    except ValueError:
        what = "an integer" if kind is int else "a number"
        raise ValueError(f"{name} must be {what}, got {raw!r}") from None
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def _get_int(environ: Mapping[str, str], name: str, default: int, minimum: int) -> int:
    return int(_get_number(environ, name, default, minimum, int))


def _get_float(environ: Mapping[str, str], name: str, default: float) -> float:
    return _get_number(environ, name, default, 0, float)


def default_result_backend(broker_url: str) -> str:
    """Return the broker URL with Redis db 1 if it is a Redis URL (each part of a Sentinel URL,
    ``sentinel://...;sentinel://...``), else the broker URL."""
    chunks = broker_url.split(";")
    if any(urlsplit(chunk).scheme not in _REDIS_SCHEMES for chunk in chunks):
        return broker_url
    return ";".join(urlunsplit(urlsplit(chunk)._replace(path="/1")) for chunk in chunks)


def task_time_limit(environ: Mapping[str, str]) -> int:
    """Hard time limit (s) of the heavy tasks, from ``REFAPP_TASK_TIME_LIMIT``."""
    return _get_int(environ, "REFAPP_TASK_TIME_LIMIT", DEFAULT_TASK_TIME_LIMIT, minimum=1)


def longest_task_seconds(environ: Mapping[str, str]) -> int:
    """Longest run time (s) of any task of the app: the heavy tasks' hard time limit."""
    return task_time_limit(environ)


def build_queues() -> tuple[Queue, ...]:
    """Declare the queues explicitly, each with its own direct exchange and routing key."""
    return tuple(Queue(name, Exchange(name, type="direct"), routing_key=name) for name in QUEUES)


def build_beat_schedule() -> dict[str, dict[str, Any]]:
    """Periodic tasks run by ``celery beat``; only registered task names are referenced."""
    return {
        "cleanup-expired-sessions": {
            "task": "refapp.tasks.background.cleanup_expired_sessions",
            "schedule": 300.0,
        },
        "sync-catalog-hourly": {
            "task": "refapp.tasks.heavy.sync_catalog",
            "schedule": crontab(minute="7"),
        },
        "daily-ops-digest": {
            "task": "refapp.tasks.notifications.send_email",
            "schedule": crontab(hour="6", minute="0"),
            "args": ("ops@example.com", "Daily digest"),
        },
    }


def from_env(environ: Mapping[str, str]) -> dict[str, Any]:
    """Build the Celery settings from ``environ`` (see the module docstring for variables).

    Raises:
        ValueError: a variable is malformed, or ``REFAPP_VISIBILITY_TIMEOUT`` is not greater
            than ``REFAPP_TASK_TIME_LIMIT`` (plus the longest countdown).
    """
    broker_url = environ.get("CELERY_BROKER_URL", "").strip() or DEFAULT_BROKER_URL
    result_backend = environ.get("CELERY_RESULT_BACKEND", "").strip() or default_result_backend(
        broker_url
    )
    heavy_seconds = _get_float(environ, "REFAPP_HEAVY_TASK_SECONDS", DEFAULT_HEAVY_TASK_SECONDS)
    time_limit = task_time_limit(environ)
    visibility_timeout = _get_int(
        environ, "REFAPP_VISIBILITY_TIMEOUT", DEFAULT_VISIBILITY_TIMEOUT, minimum=1
    )
    prefetch = _get_int(
        environ, "REFAPP_PREFETCH_MULTIPLIER", DEFAULT_PREFETCH_MULTIPLIER, minimum=1
    )

    longest = time_limit + LONGEST_COUNTDOWN_SECONDS
    if visibility_timeout <= longest:
        raise ValueError(
            f"REFAPP_VISIBILITY_TIMEOUT ({visibility_timeout}) must be greater than "
            f"REFAPP_TASK_TIME_LIMIT ({time_limit}) plus the longest countdown "
            f"({LONGEST_COUNTDOWN_SECONDS}); otherwise Redis redelivers running tasks"
        )

    transport_options = {"visibility_timeout": visibility_timeout}
    return {
        "broker_url": broker_url,
        "result_backend": result_backend,
        "broker_transport_options": dict(transport_options),
        "result_backend_transport_options": dict(transport_options),
        "broker_connection_retry_on_startup": True,
        # Queues and routing.
        "task_queues": build_queues(),
        "task_default_queue": DEFAULT_QUEUE,
        "task_create_missing_queues": False,
        "task_routes": dict(ROUTES),
        # Reliability.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": prefetch,
        "task_track_started": True,
        "result_expires": RESULT_EXPIRES_SECONDS,
        # Events for Flower.
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        # Serialization and time.
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "timezone": "UTC",
        "enable_utc": True,
        # Beat.
        "beat_schedule": build_beat_schedule(),
        # App-specific settings (read by the tasks through ``app.conf``).
        "refapp_heavy_task_seconds": heavy_seconds,
        "refapp_task_time_limit": time_limit,
    }


#: Longest task run time (s) under the current environment (the heavy tasks' time limit).
LONGEST_TASK_SECONDS: int = longest_task_seconds(os.environ)
