"""Tasks of the `orders` Django app, found by app.autodiscover_tasks()."""

from celery import shared_task


@shared_task
def send_receipt(order_id: int) -> str:
    return f"receipt for order {order_id} sent"


@shared_task
def tally(*amounts: int) -> int:
    return sum(amounts)
