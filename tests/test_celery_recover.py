"""The recovery helper (roles/celery_workers/files/celery_recover.py) never gives back what a live
worker may hold: a worker alive on its host or by heartbeat but silent is waited for, then the
run refuses; a rate-limited task waiting for its token (listed nowhere) is held back; what no
live worker holds is given back once."""

import json
import sys
from pathlib import Path

import pytest
from kombu.utils.json import dumps

FILES = Path(__file__).resolve().parent.parent / "roles/celery_workers/files"
sys.path.insert(0, str(FILES))

import celery_recover  # noqa: E402

HOST = "vm1"
FAST, SLOW = f"fast@{HOST}", f"slow@{HOST}"


def message(tid, name="refapp.tasks.ledger.record_fast"):
    return {"headers": {"id": tid, "task": name}, "properties": {"correlation_id": tid}}


class Inspect:
    """app.control.inspect's stand-in: each worker's answers; a worker in `mute` answers ping
    only (a worker stuck between two replies); one absent from `answers` answers nothing."""

    def __init__(self, answers, destination=None, mute=()):
        self.answers, self.mute = answers, set(mute)
        self.nodes = [n for n in answers if destination is None or n in destination]

    def _ask(self, key, nodes=None):
        return {
            n: self.answers[n].get(key, [])
            for n in nodes or self.nodes
            if key == "ping" or n not in self.mute
        } or None

    def ping(self):
        return {n: {"ok": "pong"} for n in self.nodes} or None

    def active(self):
        return self._ask("active")

    def reserved(self):
        return self._ask("reserved")

    def scheduled(self):
        return self._ask("scheduled")

    def registered(self, *items):
        assert items == ("rate_limit",)
        return self._ask("registered")

    def active_queues(self):
        return self._ask("active_queues")


def queues(*names):
    return [{"name": n, "routing_key": n} for n in names]


def factory(answers, mute=()):
    return lambda destination, limit: Inspect(answers, destination, mute)


FAST_IDLE = {"active": [], "reserved": [], "scheduled": [], "active_queues": queues("high")}


# -- who holds what -------------------------------------------------------------------------


def test_a_worker_that_answers_nothing_and_is_not_known_alive_is_dead():
    seen = celery_recover.look(factory({}), alive=set())
    assert seen.silent == set() and seen.held == set()


def test_a_worker_alive_on_its_host_that_does_not_answer_is_silent_not_dead():
    """A solo pool busy with a task, a group in its warm shutdown: no ping answer, but its
    process runs (or it sends heartbeats)."""
    seen = celery_recover.look(factory({FAST: FAST_IDLE}), alive={SLOW})
    assert seen.silent == {SLOW}


def test_a_worker_that_answers_ping_but_not_its_lists_is_silent():
    seen = celery_recover.look(factory({FAST: FAST_IDLE}, mute={FAST}), alive=set())
    assert seen.silent == {FAST}


def test_held_ids_come_from_active_reserved_and_scheduled():
    answers = {
        FAST: {
            **FAST_IDLE,
            "active": [{"id": "a"}],
            "reserved": [{"id": "r"}],
            "scheduled": [{"eta": "2026-12-01T00:00:00", "request": {"id": "s"}}],
        }
    }
    seen = celery_recover.look(factory(answers), alive={FAST})
    assert seen.held == {"a", "r", "s"} and seen.silent == set()


def test_rate_limits_as_inspect_registered_shows_them_set_at_run_time_too():
    lines = [
        "refapp.tasks.ledger.record_fast [rate_limit=6/m]",
        "refapp.tasks.ledger.record_slow",
        "refapp.tasks.probe.probe [rate_limit=0]",  # `control rate_limit ... 0` lifts a limit
        "refapp.tasks.heavy.crunch [serializer=json rate_limit=10/s]",
    ]
    assert celery_recover.limited_names(lines) == {
        "refapp.tasks.ledger.record_fast",
        "refapp.tasks.heavy.crunch",
    }


# -- what is given back ---------------------------------------------------------------------


def entries(*pairs):
    return {tag: (message(tid, name), key) for tag, tid, name, key in pairs}


