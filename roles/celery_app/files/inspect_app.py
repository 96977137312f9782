#!/usr/bin/env python3
"""Report what a Celery app really does with its tasks, for the toolkit's routing check.

    python inspect_app.py MODULE        (MODULE as given to `celery -A`)

Runs inside an environment where the app is installed. Imports the app, resolves every
registered task through the app's own router, and prints one JSON object: declared queues,
default queue, route patterns, each task's queue and time limit, beat entries, visibility
timeout and the acknowledgement settings. It never connects to the broker.
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
        except Exception as exc:  # an undeclared queue with task_create_missing_queues off
            entry["queue"] = None
            entry["error"] = f"{type(exc).__name__}: {exc}"
        tasks[name] = entry
    transport = conf.broker_transport_options or {}
    return {
        "main": app.main,
        "declared_queues": [q.name for q in conf.task_queues or ()],
        "default_queue": conf.task_default_queue,
        "route_patterns": route_patterns(conf.task_routes),
        "tasks": tasks,
        "beat": {key: entry["task"] for key, entry in (conf.beat_schedule or {}).items()},
        "visibility_timeout": transport.get("visibility_timeout", 3600),
        "acks_late": bool(conf.task_acks_late),
        "reject_on_worker_lost": bool(conf.task_reject_on_worker_lost),
    }


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    from celery.app.utils import find_app

    print(json.dumps(report(find_app(argv[1]))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
