"""Minimal settings of the `shop` project."""

import os

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "only-for-tests")
DEBUG = False
ALLOWED_HOSTS: list[str] = []
INSTALLED_APPS = ["django.contrib.contenttypes", "orders"]
DATABASES: dict = {}
USE_TZ = True

# The environment's CELERY_BROKER_URL wins over this (Celery reads it first).
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", "redis://localhost:6379/0")
CELERY_TASK_ACKS_LATE = True
# No task_queues: `celery` is the default queue and `mail` is created on demand.
CELERY_TASK_ROUTES = {"orders.tasks.send_receipt": {"queue": "mail"}}
CELERY_TASK_TIME_LIMIT = 300
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 3600}
