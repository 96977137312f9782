"""Ordinary background tasks (50-200 ms), routed to the ``default`` queue."""

from __future__ import annotations

from typing import Any

from refapp.celery import app
from refapp.tasks._simulate import work

MIN_SECONDS = 0.05
MAX_SECONDS = 0.2


@app.task
def resize_image(image_id: int | str) -> dict[str, Any]:
    """Simulate resizing an image into thumbnails."""
    took = work(MIN_SECONDS, MAX_SECONDS)
    return {"image_id": image_id, "sizes": [64, 256, 1024], "seconds": took}


@app.task
def generate_report(report_id: int | str) -> dict[str, Any]:
    """Simulate rendering a report."""
    took = work(MIN_SECONDS, MAX_SECONDS)
    return {"report_id": report_id, "status": "ready", "seconds": took}


@app.task
def cleanup_expired_sessions() -> dict[str, Any]:
    """Simulate purging expired sessions (run periodically by beat)."""
    took = work(MIN_SECONDS, MAX_SECONDS)
    return {"removed": 0, "seconds": took}
