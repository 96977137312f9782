"""The fleet's Prometheus configuration, generated from the inventory: the scrape configuration
(`celery_scrape_configs`: jobs node, redis, celery and flower, every target labelled
host="<inventory_hostname>") and the rule groups (`celery_alert_rules`: recording rules of each
process of the app, then every alert of the toolkit, each with a severity, a summary, a
description and a runbook line naming what to run).

Both read each host's settings as playbooks/validate.yml hands them over (its `__validate_settings`:
the inventory's values, else the roles' defaults), so the layout (worker groups, their queues
and stop timeouts, the beat host), the exporters' addresses and ports and the alert thresholds
(the role prometheus's `prometheus_alert_*`, read from the first host of the group `monitor`,
else the first worker host) are written nowhere else. What a process manager says of a process
comes from the seam (celery_process.py); the rules join on the label `host`.

`prometheus_setting_errors` holds what the role prometheus's argument spec cannot say (durations
Prometheus reads, ratios, per-queue thresholds); validate.yml runs it with the other rules.
"""

from __future__ import annotations

import inspect
import ipaddress
import os
import re
from collections.abc import Iterable, Mapping
from typing import Any

from ansible_collections.celery_toolkit.stack.plugins.filter.celery_process import (
    RESTART_WINDOW,
    celery_process_restarts_promql,
    celery_process_up_promql,
)
from ansible_collections.celery_toolkit.stack.plugins.filter.celery_runtime import (
    celery_single_layout,
)
from ansible_collections.celery_toolkit.stack.plugins.plugin_utils.celery_common import (
    Refusal,
    truthy,
)

try:
    from ansible.errors import AnsibleFilterError
except ImportError:  # the unit tests import the plugin without Ansible's package on the path
    AnsibleFilterError = ValueError  # type: ignore[assignment,misc]

Settings = Mapping[str, Mapping[str, Any]]

# Scrape jobs of the exporters: job -> (the role that runs it, the inventory groups it runs on).
# Each role has <role>_enabled, <role>_address and <role>_port.
EXPORTERS: dict[str, tuple[str, tuple[str, ...]]] = {
    "node": ("node_exporter", ("broker", "celery_workers")),
    "redis": ("redis_exporter", ("broker",)),
    "celery": ("celery_exporter", ("celery_workers",)),
}
# Every alert of the toolkit (README.md, docs/alerts.md): tests/test_promtool.py checks that
# each has a promtool case where it fires and one where it stays silent.
ALERTS = (
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
)
# The role prometheus's thresholds: name -> kind (duration, count, seconds, ratio).
THRESHOLDS: dict[str, str] = {
    "prometheus_alert_no_consumer_for": "duration",
    "prometheus_alert_queue_backlog": "count",
    "prometheus_alert_queue_backlog_for": "duration",
    "prometheus_alert_queue_age_seconds": "count",
    "prometheus_alert_queue_age_for": "duration",
    "prometheus_alert_worker_down_for": "duration",
    "prometheus_alert_restarts": "count",
    "prometheus_alert_beat_for": "duration",
    "prometheus_alert_stranded_margin_seconds": "count",
    "prometheus_alert_stranded_for": "duration",
    "prometheus_alert_failure_ratio": "ratio",
    "prometheus_alert_failure_for": "duration",
    "prometheus_alert_exporter_down_for": "duration",
    "prometheus_alert_redis_down_for": "duration",
    "prometheus_alert_redis_memory_ratio": "ratio",
    "prometheus_alert_redis_memory_for": "duration",
    "prometheus_alert_aof_for": "duration",
}
DURATION_SETTINGS = (
    "prometheus_scrape_interval",
    "prometheus_evaluation_interval",
    "prometheus_retention",
)
# What the rules and validate.yml read of the role prometheus (besides address, port, CA file).
PROMETHEUS_SETTINGS = [*DURATION_SETTINGS, *THRESHOLDS]
QUEUE_KEYS = {
    "backlog": "prometheus_alert_queue_backlog",
    "age_seconds": "prometheus_alert_queue_age_seconds",
}
# Prometheus's durations (model.ParseDuration): units from years to milliseconds, largest first.
DURATION = re.compile(
    r"^(0|(?=[0-9])([0-9]+y)?([0-9]+w)?([0-9]+d)?([0-9]+h)?([0-9]+m)?([0-9]+s)?([0-9]+ms)?)$"
)
# The worker group rollback.yml runs instead of the layout's (celery_single_layout's name): a host
# that runs it does not count the layout's groups down.
SINGLE_GROUP = inspect.signature(celery_single_layout).parameters["name"].default
# Where the rate of failed tasks is measured (Flower's task events).
FAILURE_WINDOW = "10m"


