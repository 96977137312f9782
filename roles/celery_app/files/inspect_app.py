#!/usr/bin/env python3
"""Report what a Celery app really does with its tasks, for the toolkit's routing check.

    python inspect_app.py MODULE        (MODULE as given to `celery -A`)

Runs inside an environment where the app is installed. Imports the app, resolves every
registered task through the app's own router, loads the broker's transport (the client library a
worker needs to reach the broker, without connecting), and prints one JSON object: the queues
the app uses, declared queues, default queue, route patterns, each task's queue and time limit,
beat entries, visibility timeout, the acknowledgement settings and the transport's error, if any.
It never connects to the broker.
"""

from __future__ import annotations

import json
import sys
from typing import Any


def route_patterns(routes: Any) -> list[str]:
    """The task-name patterns of task_routes (a dict, or a list of dicts and routers)."""
    if isinstance(routes, dict):
        return [str(p) for p in routes]
    patterns: list[str] = []
    for item in routes or ():
        if isinstance(item, dict):
            patterns += [str(p) for p in item]
    return patterns


def report(app: Any) -> dict[str, Any]:
    app.loader.import_default_modules()
    conf = app.conf
    tasks: dict[str, dict[str, Any]] = {}
    for name, task in sorted(app.tasks.items()):
        if name.startswith("celery."):
            continue
        entry: dict[str, Any] = {
            "time_limit": task.time_limit or conf.task_time_limit,
            "soft_time_limit": task.soft_time_limit or conf.task_soft_time_limit,
        }
        try:
            entry["queue"] = app.amqp.router.route({}, name)["queue"].name
        except KeyError as exc:  # an undeclared queue with task_create_missing_queues off
            entry["queue"] = None
            entry["error"] = (
                f"{exc.args[0] if exc.args else exc} and task_create_missing_queues is off: "
                "declare the queue in the app's task_queues, or turn task_create_missing_queues on"
            )
        except Exception as exc:
            entry["queue"] = None
            entry["error"] = f"{type(exc).__name__}: {exc}"
        tasks[name] = entry
    transport = conf.broker_transport_options or {}
    declared = [q.name for q in conf.task_queues or ()]
    return {
        "main": app.main,
        "queues": used_queues(declared, conf.task_default_queue, tasks),
        "declared_queues": declared,
        "create_missing_queues": bool(conf.task_create_missing_queues),
        "default_queue": conf.task_default_queue,
        "route_patterns": route_patterns(conf.task_routes),
        "tasks": tasks,
        "beat": {key: entry["task"] for key, entry in (conf.beat_schedule or {}).items()},
        "visibility_timeout": transport.get("visibility_timeout", 3600),
        "acks_late": bool(conf.task_acks_late),
        "reject_on_worker_lost": bool(conf.task_reject_on_worker_lost),
        "transport_error": transport_error(app),
    }


def used_queues(declared: list[str], default: str, tasks: dict[str, dict[str, Any]]) -> list[str]:
    """The queues as Celery sees them: task_queues when declared, else the default queue
    (`celery` unless task_default_queue says otherwise), plus every queue a task is routed to
    (Celery creates those on demand while task_create_missing_queues is on)."""
    queues = list(declared or [default])
    for entry in tasks.values():
        if entry.get("queue") and entry["queue"] not in queues:
            queues.append(entry["queue"])
    return queues


def transport_error(app: Any) -> str | None:
    """Load the broker's transport as a worker does before it connects: importing the app
    proves nothing about it (kombu imports the Redis client only here)."""
    try:
        with app.connection_for_write() as conn:
            conn.transport  # noqa: B018  (creating the transport imports its client)
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
        if str(app.conf.broker_url or "").startswith(("redis", "rediss")):
            try:  # kombu hides a missing client behind an AttributeError: name it
                import redis  # noqa: F401
            except ImportError as missing:
                error = f"{type(missing).__name__}: {missing}"
        return error
    return None


def main(argv: list[str]) -> int:
    if len(argv) == 2:
        from celery.app.utils import find_app

        print(json.dumps(report(find_app(argv[1]))))
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
