"""The Celery exporter (roles/celery_exporter/files/celery_exporter.py): the oldest waiting
message's age from the notes of each list's newest message, the /metrics text, and the rules
validate.yml applies to its variables (plugins/filter/celery_inventory.py). The collection
against a real broker and Celery is tested by the app-default-queue scenario."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "roles/celery_exporter/files"))
sys.path.insert(0, str(ROOT / "roles/celery_workers/files"))

import celery_exporter  # noqa: E402
from ansible_collections.celery_toolkit.stack.plugins.filter.celery_inventory import (  # noqa: E402
    celery_exporter_errors,
    exporter_errors,
)
from celery_status import judge_group  # noqa: E402


class FakeList:
    """A kombu queue list: LPUSH on the left, BRPOP from the right."""

    def __init__(self) -> None:
        self.items: list[bytes] = []
        self.lpos_calls = 0

    def push(self, *messages: str) -> None:
        for message in messages:
            self.items.insert(0, message.encode())

    def pop(self, n: int = 1) -> None:
        for _ in range(n):
            self.items.pop()

    def observe(self, ages: celery_exporter.QueueAges, now: float) -> float | None:
        def present(element: bytes) -> bool:
            self.lpos_calls += 1
            return element in self.items

        head = self.items[-1] if self.items else None
        newest = self.items[0] if self.items else None
        return ages.observe("q", len(self.items), head, newest, now, present)


def test_an_unconsumed_queue_ages_from_its_first_message():
    ages, queue = celery_exporter.QueueAges(), FakeList()
    assert queue.observe(ages, 0.0) is None
    queue.push("m1")
    assert queue.observe(ages, 15.0) == 15.0
    queue.push("m2", "m3")
    # the head is still m1: its age keeps growing
    assert queue.observe(ages, 30.0) == 15.0
    assert queue.observe(ages, 600.0) == 15.0


def test_a_slowly_consumed_backlog_reports_the_head_not_the_time_it_reached_the_head():
    """The head was pushed in the interval before the note of the oldest message still queued."""
    ages, queue = celery_exporter.QueueAges(), FakeList()
    queue.push("a1", "a2")
    queue.observe(ages, 10.0)  # newest a2 noted at 10
    queue.push("b1", "b2")
    queue.observe(ages, 20.0)  # newest b2 noted at 20
    queue.push("c1")
    queue.observe(ages, 30.0)  # newest c1 noted at 30
    queue.pop(3)  # a1, a2 and b1 consumed: b2 is the head, pushed in (10, 20]
    assert queue.observe(ages, 40.0) == 20.0
    queue.pop(1)  # c1 is the head, pushed in (20, 30]
    assert queue.observe(ages, 50.0) == 30.0
    queue.pop(1)
    assert queue.observe(ages, 60.0) is None
    assert ages.notes["q"] == []


def test_the_search_for_the_oldest_queued_note_is_logarithmic():
    ages, queue = celery_exporter.QueueAges(), FakeList()
    for second in range(1000):
        queue.push(f"m{second}")
        queue.observe(ages, float(second))
    queue.pop(500)
    calls = queue.lpos_calls
    assert queue.observe(ages, 1000.0) == 500.0
    assert queue.lpos_calls - calls <= 11


def test_the_notes_are_bounded():
    ages, queue = celery_exporter.QueueAges(), FakeList()
    for second in range(celery_exporter.HISTORY_LIMIT + 10):
        queue.push(f"m{second}")
        queue.observe(ages, float(second))
    assert len(ages.notes["q"]) == celery_exporter.HISTORY_LIMIT


class FakeKeysChannel:
    sep = "\x06\x16"
    priority_steps = [0, 3, 6, 9]
    global_keyprefix = "pfx:"

    def _q_for_pri(self, queue, pri):
        return f"{queue}{self.sep}{pri}" if pri else queue


def test_a_queue_is_one_key_per_priority_step_with_the_global_prefix():
    assert celery_exporter._keys(FakeKeysChannel(), "high") == [
        "pfx:high",
        "pfx:high\x06\x163",
        "pfx:high\x06\x166",
        "pfx:high\x06\x169",
    ]


def exporter_with(broker, nodes, last_success):
    config = {
        "interval": 15,
        "groups": {"fast": ["high"], "slow": ["low"]},
        "queues": ["high", "low"],
    }
    exporter = celery_exporter.Exporter(app=None, config=config)
    exporter.broker, exporter.nodes, exporter.last_success = broker, nodes, last_success
    return exporter


def test_metrics_carry_the_contract_names_and_ages_grow_between_collections(monkeypatch):
    monkeypatch.setattr(celery_exporter.time, "time", lambda: 1000.0)
    broker = {
        "queues": {
            "high": {"messages": 3, "oldest": 940.0},
            "low": {"messages": 0, "oldest": None},
        },
        "unacked": 2,
        "unacked_oldest": 700.0,
    }
    nodes = {"consumers": {"high": 2}, "groups": {"fast": True, "slow": False}}
    text = exporter_with(broker, nodes, 995.0).render()
    for line in [
        "celery_exporter_broker_up 1",
        'celery_queue_messages{queue="high"} 3',
        'celery_queue_messages{queue="low"} 0',
        'celery_queue_oldest_message_age_seconds{queue="high"} 60',
        'celery_queue_oldest_message_age_seconds{queue="low"} 0',
        'celery_queue_consumers{queue="high"} 2',
        'celery_queue_consumers{queue="low"} 0',
        'celery_group_up{group="fast"} 1',
        'celery_group_up{group="slow"} 0',
        "celery_unacked_messages 2",
        "celery_unacked_oldest_age_seconds 300",
    ]:
        assert line in text.splitlines(), line


def test_a_broker_that_does_not_answer_is_broker_up_0_and_no_stale_figure(monkeypatch):
    monkeypatch.setattr(celery_exporter.time, "time", lambda: 1000.0)
    down = exporter_with(None, None, 0.0).render()
    assert "celery_exporter_broker_up 0" in down.splitlines()
    assert 'celery_group_up{group="fast"} 0' in down.splitlines()
    assert "celery_queue_messages{" not in down
    # a collection stuck for more than three intervals is no longer current either
    broker = {
        "queues": {"high": {"messages": 1, "oldest": 990.0}},
        "unacked": 0,
        "unacked_oldest": None,
    }
    stale = exporter_with(broker, {"consumers": {}, "groups": {"fast": True}}, 900.0).render()
    assert "celery_exporter_broker_up 0" in stale.splitlines()
    assert "celery_queue_messages{" not in stale


def test_a_failed_collection_is_one_line_and_no_traceback(capsys):
    exporter = celery_exporter.Exporter(
        app=None, config={"queues": ["q"], "groups": {}, "node": "{group}@{host}"}
    )
    exporter.collect_once()
    exporter.collect_once()
    err = capsys.readouterr().err
    assert err.count("celery_exporter: collection failed: AttributeError") == 1
    assert "Traceback" not in err
    assert exporter.broker is None


def test_a_group_is_up_with_a_ping_and_exactly_its_queues():
    assert judge_group(
        "fast@h", ["high", "default"], {"ok": "pong"}, [{"name": "default"}, {"name": "high"}]
    )["ok"]
    assert not judge_group("fast@h", ["high", "default"], {"ok": "pong"}, [{"name": "high"}])["ok"]
    assert not judge_group("fast@h", ["high"], None, None)["ok"]


SOUND = {
    "celery_exporter_enabled": True,
    "celery_exporter_address": "127.0.0.1",
    "celery_exporter_port": 9808,
    "celery_exporter_interval": 15,
    "flower_port": 5555,
    "redis_port": 6379,
}


def test_sound_exporter_settings_pass():
    assert exporter_errors("vm1", SOUND, flower=True, broker=True) == []
    assert exporter_errors("vm1", {**SOUND, "celery_exporter_address": "fd00::2"}) == []


def test_exporter_rules_name_the_variable_and_the_fix():
    assert (
        "not an IP address"
        in celery_exporter_errors({**SOUND, "celery_exporter_address": "vm one"}, "vm1")[0]
    )
    assert (
        exporter_errors("vm1", {**SOUND, "celery_exporter_port": 6379}, broker=True)[0][0]
        == "celery_exporter_port"
    )
    assert exporter_errors("vm1", {**SOUND, "celery_exporter_port": 6379}, broker=False) == []
    assert "1 to 65535" in exporter_errors("vm1", {**SOUND, "celery_exporter_port": 0})[0][2]
    assert (
        "at least 1 second"
        in exporter_errors("vm1", {**SOUND, "celery_exporter_interval": 0})[0][2]
    )
    # a disabled exporter binds nothing
    assert (
        exporter_errors(
            "vm1", {**SOUND, "celery_exporter_enabled": False, "celery_exporter_port": 0}
        )
        == []
    )