def _need(hv: Mapping[str, Any], name: str, host: str) -> Any:
    if name not in hv:
        raise AnsibleFilterError(
            f"{name} is not among {host}'s settings: the rules and the scrape configuration read "
            "each host's settings as playbooks/validate.yml notes them; run it first in the same "
            "play run (deploy.yml and monitoring.yml do), and with the role that owns the variable."
        )
    return hv[name]


def _label(value: Any) -> str:
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _hosts(groups: Mapping[str, Iterable[str]], *names: str) -> list[str]:
    hosts: list[str] = []
    for name in names:
        hosts += [h for h in groups.get(name, []) or [] if h not in hosts]
    return hosts


def _target(address: str, port: Any) -> str:
    try:
        if ipaddress.ip_address(address).version == 6:
            return f"[{address}]:{port}"
    except ValueError:
        pass
    return f"{address}:{port}"


def _flower_address(hv: Mapping[str, Any], host: str) -> str:
    """Where Flower answers: its flower_address, or for an address of every interface the host's
    private address, else loopback."""
    address = str(_need(hv, "flower_address", host) or "")
    if address in ("", "0.0.0.0", "::"):
        address = str(hv.get("celery_private_address") or "") or "127.0.0.1"
    return address


def celery_scrape_configs(
    groups: Mapping[str, Iterable[str]], settings: Settings, flower_ca_file: str = ""
) -> list[dict[str, Any]]:
    """The scrape_configs of a Prometheus that watches the fleet: one job per exporter (node,
    redis, celery) with a target per host whose <role>_enabled is true, at <role>_address and
    <role>_port, and the job flower (Flower's /metrics, which Flower 2.2 serves without its basic
    auth; https with `flower_ca_file` as the CA when the host gives Flower a certificate). Every
    target carries host="<inventory_hostname>"; a job without targets is left out."""
    configs: list[dict[str, Any]] = []
    for job, (role, where) in EXPORTERS.items():
        static = []
        for host in _hosts(groups, *where):
            hv = settings[host]
            if truthy(_need(hv, f"{role}_enabled", host)):
                target = _target(
                    str(_need(hv, f"{role}_address", host)), _need(hv, f"{role}_port", host)
                )
                static.append({"targets": [target], "labels": {"host": host}})
        if static:
            configs.append({"job_name": job, "static_configs": static})
    by_scheme: dict[str, list[dict[str, Any]]] = {}
    for host in _hosts(groups, "flower"):
        hv = settings[host]
        scheme = "https" if str(hv.get("flower_tls_cert_file") or "") else "http"
        target = _target(_flower_address(hv, host), _need(hv, "flower_port", host))
        by_scheme.setdefault(scheme, []).append({"targets": [target], "labels": {"host": host}})
    for scheme, static in sorted(by_scheme.items()):
        # one job per scheme; a second one keeps the label job="flower" (Prometheus sets `job`
        # from job_name only where a target has none)
        name = "flower" if scheme == "http" or "http" not in by_scheme else "flower_https"
        if name != "flower":
            static = [{**entry, "labels": {**entry["labels"], "job": "flower"}} for entry in static]
        job: dict[str, Any] = {"job_name": name, "metrics_path": "/metrics", "scheme": scheme}
        if scheme == "https" and flower_ca_file:
            job["tls_config"] = {"ca_file": flower_ca_file}
        job["static_configs"] = static
        configs.append(job)
    return configs


def _monitor_settings(
    groups: Mapping[str, Iterable[str]], settings: Settings
) -> tuple[str, Mapping[str, Any]]:
    for host in prometheus_hosts(groups) + _hosts(groups, "broker") + list(settings):
        if host in settings:
            return host, settings[host]
    raise AnsibleFilterError("no host's settings were given: the inventory has no host")


