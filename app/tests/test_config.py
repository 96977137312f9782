"""``config.from_env``: defaults, overrides, derivations and validation."""

from __future__ import annotations

import pytest

from refapp import app
from refapp.config import (
    LONGEST_COUNTDOWN_SECONDS,
    LONGEST_TASK_SECONDS,
    default_result_backend,
    from_env,
    longest_task_seconds,
)


def test_defaults() -> None:
    conf = from_env({})
    assert conf["broker_url"] == "redis://localhost:6379/0"
    assert conf["result_backend"] == "redis://localhost:6379/1"
    assert conf["refapp_heavy_task_seconds"] == 5
    assert conf["refapp_task_time_limit"] == 1800
    assert conf["broker_transport_options"] == {"visibility_timeout": 7200}
    assert conf["result_backend_transport_options"] == {"visibility_timeout": 7200}
    assert conf["worker_prefetch_multiplier"] == 1
    assert conf["timezone"] == "UTC"
    assert conf["task_serializer"] == conf["result_serializer"] == "json"
    assert conf["accept_content"] == ["json"]
    assert conf["result_expires"] == 86400


def test_all_keys_are_lowercase_settings() -> None:
    assert all(key == key.lower() for key in from_env({}))


def test_overrides() -> None:
    conf = from_env(
        {
            "CELERY_BROKER_URL": "redis://:secret@10.0.0.5:6380/3",
            "CELERY_RESULT_BACKEND": "redis://results:6379/9",
            "REFAPP_HEAVY_TASK_SECONDS": "0.5",
            "REFAPP_TASK_TIME_LIMIT": "1800",
            "REFAPP_VISIBILITY_TIMEOUT": "3600",
            "REFAPP_PREFETCH_MULTIPLIER": "4",
        }
    )
    assert conf["broker_url"] == "redis://:secret@10.0.0.5:6380/3"
    assert conf["result_backend"] == "redis://results:6379/9"
    assert conf["refapp_heavy_task_seconds"] == 0.5
    assert conf["refapp_task_time_limit"] == 1800
    assert conf["broker_transport_options"]["visibility_timeout"] == 3600
    assert conf["result_backend_transport_options"]["visibility_timeout"] == 3600
    assert conf["worker_prefetch_multiplier"] == 4


@pytest.mark.parametrize(
    ("broker", "backend"),
    [
        ("redis://localhost:6379/0", "redis://localhost:6379/1"),
        ("redis://:pw@redis.internal:6380/5", "redis://:pw@redis.internal:6380/1"),
        ("redis://localhost:6379", "redis://localhost:6379/1"),
        ("rediss://h:6379/0?ssl_cert_reqs=required", "rediss://h:6379/1?ssl_cert_reqs=required"),
        ("amqp://guest@rabbit//", "amqp://guest@rabbit//"),
        (
            "sentinel://app:pw@10.0.0.1:26379/0;sentinel://app:pw@10.0.0.2:26379/0",
            "sentinel://app:pw@10.0.0.1:26379/1;sentinel://app:pw@10.0.0.2:26379/1",
        ),
    ],
)
def test_result_backend_derivation(broker: str, backend: str) -> None:
    assert default_result_backend(broker) == backend
    assert from_env({"CELERY_BROKER_URL": broker})["result_backend"] == backend


@pytest.mark.parametrize(("limit", "visibility"), [("3600", "3600"), ("7200", "3600")])
def test_visibility_timeout_must_exceed_time_limit(limit: str, visibility: str) -> None:
    env = {"REFAPP_TASK_TIME_LIMIT": limit, "REFAPP_VISIBILITY_TIMEOUT": visibility}
    with pytest.raises(ValueError) as excinfo:
        from_env(env)
    message = str(excinfo.value)
    assert "REFAPP_VISIBILITY_TIMEOUT" in message
    assert "REFAPP_TASK_TIME_LIMIT" in message


@pytest.mark.parametrize(
    "name",
    [
        "REFAPP_TASK_TIME_LIMIT",
        "REFAPP_VISIBILITY_TIMEOUT",
        "REFAPP_PREFETCH_MULTIPLIER",
        "REFAPP_HEAVY_TASK_SECONDS",
    ],
)
def test_malformed_numbers_name_the_variable(name: str) -> None:
    with pytest.raises(ValueError, match=name):
        from_env({name: "lots"})


def test_longest_task_constants() -> None:
    assert longest_task_seconds({}) == 1800
    assert longest_task_seconds({"REFAPP_TASK_TIME_LIMIT": "60"}) == 60
    assert isinstance(LONGEST_TASK_SECONDS, int)
    assert LONGEST_COUNTDOWN_SECONDS == 0


def test_reliability_settings_are_on() -> None:
    conf = app.conf
    assert conf.task_acks_late is True
    assert conf.task_reject_on_worker_lost is True
    assert conf.broker_connection_retry_on_startup is True
    assert conf.task_track_started is True
    assert conf.worker_send_task_events is True
    assert conf.task_send_sent_event is True
    visibility = conf.broker_transport_options["visibility_timeout"]
    assert conf.result_backend_transport_options["visibility_timeout"] == visibility
    assert visibility > conf.refapp_task_time_limit + LONGEST_COUNTDOWN_SECONDS
    for name in ("refapp.tasks.heavy.scrape_site", "refapp.tasks.heavy.sync_catalog"):
        assert app.tasks[name].time_limit == conf.refapp_task_time_limit
        assert app.tasks[name].time_limit < visibility
