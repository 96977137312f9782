"""What the app's processes are given with a replicated broker (issue 22,
plugins/filter/celery_sentinel_client.py): URLs naming every sentinel and no node, the options
Celery has no URL for; a single broker's URLs as written."""

import json

import pytest

from celery_sentinel_client import (
    celery_announce_default,
    celery_sentinel_client,
    celery_sentinel_options,
    celery_sentinel_settings,
    celery_sentinel_url,
)

NODES = [
    {"redis_bind_addresses": ["127.0.0.1", "-::1", "10.0.0.1"], "redis_sentinel_password": "s$(x)"},
    {"redis_announce_address": "10.0.0.2", "redis_bind_addresses": ["0.0.0.0"]},
    {"redis_bind_addresses": ["-::1", "fd00::3"], "redis_sentinel_port": 26380},
]


def test_every_node_is_named_at_its_announced_address_and_sentinel_port():
    client = celery_sentinel_client(NODES)
    assert client["sentinels"] == ["10.0.0.1:26379", "10.0.0.2:26379", "[fd00::3]:26380"]
    assert (client["master_name"], client["password"]) == ("celery", "s$(x)")


def test_a_single_broker_gives_its_urls_as_written_and_no_options():
    client = celery_sentinel_client(NODES[:1])
    assert client == {}
    for url in ("redis://app:pw@10.0.0.1:6379/0", "sentinel://app:pw@/0"):
        assert celery_sentinel_url(url, client) == url
    assert celery_sentinel_options(client) == {}
    assert celery_sentinel_settings(client) == {}


@pytest.mark.parametrize(
    ("written", "login", "db"),
    [("sentinel://app:p%40w%3B@/0", "app:p%40w%3B@", "/0"), ("sentinel://:pw@/1", ":pw@", "/1")],
)
def test_a_host_less_url_becomes_one_part_per_sentinel(written, login, db):
    client = celery_sentinel_client(NODES)
    parts = celery_sentinel_url(written, client).split(";")
    assert parts == [f"sentinel://{login}{s}{db}" for s in client["sentinels"]]


@pytest.mark.parametrize(
    "url", ["redis://app:pw@10.0.0.1:6379/0", "sentinel://app:pw@10.0.0.9:26379/0", "", "django-db"]
)
def test_any_other_url_is_left_as_written(url):
    """validate.yml refuses those a replicated broker cannot take, before any host."""
    assert celery_sentinel_url(url, celery_sentinel_client(NODES)) == url


def test_the_options_name_the_primary_and_bound_every_wait():
    options = celery_sentinel_options(celery_sentinel_client(NODES))
    assert options["master_name"] == "celery"
    assert options["sentinel_kwargs"] == {
        "password": "s$(x)",
        "socket_timeout": 2,
        "socket_connect_timeout": 2,
    }
    # a half-open connection to a lost primary is given up within seconds, not minutes
    assert 0 < options["socket_timeout"] <= 10
    assert 0 < options["health_check_interval"] <= 3
    json.dumps(options)  # written to the environment file as JSON
    settings = celery_sentinel_settings(celery_sentinel_client(NODES))
    assert settings["redis_socket_timeout"] == options["socket_timeout"]
    # a publish retries longer than a failover takes (about 7 s), not Celery's 0.6 s
    policy = settings["task_publish_retry_policy"]
    waits = [
        min(policy["interval_start"] + n * policy["interval_step"], policy["interval_max"])
        for n in range(policy["max_retries"])
    ]
    assert sum(waits) >= 8
    # a task's state writes retry too (a STARTED write refused once had left a task unrun in
    # unacked), with exponential pauses: Celery's full jitter draws each within [0, the cap]
    assert settings["result_backend_always_retry"] is True
    caps = [
        min(
            settings["result_backend_base_sleep_between_retries_ms"] * 2**n,
            settings["result_backend_max_sleep_between_retries_ms"],
        )
        for n in range(1, settings["result_backend_max_retries"] + 1)
    ]
    assert sum(caps) / 2 / 1000 >= 8  # on average longer than a failover


@pytest.mark.parametrize(
    ("bind", "announced"),
    [
        (["127.0.0.1", "-::1"], ""),
        (["127.0.0.1", "10.1.2.3", "10.1.2.4"], "10.1.2.3"),
        (["-fd00::1"], "fd00::1"),
        (["*", "::", "0.0.0.0", "localhost"], ""),
        (None, ""),
    ],
)
def test_the_announced_address_defaults_to_the_first_private_bind_address(bind, announced):
    assert celery_announce_default(bind) == announced
