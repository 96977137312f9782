"""The Django project `shop`; its Celery app loads with Django (the documented layout)."""

from shop.celery import app as celery_app

__all__ = ["celery_app"]
