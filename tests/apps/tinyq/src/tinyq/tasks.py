"""Tasks declared with shared_task, bound to whichever app is current."""

from celery import shared_task


@shared_task
def add(x: int, y: int) -> int:
    return x + y
