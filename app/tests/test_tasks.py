"""Tasks run eagerly, without a broker."""

from __future__ import annotations

import os
import socket

import pytest

from refapp import app
from refapp.tasks import background, heavy, ledger, notifications
from refapp.tasks.probe import probe


def test_probe_reports_its_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CELERY_WORKER_GROUP", "bulk")
    monkeypatch.setenv("CELERY_APP_RELEASE", "1.0.0-42")
    result = probe.apply(args=("t",)).get()
    assert set(result) == {"token", "worker", "queue", "group", "host", "pid", "release"}
    assert result["token"] == "t"
    assert result["group"] == "bulk"
    assert result["release"] == "1.0.0-42"
    assert result["host"] == socket.gethostname()
    assert result["pid"] == os.getpid()


def test_probe_without_group(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CELERY_WORKER_GROUP", raising=False)
    monkeypatch.delenv("CELERY_APP_RELEASE", raising=False)
    result = probe.apply(args=("u",)).get()
    assert result["group"] == ""
    assert result["release"] == ""


def test_quick_tasks_return_dicts() -> None:
    assert notifications.send_sms.run("+15550100", "hi")["channel"] == "sms"
    assert notifications.send_push.run(7, "Hello")["to"] == 7
    assert notifications.send_email.run("a@example.com", "Subj")["subject"] == "Subj"
    assert background.resize_image.run(1)["image_id"] == 1
    assert background.generate_report.run(2)["status"] == "ready"
    assert "removed" in background.cleanup_expired_sessions.run()


def test_heavy_tasks_honour_seconds(monkeypatch: pytest.MonkeyPatch) -> None:
    assert heavy.scrape_site.run("https://example.com", seconds=0)["seconds"] == 0
    monkeypatch.setitem(app.conf, "refapp_heavy_task_seconds", 0.01)
    assert heavy.sync_catalog.run()["seconds"] == 0.01


class FakeRedis:
    def __init__(self) -> None:
        self.hashes: dict[str, dict[str, int]] = {}
        self.commands: list[tuple] = []

    def hincrby(self, key: str, field: str, amount: int = 1) -> int:
        fields = self.hashes.setdefault(key, {})
        fields[field] = fields.get(field, 0) + amount
        return fields[field]

    def hset(self, key: str, field: str, value: str) -> int:
        self.commands.append(("HSET", key, field))
        return 1

    def execute_command(self, *args: object) -> int:
        self.commands.append(args)
        return 0


def test_ledger_variants_share_one_implementation(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeRedis()
    urls: list[str] = []

    def client(url: str) -> FakeRedis:
        urls.append(url)
        return fake

    monkeypatch.setattr(ledger, "_client", client)
    assert ledger.record_fast.run("tok") == {"token": "tok", "count": 1}
    assert ledger.record_slow.run("tok", seconds=0.01) == {"token": "tok", "count": 2}
    assert fake.hashes == {"refapp:ledger": {"tok": 2}}
    assert fake.commands == []  # WAIT: with a replicated broker only
    assert urls == [app.conf.broker_url] * 2


def test_with_a_replicated_broker_each_count_waits_for_a_replica(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake = FakeRedis()
    monkeypatch.setattr(ledger, "_client", lambda url: fake)
    monkeypatch.setitem(app.conf, "broker_url", "sentinel://u:p@10.0.0.1:26379/0")
    assert ledger.record_fast.run("tok") == {"token": "tok", "count": 1}
    assert fake.commands == [("HSET", "refapp:ledger:ran", "tok"), ("WAIT", 1, 1000)]
