"""Deployment probe used by the toolkit's verification.

``refapp.tasks.probe.probe`` is not in the routing table: it goes to ``task_default_queue``
unless sent with an explicit ``queue=``, which lets the toolkit check every queue/worker group.
"""

from __future__ import annotations

import os
import socket
from typing import Any

from celery import Task

from refapp.celery import app


@app.task(bind=True)
def probe(self: Task, token: str) -> dict[str, Any]:
    """Report which worker, queue, group, host, process and release ran this task."""
    return {
        "token": token,
        "worker": self.request.hostname,
        "queue": (self.request.delivery_info or {}).get("routing_key"),
        "group": os.environ.get("CELERY_WORKER_GROUP", ""),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "release": os.environ.get("CELERY_APP_RELEASE", ""),
    }
