"""The Celery application instance (``celery -A refapp worker``)."""

from __future__ import annotations

import os

from celery import Celery

from refapp.config import from_env

TASK_MODULES: tuple[str, ...] = (
    "refapp.tasks.notifications",
    "refapp.tasks.background",
    "refapp.tasks.heavy",
    "refapp.tasks.probe",
    "refapp.tasks.ledger",
)


def create_app() -> Celery:
    """Create the ``refapp`` Celery app configured from the process environment.

    Nothing here connects to the broker: connections are opened lazily by Celery.
    """
    celery_app = Celery("refapp", include=list(TASK_MODULES))
    celery_app.conf.update(from_env(os.environ))
    return celery_app


app = create_app()
