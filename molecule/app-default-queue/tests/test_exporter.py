"""The toolkit's Celery exporter (roles/celery_exporter) on the converged host, as Prometheus
sees it: its /metrics, its figures after the queue fills with its group stopped, an unacked
entry's age, and verify.yml's figures. Runs before the shared app_shape tests (the path sorts
first) and leaves the host as it found it (the group running, nothing queued)."""

import json
import os
import re
import time

from playbook_runner import run_as_app, run_playbook

SHAPE = json.loads(os.environ["APP_SHAPE"])
APP = SHAPE["app"]
GROUP, QUEUES = next(iter(SHAPE["groups"].items()))
QUEUE = QUEUES[0]
URL = "http://127.0.0.1:9808/metrics"
# Runs as the app (<app>-run python -c ...): publishes Celery's built-in task, or writes and
# removes an `unacked` entry, with the app's own connection (its ACL user).
AS_APP = """
import json, os, sys, time
from celery.app.utils import find_app
app = find_app(os.environ["CELERY_APP"])
what, queue = sys.argv[1], sys.argv[2]
if what == "send":
    for priority in [None, None, None, 5, 5]:
        app.send_task("celery.accumulate", args=["exporter-test"], queue=queue, priority=priority)
else:
    with app.connection_for_write() as conn:
        client = conn.default_channel.client
        if what == "unacked":
            client.zadd("unacked_index", {"exporter-test-tag": time.time() - 100})
            client.hset("unacked", "exporter-test-tag", json.dumps([{}, "", ""]))
        else:
            client.zrem("unacked_index", "exporter-test-tag")
            client.hdel("unacked", "exporter-test-tag")
print("done")
"""


def as_app(host, *args):
    return run_as_app(host, APP, AS_APP, *args)


def metrics(host) -> dict:
    """name{labels} -> value, from the exporter's /metrics read on the host."""
    read = f'import urllib.request; print(urllib.request.urlopen("{URL}").read().decode())'
    text = host.check_output(f"python3 -c '{read}'")
    found = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            found[name] = float(value)
    return found


def wait_for(host, wanted: dict, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        seen = metrics(host)
        if all(seen.get(k) == v for k, v in wanted.items()) or time.monotonic() > deadline:
            return seen
        time.sleep(1)


def test_the_exporter_runs_hardened_as_the_app_on_loopback(host):
    unit = f"{APP}-exporter.service"
    assert host.service(unit).is_running
    assert host.service(unit).is_enabled
    show = host.check_output(f"systemctl show -p User -p DropInPaths -p ActiveState {unit}")
    assert f"User={APP}" in show
    assert f"{APP}-.service.d/hardening.conf" in show
    assert host.socket("tcp://127.0.0.1:9808").is_listening
    assert not host.socket("tcp://0.0.0.0:9808").is_listening


def test_metrics_of_a_healthy_host(host):
    seen = wait_for(
        host, {"celery_exporter_broker_up": 1, f'celery_group_up{{group="{GROUP}"}}': 1}
    )
    assert seen["celery_exporter_broker_up"] == 1
    assert seen[f'celery_group_up{{group="{GROUP}"}}'] == 1
    assert seen[f'celery_queue_consumers{{queue="{QUEUE}"}}'] == 1
    assert seen[f'celery_queue_messages{{queue="{QUEUE}"}}'] == 0
    assert seen[f'celery_queue_oldest_message_age_seconds{{queue="{QUEUE}"}}'] == 0
    assert "celery_unacked_messages" in seen and "celery_unacked_oldest_age_seconds" in seen


def test_a_stopped_group_a_filled_queue_and_an_unacked_entry(host):
    """The group stopped: celery_group_up 0, its queue has no consumer; five messages (two of
    priority 5, kombu's list "<queue>\\x06\\x163") count as five and age; an unacked entry
    delivered 100 s ago shows its age. Then the group runs again and the queue drains."""
    worker = f"{APP}-worker@{GROUP}.service"
    host.run_expect([0], f"systemctl stop {worker}")
    try:
        as_app(host, "send", QUEUE)
        as_app(host, "unacked", QUEUE)
        stopped = wait_for(
            host,
            {
                f'celery_group_up{{group="{GROUP}"}}': 0,
                f'celery_queue_consumers{{queue="{QUEUE}"}}': 0,
                f'celery_queue_messages{{queue="{QUEUE}"}}': 5,
                # (the entry was written after the messages: a collection may fall between)
                "celery_unacked_messages": 1,
            },
        )
        assert stopped[f'celery_group_up{{group="{GROUP}"}}'] == 0
        assert stopped[f'celery_queue_consumers{{queue="{QUEUE}"}}'] == 0
        assert stopped[f'celery_queue_messages{{queue="{QUEUE}"}}'] == 5
        assert stopped["celery_unacked_messages"] >= 1
        assert stopped["celery_unacked_oldest_age_seconds"] >= 100
        time.sleep(6)
        later = metrics(host)
        # the head was pushed before the note that first saw it: at least 4 s (one interval short)
        assert later[f'celery_queue_oldest_message_age_seconds{{queue="{QUEUE}"}}'] >= 4
        # verify.yml prints the same figures (its table is printed when every check passes, else
        # with the failure: the stopped group makes it fail here, and its probe is a sixth
        # message in the queue)
        proc, _ = run_playbook("verify.yml", check=False)
        assert proc.returncode != 0
        figures = re.search(
            rf"queue\s+{QUEUE}\s+([0-9]+)\s+waiting,\s+oldest\s+([0-9.]+)\s+s", proc.stdout
        )
        assert figures, proc.stdout[-3000:]
        assert int(figures[1]) in (5, 6) and float(figures[2]) >= 4
        assert re.search(
            r"unacked\s+[0-9]+\s+entries,\s+oldest\s+delivered\s+[0-9.]+\s+s\s+ago", proc.stdout
        )
        assert re.search(
            r"broker\s+\S+\s+used_memory\s+[0-9]+\s+B\s+of\s+maxmemory", proc.stdout
        ), proc.stdout[-3000:]
    finally:
        as_app(host, "clean", QUEUE)
        host.run_expect([0], f"systemctl start {worker}")
    healthy = wait_for(
        host,
        {
            f'celery_group_up{{group="{GROUP}"}}': 1,
            f'celery_queue_consumers{{queue="{QUEUE}"}}': 1,
            f'celery_queue_messages{{queue="{QUEUE}"}}': 0,
        },
        timeout=120,
    )
    assert healthy[f'celery_group_up{{group="{GROUP}"}}'] == 1
    assert healthy[f'celery_queue_messages{{queue="{QUEUE}"}}'] == 0
    assert healthy[f'celery_queue_oldest_message_age_seconds{{queue="{QUEUE}"}}'] == 0


def test_verify_prints_the_figures(host):
    proc, _ = run_playbook("verify.yml")
    assert re.search(rf"queue\s+{QUEUE}\s+0\s+waiting,\s+oldest\s+0\s+s", proc.stdout), proc.stdout[
        -3000:
    ]
    assert re.search(r"broker\s+\S+\s+used_memory\s+[0-9]+\s+B\s+of\s+maxmemory", proc.stdout)