FAST_TASK = "refapp.tasks.ledger.record_fast"
SLOW_TASK = "refapp.tasks.ledger.record_slow"


def test_what_no_live_worker_holds_is_given_back_and_nothing_else():
    first = entries(
        ("t1", "held", FAST_TASK, "high"),
        ("t2", "orphan", FAST_TASK, "high"),
        ("t3", "acked-meanwhile", FAST_TASK, "high"),
    )
    seen = celery_recover.Look(held={"held"})
    give, keep = celery_recover.decide(first, {"t1", "t2"}, seen)
    assert give == [("t2", "orphan", FAST_TASK, "high")] and keep == []


def test_a_rate_limited_task_a_live_consumer_of_its_queue_may_hold_is_held_back():
    """In no list: strategy.py hands it to the consumer's token bucket, not to reserved."""
    answers = {FAST: {**FAST_IDLE, "registered": [f"{FAST_TASK} [rate_limit=6/m]"]}}
    seen = celery_recover.look(factory(answers), alive=set())
    first = entries(
        ("t1", "waiting", FAST_TASK, "high"),
        ("t2", "unlimited", SLOW_TASK, "low"),
        ("t3", "limited-elsewhere", FAST_TASK, "low"),  # sent to a queue fast does not consume
    )
    give, keep = celery_recover.decide(first, set(first), seen)
    assert keep == [("waiting", FAST_TASK, "high", [FAST])]
    assert [tid for _tag, tid, _name, _key in give] == ["unlimited", "limited-elsewhere"]


def test_a_worker_whose_rate_limits_are_unknown_may_hold_any_task_of_its_queues():
    answers = {FAST: {**FAST_IDLE}}  # no `registered` answer
    inspect = factory(answers)

    def without_registered(destination, limit):
        ask = inspect(destination, limit)
        ask.registered = lambda *items: None
        return ask

    seen = celery_recover.look(without_registered, alive=set())
    give, keep = celery_recover.decide(entries(("t1", "x", SLOW_TASK, "high")), {"t1"}, seen)
    assert give == [] and keep == [("x", SLOW_TASK, "high", [FAST])]


# -- the worker processes of a host ---------------------------------------------------------

SYSTEMD = [
    "/srv/refapp/current/venv/bin/python3",
    "/srv/refapp/current/venv/bin/celery",
    "-A",
    "refapp",
    "worker",
    f"--hostname=fast@{HOST}",
    "--loglevel=INFO",
    "--task-events",
]
SUPERVISED = ["/srv/refapp/current/venv/bin/celery", "-A", "refapp", "worker", "--hostname=slow@%h"]
# how the toolkit starts them since issue 20: through its launcher (roles/celery_app/files)
LAUNCHED = [
    "/srv/refapp/current/venv/bin/python",
    "/usr/local/lib/celery-toolkit/celery_launch.py",
    "-A",
    "refapp",
    "worker",
    "--hostname=mail@%h",
]
LAUNCHED_WRAPPER = [
    "/usr/bin/python3",
    "/usr/local/lib/celery-toolkit/celery_supervise.py",
    "--drain",
    "slow@%h",
    "--",
    "python",
    "/usr/local/lib/celery-toolkit/celery_launch.py",
    "-A",
    "refapp",
    "worker",
    "--hostname=slow@%h",
]
WRAPPER = [
    "/usr/bin/python3",
    "/usr/local/lib/celery-toolkit/celery_supervise.py",
    "--drain",
    "slow@%h",
    "--",
    "/srv/refapp/current/venv/bin/celery",
    "-A",
    "refapp",
    "worker",
    "--hostname=slow@%h",
]


@pytest.mark.parametrize(
    ("argv", "node"),
    [
        (SYSTEMD, f"fast@{HOST}"),
        (SUPERVISED, "slow@%h"),
        (["celery", "-A", "app", "worker", "-n", "w1@%n"], "w1@%n"),
        (["celery", "-A", "app", "worker"], "celery@%h"),
        (WRAPPER, None),  # alive while the worker it wraps may be the one that died
        (LAUNCHED, "mail@%h"),
        (LAUNCHED_WRAPPER, None),
        (["/srv/refapp/current/venv/bin/celery", "-A", "refapp", "flower"], None),
        (["python3", "celery_recover.py", "--alive=fast@vm1"], None),
        (["python3", "celery_drain.py", "fast@vm1", "120", "42"], None),
    ],
)
def test_worker_processes_are_known_by_their_command_line(argv, node):
    assert celery_recover.worker_node(argv) == node


