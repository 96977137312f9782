"""Routing: every task lands, through Celery's own router, on a declared queue."""

from __future__ import annotations

from fnmatch import fnmatchcase

import pytest
from celery.exceptions import QueueNotFound

from refapp import app
from refapp.config import DEFAULT_QUEUE, QUEUES, ROUTES

APP_TASKS = sorted(name for name in app.tasks if not name.startswith("celery."))


def routed_queue(name: str, options: dict | None = None) -> str:
    route = app.amqp.router.route(dict(options or {}), name, (), {})
    return route["queue"].name


def test_app_tasks_are_registered() -> None:
    assert set(APP_TASKS) == {
        "refapp.tasks.notifications.send_sms",
        "refapp.tasks.notifications.send_push",
        "refapp.tasks.notifications.send_email",
        "refapp.tasks.background.resize_image",
        "refapp.tasks.background.generate_report",
        "refapp.tasks.background.cleanup_expired_sessions",
        "refapp.tasks.heavy.scrape_site",
        "refapp.tasks.heavy.sync_catalog",
        "refapp.tasks.probe.probe",
        "refapp.tasks.ledger.record_fast",
        "refapp.tasks.ledger.record_slow",
    }


def test_queues_declared_explicitly() -> None:
    assert tuple(q.name for q in app.conf.task_queues) == QUEUES
    assert app.conf.task_default_queue == DEFAULT_QUEUE == "default"
    assert app.conf.task_create_missing_queues is False
    for queue in app.conf.task_queues:
        assert queue.routing_key == queue.name
        assert queue.exchange.name == queue.name


@pytest.mark.parametrize("name", APP_TASKS)
def test_every_task_routes_to_a_declared_queue(name: str) -> None:
    assert routed_queue(name) in QUEUES


# each queue and the tasks of the families routed to it
FAMILIES = {
    "high": ["notifications.send_sms", "notifications.send_push", "notifications.send_email"],
    "default": [
        "background.resize_image",
        "background.generate_report",
        "background.cleanup_expired_sessions",
    ],
    "low": ["heavy.scrape_site", "heavy.sync_catalog"],
}


@pytest.mark.parametrize(
    ("name", "queue"),
    [(f"refapp.tasks.{task}", queue) for queue, tasks in FAMILIES.items() for task in tasks],
)
def test_task_families_route_to_their_queue(name: str, queue: str) -> None:
    assert routed_queue(name) == queue


def test_ledger_variants() -> None:
    assert routed_queue("refapp.tasks.ledger.record_fast") == "high"
    assert routed_queue("refapp.tasks.ledger.record_slow") == "low"


def test_probe_is_not_in_the_routing_table() -> None:
    name = "refapp.tasks.probe.probe"
    assert not any(fnmatchcase(name, pattern) for pattern in ROUTES)
    assert routed_queue(name) == "default"
    for queue in QUEUES:
        assert routed_queue(name, {"queue": queue}) == queue


def test_unknown_queue_fails() -> None:
    with pytest.raises(QueueNotFound):
        app.amqp.router.route({"queue": "hihg"}, "refapp.tasks.probe.probe", (), {})


def test_routes_is_what_celery_uses() -> None:
    assert app.conf.task_routes == ROUTES
    assert list(ROUTES) == list(app.conf.task_routes)


@pytest.mark.parametrize("pattern", list(ROUTES))
def test_every_route_pattern_matches_a_task(pattern: str) -> None:
    assert any(fnmatchcase(name, pattern) for name in APP_TASKS), pattern


@pytest.mark.parametrize(("pattern", "queue"), list(ROUTES.items()))
def test_every_route_target_is_a_declared_queue(pattern: str, queue: str) -> None:
    assert queue in QUEUES, pattern


def test_beat_only_references_registered_tasks() -> None:
    schedule = app.conf.beat_schedule
    assert schedule
    for entry_name, entry in schedule.items():
        assert entry["task"] in app.tasks, entry_name
        assert routed_queue(entry["task"]) in QUEUES
