"""Reference Celery application of the Celery Ansible toolkit."""

from __future__ import annotations

# Importing the tasks package registers every task on ``app``.
from refapp import tasks
from refapp.celery import app

__all__ = ["app", "tasks"]
__version__ = "1.0.0"
