"""The workers' pause around a planned switchover (roles/celery_workers/files/celery_pause.py,
playbooks/switchover.yml): every worker stops consuming and finishes what it holds before the
primary changes, and gets back exactly the queues it had; a worker still busy at the deadline
stops the switchover with its consumers given back, naming the worker."""

import importlib.util
import io
import json
from pathlib import Path

import pytest

FILE = Path(__file__).resolve().parent.parent / "roles/celery_workers/files/celery_pause.py"
spec = importlib.util.spec_from_file_location("celery_pause", FILE)
celery_pause = importlib.util.module_from_spec(spec)
spec.loader.exec_module(celery_pause)


class Fleet:
    """app.control's stand-in: workers, their queues and the tasks they hold. A worker in `deaf`
    misses that many broadcasts (a control connection moving to the new primary)."""

    def __init__(self, queues, busy=None, deaf=None):
        self.queues = {n: list(q) for n, q in queues.items()}
        self.busy = dict(busy or {})  # node -> rounds it still holds a task
        self.deaf = dict(deaf or {})
        self.control = self

    def _hears(self, node):
        if self.deaf.get(node):
            self.deaf[node] -= 1
            return False
        return True

    def cancel_consumer(self, queue, destination, **_):
        for node in destination:
            if self._hears(node) and queue in self.queues[node]:
                self.queues[node].remove(queue)

    def add_consumer(self, queue, destination, **_):
        for node in destination:
            if self._hears(node) and queue not in self.queues[node]:
                self.queues[node] = sorted([*self.queues[node], queue])

    def inspect(self, destination=None, timeout=None):
        nodes = destination or list(self.queues)
        fleet = self

        class Inspect:
            def active_queues(self):
                return {n: [{"name": q} for q in fleet.queues[n]] for n in nodes}

            def active(self):
                found = {}
                for n in nodes:
                    found[n] = [{"id": "t"}] if fleet.busy.get(n, 0) > 0 else []
                    fleet.busy[n] = max(0, fleet.busy.get(n, 0) - 1)
                return found

            def reserved(self):
                return {n: [] for n in nodes}

        return Inspect()


@pytest.fixture(autouse=True)
def no_wait(monkeypatch):
    monkeypatch.setattr(celery_pause.time, "sleep", lambda s: None)


QUEUES = {"fast@w1": ["default", "high"], "slow@w1": ["low"], "fast@w2": ["default", "high"]}


def test_a_pause_stops_every_consumer_waits_for_the_running_tasks_and_records_the_queues():
    fleet = Fleet(QUEUES, busy={"slow@w1": 3}, deaf={"fast@w2": 1})
    said = celery_pause.pause(fleet, 60)
    assert said.splitlines()[0] == "paused 3 workers (fast@w1, fast@w2, slow@w1): none holds a task"
    assert json.loads(said.splitlines()[1]) == QUEUES
    assert all(q == [] for q in fleet.queues.values())
    assert fleet.busy["slow@w1"] == 0


def test_a_resume_gives_each_worker_exactly_its_queues_even_after_a_missed_broadcast(monkeypatch):
    fleet = Fleet({n: [] for n in QUEUES}, deaf={"slow@w1": 1})
    monkeypatch.setattr(celery_pause.sys, "stdin", io.StringIO(json.dumps(QUEUES)))
    assert celery_pause.resume(fleet, 60) == "resumed 3 workers, each consuming its queues again"
    assert fleet.queues == QUEUES


def test_a_worker_still_busy_at_the_deadline_stops_the_switchover_with_consumers_back(monkeypatch):
    clock = iter(range(0, 10_000, 10))
    monkeypatch.setattr(celery_pause.time, "monotonic", lambda: next(clock))
    fleet = Fleet(QUEUES, busy={"slow@w1": 10_000})
    with pytest.raises(SystemExit) as stop:
        celery_pause.pause(fleet, 30)
    assert "slow@w1 (1 tasks)" in str(stop.value)
    assert "nothing was switched" in str(stop.value)
    assert fleet.queues == QUEUES


def test_no_worker_answering_is_said_not_paused():
    with pytest.raises(SystemExit, match="no worker answers"):
        celery_pause.pause(Fleet({}), 5)


def test_a_worker_that_does_not_take_its_queues_back_is_named(monkeypatch):
    clock = iter(range(0, 10_000, 10))
    monkeypatch.setattr(celery_pause.time, "monotonic", lambda: next(clock))
    fleet = Fleet({n: [] for n in QUEUES}, deaf={"fast@w2": 10_000})
    monkeypatch.setattr(celery_pause.sys, "stdin", io.StringIO(json.dumps(QUEUES)))
    with pytest.raises(SystemExit) as stop:
        celery_pause.resume(fleet, 30)
    assert "fast@w2 consumes nothing, had ['default', 'high']" in str(stop.value)
