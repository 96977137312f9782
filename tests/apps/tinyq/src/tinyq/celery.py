"""No task_queues, no task_routes: Celery sends everything to its default queue, `celery`.

The broker comes from CELERY_BROKER_URL (Celery reads it from the environment)."""

from celery import Celery

app = Celery("tinyq", include=["tinyq.tasks"])
app.conf.task_acks_late = True
