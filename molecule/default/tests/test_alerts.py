"""Alerts as the operator sees them, through the monitor's Prometheus (/api/v1/alerts): each case
breaks the fleet the way an incident does, waits until its alert fires, applies the fix the
alert's runbook line names, and waits until the alert resolves. Before each case the alert is
silent while the figures it reads are there: silence without figures would prove nothing.

Runs first of the scenario's tests (file order) and leaves the fleet as it found it: every group
and beat running, no task waiting or stranded, no alert active.
"""

import datetime
import json
import re
import subprocess
import time
import urllib.parse
import uuid

import pytest
import yaml

from load import SEND
from playbook_runner import LEDGER, ROOT, record_figure, run_playbook, wait_for, wait_until_ran

STACK, MONITOR = "celery-toolkit-default", "celery-toolkit-monitor"
MONITOR_VARS = yaml.safe_load((ROOT / f"molecule/default/host_vars/{MONITOR}.yml").read_text())
PROMETHEUS = (
    f"http://{MONITOR_VARS['celery_private_address']}:{MONITOR_VARS.get('prometheus_port', 9090)}"
)
RUN = uuid.uuid4().hex[:8]  # tokens unique to this run: the file can run again on the same fleet
# Deadlines, not waits: the test fleet's alerts fire in about 30 s (the monitor's host_vars give
# short intervals and `for:` durations); a busy machine may take longer.
FIRE_TIMEOUT, RESOLVE_TIMEOUT = 150, 150
ALERTS = [
    "CeleryQueueNoConsumer",
    "CeleryQueueBacklog",
    "CeleryQueueOldestMessageTooOld",
    "CeleryWorkerGroupDown",
    "CeleryWorkerRestartLoop",
    "CeleryBeatNotRunning",
    "CeleryBeatDuplicate",
    "CeleryTasksStranded",
    "CeleryTaskFailureRate",
    "CeleryExporterDown",
    "RedisDown",
    "RedisMemoryHigh",
    "RedisAofError",
]
# What an operator on the monitor host runs: the HTTP API from there, with its Python.
FETCH = """
import sys, urllib.request
print(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())
"""
# As the app on the stack's host: a consumer that takes a task from `low` and is killed before it
# acknowledges it (os._exit skips kombu's give-back at close). No unit ran it, so no unit's clean-up
# after an unclean end gives it back: the task stays in the broker's unacked hash, stranded, as
# when a worker's VM is lost with the task in flight. Stranded means older than the layout's
# longest stop_timeout (the slow group's 32 minutes) plus a margin: instead of waiting that long,
# the consumer dates its delivery (kombu's unacked_index, the time each entry was delivered)
# AGE seconds back.
STRAND = """
import os, sys, time
from refapp import app
from refapp.tasks.ledger import record_slow
token, age = sys.argv[1], float(sys.argv[2])
result = record_slow.delay(token + "-0", 0)  # the ledger reads PREFIX-<n> tokens
with app.connection_for_write() as conn:
    channel = conn.default_channel
    message = channel.basic_get("low", no_ack=False)
    assert message is not None
    delivered = {message.delivery_tag: time.time() - age}
    assert channel.client.zadd(channel.qos.unacked_index_key, delivered, xx=True, ch=True) == 1
    print(result.id, flush=True)
    os._exit(0)  # inside the with: leaving it would close the channel, which gives it back
"""


