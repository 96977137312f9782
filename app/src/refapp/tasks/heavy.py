"""Long-running jobs (the "30-minute jobs"), routed to the ``low`` queue.

They sleep for ``seconds`` or ``REFAPP_HEAVY_TASK_SECONDS`` and carry the hard time limit
``REFAPP_TASK_TIME_LIMIT``.
"""

from __future__ import annotations

import time
from typing import Any

from refapp.celery import app

TIME_LIMIT: int = app.conf.refapp_task_time_limit


def _duration(seconds: float | None) -> float:
    return float(app.conf.refapp_heavy_task_seconds if seconds is None else seconds)


@app.task(time_limit=TIME_LIMIT)
def scrape_site(url: str, seconds: float | None = None) -> dict[str, Any]:
    """Simulate scraping a whole site."""
    duration = _duration(seconds)
    time.sleep(duration)
    return {"url": url, "pages": 42, "seconds": duration}


@app.task(time_limit=TIME_LIMIT)
def sync_catalog(seconds: float | None = None) -> dict[str, Any]:
    """Simulate synchronising the product catalogue (run hourly by beat)."""
    duration = _duration(seconds)
    time.sleep(duration)
    return {"synced": True, "seconds": duration}