def test_local_nodes_reads_proc_and_expands_the_host_as_celery_does(tmp_path):
    processes = {"10": SYSTEMD, "11": SUPERVISED, "12": SUPERVISED, "13": WRAPPER, "15": LAUNCHED}
    for pid, argv in processes.items():
        (tmp_path / pid).mkdir()
        (tmp_path / pid / "cmdline").write_bytes("\0".join(argv).encode() + b"\0")
    (tmp_path / "self").mkdir()
    (tmp_path / "14").mkdir()  # a process that ended while /proc was read
    assert celery_recover.local_nodes(str(tmp_path), "vm1.example.org") == {
        f"fast@{HOST}",
        "slow@vm1.example.org",
        "mail@vm1.example.org",
    }


# -- a whole run against a stand-in broker ------------------------------------------------


class Broker:
    """The unacked hash of kombu's Redis transport, and its restore_by_tag."""

    unacked_key = "unacked"

    def __init__(self, items):
        self.hash = {
            tag.encode(): dumps([message(tid, name), "", key]) for tag, tid, name, key in items
        }
        self.restored = []

    def hgetall(self, key):
        return dict(self.hash)

    def hkeys(self, key):
        return list(self.hash)

    def restore_by_tag(self, tag, client):
        self.restored.append(tag)
        self.hash.pop(tag.encode())


class App:
    def __init__(self, broker, rounds):
        self.broker, self.rounds = broker, rounds  # one Inspect factory per round, last repeats
        channel = type("Channel", (), {"client": broker, "qos": broker})()
        self.conn = type("Conn", (), {"default_channel": channel})()
        self.control = self

    def connection_for_write(self):
        app = self

        class Ctx:
            def __enter__(self):
                return app.conn

            def __exit__(self, *exc):
                return False

        return Ctx()

    def inspect(self, timeout, destination, limit):
        if destination is None:  # each round starts with a ping to every worker
            self.current = self.rounds.pop(0) if len(self.rounds) > 1 else self.rounds[0]
        return self.current(destination, limit)


@pytest.fixture
def clock(monkeypatch):
    now = [0.0]
    monkeypatch.setattr(celery_recover.time, "monotonic", lambda: now[0])
    monkeypatch.setattr(celery_recover.time, "sleep", lambda s: now.__setitem__(0, now[0] + s))
    monkeypatch.setattr(celery_recover, "heard", lambda app, seconds: set())
    return now


def run(app, local, monkeypatch, **kwargs):
    monkeypatch.setattr(celery_recover, "local_nodes", lambda: set(local))
    return celery_recover.recover(app, margin=5, dry_run=False, **kwargs)


def test_a_busy_solo_worker_is_waited_for_and_what_it_ran_is_not_given_back(clock, monkeypatch):
    broker = Broker([("t1", "long", SLOW_TASK, "low"), ("t2", "orphan", FAST_TASK, "high")])
    busy = factory({FAST: FAST_IDLE})  # slow: a solo pool inside its task, answers nothing
    done = {FAST: FAST_IDLE, SLOW: {**FAST_IDLE, "active_queues": queues("low")}}

    def finish(destination, limit):  # the task ends: acknowledged, then slow answers
        broker.hash.pop(b"t1", None)
        return factory(done)(destination, limit)

    app = App(broker, [busy, busy, finish])
    out = run(app, {FAST, SLOW}, monkeypatch, patience=60)
    assert out["ok"] and out["requeued"] == ["orphan"]
    assert broker.restored == ["t2"]
    assert out["lines"][0].startswith("waited ") and SLOW in out["lines"][0]