def _processes(host: str, hv: Mapping[str, Any], groups: Mapping[str, Iterable[str]]) -> list[str]:
    """The processes of the app a worker host may run: its worker groups, beat (looked for on
    every worker host: a second beat is an incident), Flower and the Celery exporter if it runs
    them."""
    processes = [f"worker@{g['name']}" for g in _need(hv, "celery_workers_groups", host)]
    if f"worker@{SINGLE_GROUP}" not in processes:
        processes.append(f"worker@{SINGLE_GROUP}")
    processes.append("beat")
    if host in _hosts(groups, "flower"):
        processes.append("flower")
    if truthy(_need(hv, "celery_exporter_enabled", host)):
        processes.append("exporter")
    return processes


def _recording_rules(
    groups: Mapping[str, Iterable[str]], settings: Settings
) -> list[dict[str, Any]]:
    rules: list[dict[str, Any]] = []
    for host in _hosts(groups, "celery_workers"):
        hv = settings[host]
        if not truthy(_need(hv, "node_exporter_enabled", host)):
            continue
        manager = str(_need(hv, "celery_process_manager", host))
        app = str(_need(hv, "celery_app_name", host))
        for process in _processes(host, hv, groups):
            # the host as a label of the rule too: promtool refuses two rules of one name
            # and the same labels
            labels = {"host": host, "process": process}
            rules.append(
                {
                    "record": "celery:process_up",
                    "expr": celery_process_up_promql(manager, app, process, host),
                    "labels": labels,
                }
            )
            rules.append(
                {
                    "record": f"celery:process_restarts:increase{RESTART_WINDOW}",
                    "expr": celery_process_restarts_promql(manager, app, process, host),
                    "labels": dict(labels),
                }
            )
    return rules


def _alert(
    name: str,
    expr: str,
    duration: str,
    severity: str,
    summary: str,
    description: str,
    runbook: str,
    **labels: str,
) -> dict[str, Any]:
    return {
        "alert": name,
        "expr": expr,
        "for": str(duration),
        "labels": {"severity": severity, **labels},
        "annotations": {"summary": summary, "description": description, "runbook": runbook},
    }


def _queues(
    groups: Mapping[str, Iterable[str]], settings: Settings, queues: Iterable[str]
) -> list[str]:
    """Every queue of every group of the layout, then the app's own (its routes' included)."""
    found: list[str] = []
    for host in _hosts(groups, "celery_workers"):
        for group in _need(settings[host], "celery_workers_groups", host):
            found += [q for q in group.get("queues") or [] if q not in found]
    return found + [q for q in queues or [] if q not in found]


def _longest_stop(groups: Mapping[str, Iterable[str]], settings: Settings) -> int:
    timeouts = [
        int(group.get("stop_timeout") or 0)
        for host in _hosts(groups, "celery_workers")
        for group in _need(settings[host], "celery_workers_groups", host)
    ]
    return max(timeouts, default=0)


def _queue_rules(queue_names: list[str], t: Mapping[str, Any]) -> list[dict[str, Any]]:
    per_queue = t.get("prometheus_alert_queue_thresholds") or {}
    rules = []
    for queue in queue_names:
        own = per_queue.get(queue) or {}
        backlog = own.get("backlog", t["prometheus_alert_queue_backlog"])
        age = own.get("age_seconds", t["prometheus_alert_queue_age_seconds"])
        q = _label(queue)
        rules.append(
            _alert(
                "CeleryQueueBacklog",
                f"max by (queue) (celery_queue_messages{{queue={q}}}) > {backlog}",
                t["prometheus_alert_queue_backlog_for"],
                "warning",
                "Queue {{ $labels.queue }} holds {{ $value }} waiting tasks",
                f"More than {backlog} tasks wait in queue {queue}: its consumers do not keep up, "
                "or a long task holds them (the fast queue behind a slow job). Check what the "
                "groups consuming it run (playbooks/verify.yml prints each queue's length and its "
                "oldest message's age).",
                "playbooks/verify.yml; if a group is stuck, playbooks/rollback.yml (one worker on "
                "every queue), or more concurrency in celery_workers_groups and "
                "playbooks/deploy.yml",
                queue=queue,
            )
        )
        rules.append(
            _alert(
                "CeleryQueueOldestMessageTooOld",
                f"max by (queue) (celery_queue_oldest_message_age_seconds{{queue={q}}}) > {age}",
                t["prometheus_alert_queue_age_for"],
                "warning",
                "The oldest task in queue {{ $labels.queue }} has waited "
                "{{ $value | humanizeDuration }}",
                f"A task has waited more than {age} s in queue {queue}: nothing consumes it fast "
                "enough. Check that its groups answer and what they run.",
                "playbooks/verify.yml; playbooks/rollback.yml if the split layout starves the "
                "queue; playbooks/deploy.yml after adding consumers",
                queue=queue,
            )
        )
    return rules


