"""Notification tasks: short and latency-sensitive, routed to the ``high`` queue."""

from __future__ import annotations

from typing import Any

from refapp.celery import app
from refapp.tasks._simulate import work

WORK_SECONDS = 0.01


@app.task
def send_sms(phone: str, text: str) -> dict[str, Any]:
    """Simulate sending an SMS."""
    took = work(WORK_SECONDS)
    return {"channel": "sms", "to": phone, "length": len(text), "seconds": took}


@app.task
def send_push(user_id: int | str, title: str) -> dict[str, Any]:
    """Simulate sending a push notification."""
    took = work(WORK_SECONDS)
    return {"channel": "push", "to": user_id, "title": title, "seconds": took}


@app.task
def send_email(to: str, subject: str) -> dict[str, Any]:
    """Simulate sending an e-mail."""
    took = work(WORK_SECONDS)
    return {"channel": "email", "to": to, "subject": subject, "seconds": took}