def api(path: str, **params: str) -> dict:
    url = PROMETHEUS + path + ("?" + urllib.parse.urlencode(params) if params else "")
    proc = subprocess.run(
        ["docker", "exec", MONITOR, "python3", "-c", FETCH, url],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, f"{url}: {proc.stderr[-2000:]}"
    body = json.loads(proc.stdout)
    assert body["status"] == "success", body
    return body["data"]


def active_alerts() -> list[dict]:
    """Pending and firing alerts (a resolved alert leaves the list)."""
    return api("/api/v1/alerts")["alerts"]


def matching(alerts: list[dict], name: str, labels: dict[str, str]) -> list[dict]:
    return [
        a
        for a in alerts
        if a["labels"]["alertname"] == name
        and all(a["labels"].get(k) == v for k, v in labels.items())
    ]


def query(expr: str) -> list[tuple[dict, float]]:
    """An instant query: each series' labels and value."""
    return [(r["metric"], float(r["value"][1])) for r in api("/api/v1/query", query=expr)["result"]]


def value(expr: str) -> float | None:
    """The value of an expression that gives one series, None when it gives none."""
    result = query(expr)
    assert len(result) <= 1, f"{expr} gives {len(result)} series: {result}"
    return result[0][1] if result else None


def poll(predicate, timeout: float, what: str) -> float:
    """Poll predicate() every 2 s until it holds; the seconds it took. Fails at the deadline with
    what was active."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            active = [(a["labels"], a["state"]) for a in active_alerts()]
            pytest.fail(f"{what}: not after {timeout} s; active alerts: {active}")
        time.sleep(2)
    return round(time.monotonic() - started, 1)


def wait_firing(cases: dict[str, dict[str, str]]) -> dict[str, dict]:
    """Wait until every alert of `cases` (name -> labels it carries) fires; the alerts."""
    found: dict[str, dict] = {}

    def all_firing() -> bool:
        alerts = active_alerts()
        for name, labels in cases.items():
            firing = [a for a in matching(alerts, name, labels) if a["state"] == "firing"]
            if firing:
                found[name] = firing[0]
        return len(found) == len(cases)

    poll(all_firing, FIRE_TIMEOUT, f"{sorted(cases)} firing")
    return found


def wait_resolved(cases: dict[str, dict[str, str]]) -> float:
    """Wait until no alert of `cases` is active; the seconds it took."""

    def resolved() -> bool:
        alerts = active_alerts()
        return not any(matching(alerts, name, labels) for name, labels in cases.items())

    return poll(resolved, RESOLVE_TIMEOUT, f"{sorted(cases)} resolved")


def assert_silent(cases: dict[str, dict[str, str]]) -> None:
    alerts = active_alerts()
    for name, labels in cases.items():
        assert not matching(alerts, name, labels), f"{name} {labels} is already active: {alerts}"


def runbook_playbook(alert: dict) -> str:
    """The first playbook the alert's runbook line names."""
    runbook = alert["annotations"]["runbook"]
    names = re.findall(r"([a-z_]+\.yml)", runbook)
    assert names, f"{alert['labels']['alertname']}: the runbook names no playbook: {runbook}"
    return names[0]


def as_app(host, script, *args):
    quoted = " ".join(f"'{a}'" for a in args)
    return host.check_output(f"refapp-run python -c '{script.replace(chr(39), chr(34))}' {quoted}")


def ledger(host, prefix: str) -> dict[str, int]:
    return json.loads(as_app(host, LEDGER, prefix))["ledger"]


def record(name: str, figures: dict) -> None:
    record_figure("alerts-figures.json", name, figures)


def test_prometheus_scrapes_the_fleet_and_loads_every_alert():
    """Every exporter of the stack's host is scraped (label host) and up, every alert is loaded
    with a severity, a summary and a runbook line, and a healthy fleet raises none."""

    def scraped() -> bool:
        targets = api("/api/v1/targets", state="active")["activeTargets"]
        up = {(t["labels"]["job"], t["labels"].get("host")) for t in targets if t["health"] == "up"}
        return {("node", STACK), ("redis", STACK), ("celery", STACK)} <= up

    poll(scraped, FIRE_TIMEOUT, "node, redis and celery of the stack's host scraped")
    rules = alert_rules()
    assert sorted(set(ALERTS) - set(rules)) == []
    for name in ALERTS:
        for rule in rules[name]:
            assert rule["labels"]["severity"] in ("critical", "warning"), rule
            assert {"summary", "description", "runbook"} <= set(rule["annotations"]), rule
            assert "playbooks/" in rule["annotations"]["runbook"], rule
    # the figures the cases below read are there before anything breaks
    assert value(f'celery_exporter_broker_up{{host="{STACK}"}}') == 1
    assert value(f'celery_group_up{{host="{STACK}", group="fast"}}') == 1
    assert value(f'celery_group_up{{host="{STACK}", group="slow"}}') == 1
    assert value(f'celery:process_up{{host="{STACK}", process="beat"}}') == 1
    # a rule evaluation later than one interval from now: still nothing pending or firing
    now = time.time()
    poll(lambda: rules_evaluated_after(now), FIRE_TIMEOUT, "a rule evaluation")
    assert active_alerts() == []


def alert_rules() -> dict[str, list[dict]]:
    """The alerting rules Prometheus has loaded, by name (one per queue for the queues' alerts)."""
    rules: dict[str, list[dict]] = {}
    for group in api("/api/v1/rules")["groups"]:
        for rule in group["rules"]:
            if rule["type"] == "alerting":
                rules.setdefault(rule["name"], []).append(rule)
    return rules


def rules_evaluated_after(moment: float) -> bool:
    """Every rule group was evaluated after `moment` (a UNIX time)."""
    groups = api("/api/v1/rules")["groups"]
    return all(_parse_time(g["lastEvaluation"]) > moment + g["interval"] for g in groups)


def _parse_time(text: str) -> float:
    """RFC 3339 as Prometheus writes it (nanoseconds, Z): a UNIX time."""
    base, _, fraction = text.rstrip("Z").partition(".")
    moment = datetime.datetime.fromisoformat(base).replace(tzinfo=datetime.UTC)
    return moment.timestamp() + (float("0." + fraction) if fraction else 0)


def test_a_stopped_worker_group_fires_and_a_deploy_resolves_it(host):
    """The slow group stopped: its group is down and its queue has no consumer; the runbook's
    deploy.yml starts it again and both alerts resolve."""
    cases = {"CeleryWorkerGroupDown": {"group": "slow"}, "CeleryQueueNoConsumer": {"queue": "low"}}
    assert value(f'celery_group_up{{host="{STACK}", group="slow"}}') == 1
    assert value('max by (queue) (celery_queue_consumers{queue="low"})') >= 1
    assert_silent(cases)
    stopped = time.monotonic()
    host.run_expect([0], "systemctl stop refapp-worker@slow.service")
    fired = wait_firing(cases)
    fire_s = round(time.monotonic() - stopped, 1)
    # the group's own alert names the fix; the queue's names what to do when no group of the
    # layout consumes it (rollback.yml)
    assert runbook_playbook(fired["CeleryWorkerGroupDown"]) == "deploy.yml", fired
    fixed = time.monotonic()
    run_playbook("deploy.yml")
    resolve_s = wait_resolved(cases)
    record(
        "a worker group stopped",
        {
            "fired_after_s": fire_s,
            "resolved_after_deploy_s": resolve_s,
            "deploy_and_resolve_s": round(time.monotonic() - fixed, 1),
        },
    )
    assert host.service("refapp-worker@slow").is_running


def test_a_flooded_queue_without_consumer_fires_and_drains_when_its_group_starts(host):
    """200 tasks sent to `low` while its only group is stopped: no consumer, a backlog, the oldest
    message too old; the group started again drains the queue and every alert resolves."""
    prefix, n = f"flood-{RUN}", 200
    cases = {
        "CeleryQueueNoConsumer": {"queue": "low"},
        "CeleryQueueBacklog": {"queue": "low"},
        "CeleryQueueOldestMessageTooOld": {"queue": "low"},
    }
    assert value('max by (queue) (celery_queue_messages{queue="low"})') == 0
    assert_silent(cases)
    host.run_expect([0], "systemctl stop refapp-worker@slow.service")
    try:
        flooded = time.monotonic()
        as_app(host, SEND, prefix, "0", "0", str(n), "0")
        fired = wait_firing(cases)
        fire_s = round(time.monotonic() - flooded, 1)
        # (beat's hourly task may have joined them)
        assert value('max by (queue) (celery_queue_messages{queue="low"})') >= n
    finally:
        host.run_expect([0], "systemctl start refapp-worker@slow.service")
    started = time.monotonic()
    state = wait_until_ran(lambda: json.loads(as_app(host, LEDGER, prefix)), n, ["low"])
    assert len(state["ledger"]) == n, f"{n - len(state['ledger'])} of {n} flooded tasks never ran"
    resolve_s = wait_resolved(cases)
    record(
        "a queue flooded with no consumer",
        {
            "tasks": n,
            "fired_after_s": fire_s,
            "resolved_after_start_s": round(time.monotonic() - started, 1),
            "resolved_after_drain_s": resolve_s,
            "runbooks": {k: a["annotations"]["runbook"] for k, a in fired.items()},
        },
    )


def test_beat_stopped_fires_and_the_runbooks_deploy_resolves_it(host):
    """Beat stopped on its host: no host runs it; the runbook's deploy.yml starts it again."""
    cases = {"CeleryBeatNotRunning": {}}
    assert value(f'celery:process_up{{host="{STACK}", process="beat"}}') == 1
    assert_silent(cases)
    stopped = time.monotonic()
    host.run_expect([0], "systemctl stop refapp-beat.service")
    fired = wait_firing(cases)
    fire_s = round(time.monotonic() - stopped, 1)
    playbook = runbook_playbook(fired["CeleryBeatNotRunning"])
    assert playbook == "deploy.yml", fired["CeleryBeatNotRunning"]["annotations"]
    fixed = time.monotonic()
    run_playbook(playbook)
    assert host.service("refapp-beat").is_running
    resolve_s = wait_resolved(cases)
    record(
        "beat stopped",
        {
            "fired_after_s": fire_s,
            "resolved_after_deploy_s": resolve_s,
            "deploy_and_resolve_s": round(time.monotonic() - fixed, 1),
        },
    )


def test_a_task_stranded_in_unacked_fires_and_recover_resolves_it(host):
    """A consumer killed with a task in flight: the task stays in unacked past the threshold, the
    runbook's recover.yml gives it back, it runs once and the alert resolves."""
    token = f"stranded-{RUN}"
    cases = {"CeleryTasksStranded": {}}
    [rule] = alert_rules()["CeleryTasksStranded"]
    threshold = float(re.search(r"> *([0-9.]+)", rule["query"]).group(1))
    # nothing in flight (beat's hourly task may be running for a few seconds)
    poll(lambda: value("max(celery_unacked_messages)") == 0, FIRE_TIMEOUT, "no unacked message")
    assert_silent(cases)
    host.run_expect([0], "systemctl stop refapp-worker@slow.service")  # nobody else takes it
    try:
        # delivered longer ago than the threshold (the layout's longest stop_timeout + the margin)
        as_app(host, STRAND, token, str(threshold + 30))
    finally:
        host.run_expect([0], "systemctl start refapp-worker@slow.service")
    killed = time.monotonic()
    fired = wait_firing(cases)
    fire_s = round(time.monotonic() - killed, 1)
    assert value("max(celery_unacked_messages)") >= 1
    playbook = runbook_playbook(fired["CeleryTasksStranded"])
    assert playbook == "recover.yml", fired["CeleryTasksStranded"]["annotations"]
    fixed = time.monotonic()
    run_playbook(playbook)
    resolve_s = wait_resolved(cases)
    assert wait_for(lambda: ledger(host, token) == {f"{token}-0": 1}, 60), ledger(host, token)
    record(
        "a task stranded in unacked",
        {
            "fired_after_s": fire_s,
            "resolved_after_recover_s": resolve_s,
            "recover_and_resolve_s": round(time.monotonic() - fixed, 1),
        },
    )


def test_the_fleet_is_left_silent():
    """What the cases broke is mended: no alert pending or firing."""
    poll(lambda: active_alerts() == [], RESOLVE_TIMEOUT, "no alert active")