def celery_alert_rules(
    groups: Mapping[str, Iterable[str]], settings: Settings, queues: Iterable[str] | None = None
) -> dict[str, Any]:
    """The rule file (Prometheus's `groups:`) of the fleet: recording rules celery:process_up and
    celery:process_restarts:increase15m for each process of the app on each worker host whose
    node_exporter runs, then every alert of ALERTS. `queues`: the app's own
    (celery_app_effective_queues, its routes' included), added to the layout's."""
    monitor, t = _monitor_settings(groups, settings)
    for name in THRESHOLDS:
        _need(t, name, monitor)
    problems = [f"{var}{why}" for var, _, why in prometheus_setting_errors(monitor, t)]
    if problems:
        raise AnsibleFilterError(f"the alert thresholds of {monitor}: {' '.join(problems)}")
    stranded = _longest_stop(groups, settings) + int(t["prometheus_alert_stranded_margin_seconds"])
    up = "celery:process_up"
    single = _label(f"worker@{SINGLE_GROUP}")
    restarts = f"celery:process_restarts:increase{RESTART_WINDOW}"
    alerts = [
        _alert(
            "CeleryQueueNoConsumer",
            "max by (queue) (celery_queue_consumers) == 0",
            t["prometheus_alert_no_consumer_for"],
            "critical",
            "No worker consumes queue {{ $labels.queue }}",
            "Queue {{ $labels.queue }} is in the layout or the app's routes, but no Celery node "
            "consumes it: every task sent there waits (beat's periodic tasks too) and the queue "
            "only grows. Check which groups should consume it and whether they run.",
            "playbooks/rollback.yml (one worker consuming every queue); then fix "
            "celery_workers_groups and run playbooks/deploy.yml",
        ),
        *_queue_rules(_queues(groups, settings, queues or []), t),
        _alert(
            "CeleryWorkerGroupDown",
            "((min by (host, group) (label_replace("
            f'{up}{{process=~"worker@.+",process!={single}}}, '
            '"group", "$1", "process", "worker@(.+)")) == 0) '
            "or (min by (host, group) (celery_group_up) == 0)) "
            f"unless on (host) ({up}{{process={single}}} == 1)",
            t["prometheus_alert_worker_down_for"],
            "critical",
            "Worker group {{ $labels.group }} is down on {{ $labels.host }}",
            "Worker group {{ $labels.group }} on {{ $labels.host }} does not run, or does not "
            "answer a ping consuming exactly its queues, and the host does not run rollback.yml's "
            f"single worker ({SINGLE_GROUP}) instead: its queues lose a consumer. Check the "
            "group's log and state on the host.",
            "playbooks/deploy.yml (starts the group and waits until it answers); "
            "playbooks/rollback.yml if the release is at fault",
        ),
        _alert(
            "CeleryWorkerRestartLoop",
            f'{restarts}{{process=~"worker@.+"}} > {t["prometheus_alert_restarts"]}',
            "0s",
            "critical",
            "{{ $labels.process }} restarted {{ $value }} times in 15 minutes on "
            "{{ $labels.host }}",
            "{{ $labels.process }} on {{ $labels.host }} keeps dying and being restarted: tasks "
            "it held come back at every restart, some may never finish. Read the last lines of "
            "its log on the host (an import error, a bad setting, memory).",
            "playbooks/rollback.yml -e celery_app_rollback_to_previous=true (the release before)",
        ),
        _alert(
            "CeleryBeatNotRunning",
            f'sum({up}{{process="beat"}}) < 1',
            t["prometheus_alert_beat_for"],
            "critical",
            "Beat runs on no host",
            "No host runs the app's beat: no periodic task is sent. Check beat on the host with "
            "celery_workers_beat_enabled: true.",
            "playbooks/deploy.yml (starts beat on the host celery_workers_beat_enabled names)",
        ),
        _alert(
            "CeleryBeatDuplicate",
            f'sum({up}{{process="beat"}}) > 1',
            t["prometheus_alert_beat_for"],
            "critical",
            "Beat runs on {{ $value }} hosts",
            "Beat runs on more than one host: every periodic task is sent that many times. "
            f'Find them with {up}{{process="beat"}} == 1 and stop beat on every host but the '
            "one with celery_workers_beat_enabled: true.",
            "stop beat on the extra hosts, then playbooks/deploy.yml",
        ),
        _alert(
            "CeleryTasksStranded",
            f"max(celery_unacked_oldest_age_seconds) > {stranded}",
            t["prometheus_alert_stranded_for"],
            "warning",
            "A task has been unacknowledged for {{ $value | humanizeDuration }}",
            f"The oldest unacknowledged task is older than {stranded} s (the layout's longest "
            "stop_timeout plus prometheus_alert_stranded_margin_seconds): the worker that took it "
            "probably died (kill -9, OOM, a lost VM), and kombu gives it back only after the "
            "visibility timeout.",
            "playbooks/recover.yml -e celery_recover_dry_run=true (list), then "
            "playbooks/recover.yml",
        ),
        _alert(
            "CeleryTaskFailureRate",
            f'sum(rate(flower_events_total{{type="task-failed"}}[{FAILURE_WINDOW}])) / '
            'sum(rate(flower_events_total{type=~"task-succeeded|task-failed"}'
            f"[{FAILURE_WINDOW}])) "
            f"> {t['prometheus_alert_failure_ratio']}",
            t["prometheus_alert_failure_for"],
            "warning",
            "{{ $value | humanizePercentage }} of tasks fail",
            f"More than {t['prometheus_alert_failure_ratio']} of the tasks that ended over "
            f"{FAILURE_WINDOW} failed (Flower's task events). Check the failures in Flower "
            "(Tasks, state FAILURE) and whether a new release brought them.",
            "playbooks/rollback.yml -e celery_app_rollback_to_previous=true if the newest release "
            "is at fault",
        ),
        _alert(
            "CeleryExporterDown",
            'min by (job, host) (up{job="celery"}) == 0 '
            "or min by (job, host) (celery_exporter_broker_up) == 0",
            t["prometheus_alert_exporter_down_for"],
            "warning",
            "The Celery exporter on {{ $labels.host }} does not report",
            "The Celery exporter on {{ $labels.host }} does not answer, or does not reach the "
            "broker: the queue, unacked and group alerts are blind there.",
            "playbooks/deploy.yml (starts the exporter); playbooks/verify.yml",
        ),
        _alert(
            "RedisDown",
            'min by (job, host) (redis_up) == 0 or min by (job, host) (up{job="redis"}) == 0',
            t["prometheus_alert_redis_down_for"],
            "critical",
            "The broker on {{ $labels.host }} is down",
            "Redis on {{ $labels.host }} does not answer: no task is sent or received. Queued "
            "tasks are kept in the append-only file. Check Redis's state and log on the host.",
            "playbooks/deploy.yml (the broker play starts Redis); then playbooks/verify.yml",
        ),
        _alert(
            "RedisMemoryHigh",
            "redis_memory_used_bytes / redis_memory_max_bytes "
            f"> {t['prometheus_alert_redis_memory_ratio']} and redis_memory_max_bytes > 0",
            t["prometheus_alert_redis_memory_for"],
            "critical",
            "The broker on {{ $labels.host }} uses {{ $value | humanizePercentage }} of its "
            "maxmemory",
            "Redis on {{ $labels.host }} nears its maxmemory: with noeviction it then refuses "
            "every publish (OOM command not allowed), and a worker refused its bookkeeping after "
            "a pop loses that task (docs/benchmarks.md). Find the queue that grows "
            "(playbooks/verify.yml).",
            "give Redis room at once (CONFIG SET maxmemory <larger>, as the admin user); then the "
            "same redis_maxmemory in the inventory and playbooks/deploy.yml; playbooks/recover.yml "
            "for what the dead workers stranded",
        ),
        _alert(
            "RedisAofError",
            "min by (job, host) (redis_aof_last_write_status) == 0 "
            "or min by (job, host) (redis_aof_last_bgrewrite_status) == 0",
            t["prometheus_alert_aof_for"],
            "critical",
            "The broker on {{ $labels.host }} cannot write its append-only file",
            "Redis on {{ $labels.host }} failed to write or rewrite its append-only file: a crash "
            "would lose the queued tasks since, and Redis refuses writes while the disk is full. "
            "Check the disk and Redis's log on the host.",
            "free the disk of the broker host, then playbooks/deploy.yml and playbooks/verify.yml",
        ),
    ]
    # stable order: the alerts of one name together, as ALERTS lists them
    alerts.sort(key=lambda rule: ALERTS.index(rule["alert"]))
    return {
        "groups": [
            {"name": "celery_toolkit_processes", "rules": _recording_rules(groups, settings)},
            {"name": "celery_toolkit_alerts", "rules": alerts},
        ]
    }


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def prometheus_setting_errors(host: str, hv: Mapping[str, Any]) -> list[Refusal]:
    """What the role prometheus's argument spec cannot say: durations Prometheus reads, counts of
    at least 0 (restarts: 1), ratios between 0 and 1, per-queue thresholds of known keys."""
    found: list[Refusal] = []
    for name in [*DURATION_SETTINGS, *THRESHOLDS]:
        if name not in hv:
            continue
        value, kind = hv[name], THRESHOLDS.get(name, "duration")
        number = _number(value)
        if kind == "duration" and not DURATION.match(str(value).strip() or "-"):
            found.append(
                (
                    name,
                    host,
                    f" is {value!r}, not a Prometheus duration: write a number with a unit, "
                    "largest first (30s, 5m, 1h30m; 0s for at once).",
                )
            )
        elif kind == "count" and (
            number is None or number < (1 if name.endswith("restarts") else 0)
        ):
            found.append(
                (
                    name,
                    host,
                    f" is {value!r}: give a number of at least {int(name.endswith('restarts'))}.",
                )
            )
        elif kind == "ratio" and (number is None or not 0 < number <= 1):
            found.append(
                (name, host, f" is {value!r}: give a share above 0 and at most 1 (0.8 = 80%).")
            )
    found += _listen_errors(host, hv)
    per_queue = hv.get("prometheus_alert_queue_thresholds", {})
    if not isinstance(per_queue, Mapping):
        per_queue = {"?": per_queue}
    for queue, own in per_queue.items():
        bad = not isinstance(own, Mapping) or set(own) - set(QUEUE_KEYS)
        bad = bad or any(_number(v) is None or _number(v) < 0 for v in own.values())
        if bad:
            found.append(
                (
                    "prometheus_alert_queue_thresholds",
                    host,
                    f" gives queue {queue!r} {own!r}: give each queue a mapping of backlog (tasks) "
                    "and/or age_seconds, numbers of at least 0 "
                    "({fast: {backlog: 100, age_seconds: 60}}).",
                )
            )
    return found


