"""Issue 21: the helpers of roles/celery_deploy/files/celery_queued.py against a small fake of
the Redis commands they send (no fake Redis package is in requirements/dev.txt). The count and the
move against a real broker and Celery are tested by the app-default-queue scenario
(molecule/app-default-queue/tests/test_stranded.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "roles/celery_deploy/files"))

import celery_queued  # noqa: E402


class FakeRedis:
    """GET, SET, DEL, EXISTS, LPUSH, RPOP, LINDEX, LPOS and a WATCH/MULTI/EXEC pipeline."""

    def __init__(self, fail_lpush: int = 0) -> None:
        self.data: dict[str, object] = {}
        self.fail_lpush = fail_lpush  # the next n LPUSHes raise: a crash between two brokers

    def get(self, key):
        value = self.data.get(key)
        return value.encode() if isinstance(value, str) else value

    def set(self, key, value, ex=None):
        self.data[key] = value if isinstance(value, bytes) else str(value).encode()

    def delete(self, key):
        self.data.pop(key, None)

    def exists(self, key):
        return int(key in self.data)

    def lpush(self, key, value):
        if self.fail_lpush:
            self.fail_lpush -= 1
            raise redis.ConnectionError("the new broker went away")
        value = value if isinstance(value, bytes) else str(value).encode()
        self.data.setdefault(key, []).insert(0, value)

    def rpop(self, key):
        items = self.data.get(key) or []
        return items.pop() if items else None

    def lindex(self, key, index):
        items = self.data.get(key) or []
        return items[index] if items else None

    def execute_command(self, name, key, value):
        assert name == "LPOS"
        value = value if isinstance(value, bytes) else value.encode()
        items = self.data.get(key) or []
        return items.index(value) if value in items else None

    def pipeline(self):
        return FakePipeline(self)


class FakePipeline:
    def __init__(self, client: FakeRedis) -> None:
        self.client, self.queued = client, None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def watch(self, key):
        pass

    def lindex(self, key, index):
        return self.client.lindex(key, index)

    def multi(self):
        self.queued = []

    def __getattr__(self, name):  # rpop, lpush, set inside MULTI
        return lambda *args: self.queued.append((name, args))

    def execute(self):
        for name, args in self.queued:
            getattr(self.client, name)(*args)


JOURNAL = celery_queued.JOURNAL


def test_a_crash_between_two_brokers_leaves_the_message_in_the_journal_and_the_count_says_so():
    old, new = FakeRedis(), FakeRedis(fail_lpush=1)
    old.data["default"] = [b"m1"]
    with pytest.raises(redis.ConnectionError):
        celery_queued._move_one(old, new, "default", "default", False, JOURNAL)
    assert old.data["default"] == [] and "default" not in new.data
    # the old list is empty: only the journal holds the message, and the count reports it
    assert celery_queued.in_journal(old, JOURNAL) == 1
    assert celery_queued._finish_journal(old, new, JOURNAL) == 1
    assert new.data["default"] == [b"m1"]
    assert celery_queued.in_journal(old, JOURNAL) == 0


def test_the_journal_is_pushed_once_when_the_message_arrived_before_the_crash():
    old, new = FakeRedis(), FakeRedis()
    old.set(JOURNAL, json.dumps({"key": "default", "message": "m1"}))
    new.lpush("default", "m1")
    assert celery_queued._finish_journal(old, new, JOURNAL) == 1
    assert new.data["default"] == [b"m1"]
    assert celery_queued._finish_journal(old, new, JOURNAL) == 0


def test_a_move_between_two_brokers_keeps_the_order_and_empties_the_journal():
    old, new = FakeRedis(), FakeRedis()
    for message in ("m1", "m2", "m3"):  # kombu LPUSHes, consumers pop from the right
        old.lpush("default", message)
    while celery_queued._move_one(old, new, "default", "low", False, JOURNAL):
        pass
    assert new.data["low"] == [b"m3", b"m2", b"m1"]
    assert celery_queued.in_journal(old, JOURNAL) == 0


def test_nothing_is_given_back_or_moved_while_a_worker_answers_on_the_old_broker():
    assert celery_queued.live_refusal(None) == ""
    assert celery_queued.live_refusal({}) == ""
    refusal = celery_queued.live_refusal({"fast@vm3": {"ok": "pong"}})
    assert refusal.startswith("1 worker(s) still answer on the old broker (fast@vm3)")
    assert "--limit" in refusal and "nothing was given back or moved" in refusal


def entry(exchange, routing_key):
    return json.dumps([{"headers": {"id": "t1"}}, exchange, routing_key]).encode()


def topic(exchange, routing_key):
    """A topic exchange `tasks` binding `reports.#` to the queue low (what channel._lookup says
    once the app's exchanges are declared); the anonymous exchange routes to the key."""
    if not exchange:
        return [routing_key]
    return ["low"] if exchange == "tasks" and routing_key.startswith("reports.") else []


def test_unacked_entries_are_counted_for_the_queue_their_exchange_routes_them_to():
    raws = [entry("tasks", "reports.daily"), entry("", "high"), entry("gone", "x"), b"junk"]
    assert celery_queued.unacked_by_queue(raws, topic) == {"low": 1, "high": 1, "x": 1, "": 1}


def test_an_unacked_entry_routed_nowhere_is_left_in_place_not_given_back_and_dropped():
    restored = []
    entries = {b"t1": entry("tasks", "reports.daily"), b"t2": entry("gone", "x"), b"t3": b"junk"}
    assert celery_queued.give_back(entries, topic, restored.append) == (1, 2)
    assert restored == ["t1"]


def test_the_apps_exchanges_are_declared_so_a_topic_key_finds_its_queue():
    """kombu's in-memory transport shares the virtual channel's routing with Redis's; the binding
    table is read as Redis's transport reads it, from the broker (there: the _kombu.binding.*
    sets the workers wrote), not from the channel's declarations."""
    from celery import Celery
    from kombu import Exchange, Queue

    app = Celery("t", broker="memory://")
    tasks = Exchange("tasks", type="topic")
    app.conf.task_queues = [Queue("low", tasks, routing_key="reports.#")]
    with app.connection_for_write() as conn:
        channel = conn.default_channel
        bindings = {"tasks": [("reports.#", "", "low")]}
        channel.get_table = lambda exchange: bindings.get(exchange, [])
        assert not channel._lookup("tasks", "reports.daily")  # direct, as a fresh channel says
        celery_queued.declare_exchanges(app, channel)
        assert list(channel._lookup("tasks", "reports.daily")) == ["low"]


@pytest.mark.parametrize(
    "url,broker",
    [
        ("redis://app:s3cret@10.0.0.5:6380/2", {"host": "10.0.0.5", "port": 6380, "db": 2}),
        ("redis://:s3cret@broker", {"host": "broker", "port": 6379, "db": 0}),
    ],
)
def test_the_broker_the_environment_names_is_said_without_its_secret(url, broker):
    from celery import Celery

    answer = celery_queued.where(Celery("t", broker=url))
    assert answer == {"broker": broker}
    assert "s3cret" not in json.dumps(answer)