def test_a_worker_silent_beyond_the_patience_makes_the_run_refuse(clock, monkeypatch):
    """A group in its warm shutdown longer than the patience: nothing is given back, and the
    output says which worker and what to do."""
    broker = Broker([("t1", "running", FAST_TASK, "high")])
    app = App(broker, [factory({})])
    out = run(app, {FAST}, monkeypatch, patience=30)
    assert not out["ok"] and out["requeued"] == [] and broker.restored == []
    text = " ".join(out["lines"])
    assert f"{FAST}: alive" in text and "nothing given back" in text
    assert "playbooks/recover.yml again" in text and "celery_recover_patience" in text
    assert clock[0] >= 30


def test_a_worker_that_stopped_while_waited_for_is_dead_and_its_tasks_come_back(clock, monkeypatch):
    broker = Broker([("t1", "stranded", FAST_TASK, "high")])
    local = [{FAST}, {FAST}, set()]
    monkeypatch.setattr(celery_recover, "local_nodes", lambda: local.pop(0) if local else set())
    app = App(broker, [factory({})])
    out = celery_recover.recover(app, margin=5, dry_run=False, patience=60)
    assert out["ok"] and out["requeued"] == ["stranded"] and broker.restored == ["t1"]


def test_alive_nodes_from_other_hosts_count_like_local_ones(clock, monkeypatch):
    broker = Broker([("t1", "running", FAST_TASK, "high")])
    app = App(broker, [factory({})])
    out = run(app, set(), monkeypatch, patience=10, alive=["fast@vm2"])
    assert not out["ok"] and "fast@vm2: alive" in out["lines"][0] and broker.restored == []


def test_a_rate_limited_task_is_held_back_and_reported(clock, monkeypatch):
    broker = Broker([("t1", "waiting", FAST_TASK, "high")])
    answers = {FAST: {**FAST_IDLE, "registered": [f"{FAST_TASK} [rate_limit=6/m]"]}}
    out = run(App(broker, [factory(answers)]), {FAST}, monkeypatch)
    assert out["ok"] and out["requeued"] == [] and out["held_back"] == ["waiting"]
    assert broker.restored == []
    assert f"held back waiting {FAST_TASK} -> high: rate-limited in {FAST}" in out["lines"][0]
    assert (
        out["lines"][-1]
        == "0 of 1 unacknowledged task(s) held by no live worker, 1 held back (rate-limited)"
    )


def test_the_command_line_prints_json_and_fails_on_a_refusal(monkeypatch, capsys):
    monkeypatch.setattr(
        celery_recover,
        "recover",
        lambda *a, **k: {"ok": False, "requeued": [], "held_back": [], "lines": ["x"]},
    )
    import celery.app.utils

    monkeypatch.setattr(celery.app.utils, "find_app", lambda name: None)
    monkeypatch.setenv("CELERY_APP", "refapp")
    assert celery_recover.main(["--patience", "5", "--alive", FAST]) == 1
    assert json.loads(capsys.readouterr().out)["lines"] == ["x"]


def test_list_local_prints_the_nodes_as_json(monkeypatch, capsys):
    monkeypatch.setattr(celery_recover, "local_nodes", lambda: {SLOW, FAST})
    assert celery_recover.main(["--list-local"]) == 0
    assert json.loads(capsys.readouterr().out) == [FAST, SLOW]


def test_heartbeats_are_listened_to_for_their_window_even_when_events_never_pause(monkeypatch):
    """kombu's capture timeout counts silent seconds only: with task events every second it
    would never end; the handler stops the receiver once the window has passed."""
    now = [0.0]
    monkeypatch.setattr(celery_recover.time, "monotonic", lambda: now[0])

    class Receiver:
        def __init__(self, conn, handlers):
            self.handler, self.should_stop = handlers["*"], False

        def capture(self, limit, timeout, wakeup):
            events = [
                {"type": "task-succeeded", "hostname": FAST},
                {"type": "worker-heartbeat", "hostname": FAST},
                {"type": "worker-heartbeat", "hostname": SLOW},
            ]
            while not self.should_stop:
                now[0] += 0.5
                self.handler(events[int(now[0] * 2) % 3])
                assert now[0] < 60, "the receiver was never stopped"

    app = App(Broker([]), [factory({})])
    app.connection_for_read = app.connection_for_write
    app.events = type("Events", (), {"Receiver": Receiver})
    assert celery_recover.heard(app, 3) == {FAST, SLOW}
    assert 3 <= now[0] < 4