def _listen_errors(host: str, hv: Mapping[str, Any]) -> list[Refusal]:
    """prometheus_address is an IP address, prometheus_port a TCP port, prometheus_flower_ca_file
    a file on the controller (or "")."""
    found: list[Refusal] = []
    if "prometheus_address" in hv:
        address = str(hv["prometheus_address"])
        try:
            ipaddress.ip_address(address)
        except ValueError:
            found.append(
                (
                    "prometheus_address",
                    host,
                    f" is {address!r}, not an IP address: Prometheus listens on it. Give the "
                    "host's private address (10.0.0.20) or 127.0.0.1.",
                )
            )
    port = _number(hv.get("prometheus_port", 1))
    if "prometheus_port" in hv and (port is None or port != int(port) or not 1 <= port <= 65535):
        found.append(
            (
                "prometheus_port",
                host,
                f" is {hv['prometheus_port']!r}: give a TCP port, 1 to 65535.",
            )
        )
    ca = str(hv.get("prometheus_flower_ca_file") or "")
    if ca and not os.path.isfile(ca):
        found.append(
            (
                "prometheus_flower_ca_file",
                host,
                f" names {ca}, which is not a file on the controller: give the CA (PEM) that "
                "signed Flower's certificate, or leave it empty (the system's CAs).",
            )
        )
    return found


def prometheus_hosts(groups: Mapping[str, Iterable[str]]) -> list[str]:
    """The hosts whose prometheus_* settings count: the monitor hosts, else the first worker
    host (whose thresholds playbooks/monitoring.yml writes for a Prometheus of your own)."""
    return _hosts(groups, "monitor") or _hosts(groups, "celery_workers")[:1]


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {f.__name__: f for f in (celery_alert_rules, celery_scrape_configs)} | {
            "celery_prometheus_hosts": prometheus_hosts
        }
