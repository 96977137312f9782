"""tinyq: `celery -A tinyq worker` finds the app below."""

from tinyq.celery import app

__all__ = ["app"]
