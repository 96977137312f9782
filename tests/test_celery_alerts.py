"""plugins/filter/celery_alerts.py: the scrape configuration and the rule file generated from the
inventory's settings, and the refusals of the role prometheus's variables. promtool runs the
generated rules in tests/test_promtool.py."""

from __future__ import annotations

import copy

import pytest
from ansible_collections.celery_toolkit.stack.plugins.filter.celery_alerts import (
    ALERTS,
    PROMETHEUS_SETTINGS,
    AnsibleFilterError,
    celery_alert_rules,
    celery_scrape_configs,
    prometheus_hosts,
    prometheus_setting_errors,
)
from ansible_collections.celery_toolkit.stack.plugins.filter.celery_inventory import (
    celery_inventory_errors,
)
from ansible_collections.celery_toolkit.stack.plugins.filter.celery_process import (
    celery_process_restarts_promql,
    celery_process_up_promql,
)
from test_promtool import fleet


def rules_by_alert(rule_file):
    found = {}
    for group in rule_file["groups"]:
        for rule in group["rules"]:
            found.setdefault(rule.get("alert") or rule["record"], []).append(rule)
    return found


def test_every_alert_of_the_contract_is_generated_with_severity_and_annotations():
    groups, hosts, queues = fleet()
    found = rules_by_alert(celery_alert_rules(groups, hosts, queues))
    assert set(ALERTS) <= set(found)
    for name in ALERTS:
        for rule in found[name]:
            assert rule["labels"]["severity"] in ("critical", "warning"), name
            notes = rule["annotations"]
            assert notes["summary"] and notes["description"], name
            assert "playbooks/" in notes["runbook"] or "stop beat" in notes["runbook"], name


def test_queue_rules_cover_the_layout_and_the_apps_queues_with_per_queue_thresholds():
    groups, hosts, _ = fleet()
    found = rules_by_alert(celery_alert_rules(groups, hosts, ["high", "low", "mail"]))
    backlog = {r["labels"]["queue"]: r["expr"] for r in found["CeleryQueueBacklog"]}
    # the layout's queues first, then a queue only the app's routes name
    assert list(backlog) == ["high", "default", "low", "mail"]
    assert backlog["high"].endswith("> 10")  # prometheus_alert_queue_thresholds
    assert backlog["default"].endswith("> 1000")  # prometheus_alert_queue_backlog
    age = {r["labels"]["queue"]: r["expr"] for r in found["CeleryQueueOldestMessageTooOld"]}
    assert age["high"].endswith("> 30") and age["low"].endswith("> 600")


def test_stranded_is_the_longest_stop_timeout_plus_the_margin():
    groups, hosts, queues = fleet()
    hosts["worker-1"]["prometheus_alert_stranded_margin_seconds"] = 60  # not the monitor host
    hosts["monitor-1"]["prometheus_alert_stranded_margin_seconds"] = 45
    (rule,) = rules_by_alert(celery_alert_rules(groups, hosts, queues))["CeleryTasksStranded"]
    assert rule["expr"] == "max(celery_unacked_oldest_age_seconds) > 645"


def test_process_rules_follow_each_hosts_manager_and_look_for_beat_everywhere():
    groups, hosts, queues = fleet()
    recorded = rules_by_alert(celery_alert_rules(groups, hosts, queues))["celery:process_up"]
    by_host = {}
    for rule in recorded:
        by_host.setdefault(rule["labels"]["host"], []).append(rule["labels"]["process"])
    assert by_host == {
        # rollback.yml's single worker (worker@all) is looked for too
        "worker-1": ["worker@fast", "worker@all", "beat", "flower", "exporter"],
        "worker-2": ["worker@slow", "worker@all", "beat", "exporter"],
    }
    exprs = {(r["labels"]["host"], r["labels"]["process"]): r["expr"] for r in recorded}
    assert 'name="refapp-worker@fast.service"' in exprs["worker-1", "worker@fast"]
    assert (
        'node_supervisord_up{job="node",host="worker-2",name="refapp-worker-slow"}'
        in (exprs["worker-2", "worker@slow"])
    )


def test_a_host_without_node_exporter_gets_no_process_rules():
    groups, hosts, queues = fleet()
    hosts["worker-2"]["node_exporter_enabled"] = False
    recorded = rules_by_alert(celery_alert_rules(groups, hosts, queues))["celery:process_up"]
    assert {r["labels"]["host"] for r in recorded} == {"worker-1"}


def test_the_seams_promql_per_manager():
    assert celery_process_up_promql("systemd", "shop", "beat", "vm1") == (
        'max by (host) (node_systemd_unit_state{job="node",host="vm1",name="shop-beat.service",'
        'state="active"}) or on (host) (0 * max by (host) (up{job="node",host="vm1"}))'
    )
    assert "changes(node_supervisord_start_time_seconds" in celery_process_restarts_promql(
        "supervisor", "shop", "worker@main", "vm1"
    )
    assert 'name="shop-worker-main"' in celery_process_restarts_promql(
        "supervisor", "shop", "worker@main", "vm1"
    )
    with pytest.raises(AnsibleFilterError, match="celery_process_manager is 'runit'"):
        celery_process_up_promql("runit", "shop", "beat", "vm1")


def test_label_values_are_quoted():
    assert 'host="a\\"b"' in celery_process_up_promql("systemd", "shop", "beat", 'a"b')


def test_scrape_configs_one_job_per_exporter_labelled_by_host():
    groups, hosts, _ = fleet()
    configs = {c["job_name"]: c for c in celery_scrape_configs(groups, hosts)}
    assert list(configs) == ["node", "redis", "celery", "flower"]
    assert configs["node"]["static_configs"] == [
        {"targets": ["10.0.0.10:9100"], "labels": {"host": "broker-1"}},
        {"targets": ["10.0.0.11:9100"], "labels": {"host": "worker-1"}},
        {"targets": ["10.0.0.12:9100"], "labels": {"host": "worker-2"}},
    ]
    assert [s["labels"]["host"] for s in configs["redis"]["static_configs"]] == ["broker-1"]
    assert [s["labels"]["host"] for s in configs["celery"]["static_configs"]] == [
        "worker-1",
        "worker-2",
    ]
    # Flower's /metrics needs no basic auth (Flower 2.2's Metrics handler): no secret here
    assert configs["flower"] == {
        "job_name": "flower",
        "metrics_path": "/metrics",
        "scheme": "http",
        "static_configs": [{"targets": ["127.0.0.1:5555"], "labels": {"host": "worker-1"}}],
    }
    assert "basic_auth" not in str(configs)


def test_disabled_exporters_are_left_out_and_ipv6_is_bracketed():
    groups, hosts, _ = fleet()
    hosts["broker-1"]["redis_exporter_enabled"] = False
    hosts["worker-1"]["node_exporter_address"] = "fd00::11"
    configs = {c["job_name"]: c for c in celery_scrape_configs(groups, hosts)}
    assert "redis" not in configs
    assert configs["node"]["static_configs"][1]["targets"] == ["[fd00::11]:9100"]


def test_flower_over_https_with_its_ca():
    groups, hosts, _ = fleet()
    hosts["worker-1"]["flower_tls_cert_file"] = "files/tls/flower.pem"
    hosts["worker-1"]["flower_address"] = "0.0.0.0"
    (flower,) = [
        c
        for c in celery_scrape_configs(groups, hosts, "/etc/prometheus/flower-ca.pem")
        if c["job_name"] == "flower"
    ]
    assert flower["scheme"] == "https"
    assert flower["tls_config"] == {"ca_file": "/etc/prometheus/flower-ca.pem"}
    # every interface: scraped at the host's private address
    assert flower["static_configs"][0]["targets"] == ["10.0.0.11:5555"]


def test_missing_settings_name_the_variable_and_validate_yml():
    groups, hosts, queues = fleet()
    del hosts["worker-2"]["node_exporter_port"]
    with pytest.raises(
        AnsibleFilterError, match="node_exporter_port is not among worker-2's settings"
    ):
        celery_scrape_configs(groups, hosts)
    groups, hosts, queues = fleet()
    del hosts["monitor-1"]["prometheus_alert_beat_for"]
    with pytest.raises(
        AnsibleFilterError, match="prometheus_alert_beat_for is not among monitor-1's"
    ):
        celery_alert_rules(groups, hosts, queues)


def test_bad_thresholds_are_refused_by_the_filter_too():
    groups, hosts, queues = fleet()
    hosts["monitor-1"]["prometheus_alert_restarts"] = 0
    with pytest.raises(
        AnsibleFilterError, match="prometheus_alert_restarts is 0: give a number of at least 1"
    ):
        celery_alert_rules(groups, hosts, queues)


def test_the_thresholds_come_from_the_monitor_host_else_the_first_worker():
    assert prometheus_hosts({"monitor": ["m1", "m2"], "celery_workers": ["w1"]}) == ["m1", "m2"]
    assert prometheus_hosts({"monitor": [], "celery_workers": ["w1", "w2"]}) == ["w1"]
    assert prometheus_hosts({"broker": ["b1"]}) == []


BAD = [
    ("prometheus_scrape_interval", "15 seconds", "not a Prometheus duration"),
    ("prometheus_evaluation_interval", "", "not a Prometheus duration"),
    ("prometheus_retention", "15D", "not a Prometheus duration"),
    ("prometheus_alert_no_consumer_for", "2m30", "not a Prometheus duration"),
    ("prometheus_alert_queue_backlog_for", "m", "not a Prometheus duration"),
    ("prometheus_alert_queue_age_for", "-1m", "not a Prometheus duration"),
    ("prometheus_alert_worker_down_for", "2 minutes", "not a Prometheus duration"),
    ("prometheus_alert_beat_for", "s2", "not a Prometheus duration"),
    ("prometheus_alert_stranded_for", "1h 5m", "not a Prometheus duration"),
    ("prometheus_alert_failure_for", "10min", "not a Prometheus duration"),
    ("prometheus_alert_exporter_down_for", "5m1h", "not a Prometheus duration"),
    ("prometheus_alert_redis_down_for", "1.5m", "not a Prometheus duration"),
    ("prometheus_alert_redis_memory_for", "soon", "not a Prometheus duration"),
    ("prometheus_alert_aof_for", "now", "not a Prometheus duration"),
    ("prometheus_alert_queue_backlog", -1, "at least 0"),
    ("prometheus_alert_queue_age_seconds", "old", "at least 0"),
    ("prometheus_alert_stranded_margin_seconds", -5, "at least 0"),
    ("prometheus_alert_restarts", 0, "at least 1"),
    ("prometheus_alert_failure_ratio", 0, "above 0 and at most 1"),
    ("prometheus_alert_redis_memory_ratio", 80, "above 0 and at most 1"),
    ("prometheus_alert_redis_memory_ratio", True, "above 0 and at most 1"),
    ("prometheus_alert_queue_thresholds", {"high": {"age": 3}}, "backlog (tasks)"),
    ("prometheus_alert_queue_thresholds", {"high": {"backlog": "many"}}, "backlog (tasks)"),
    ("prometheus_alert_queue_thresholds", {"high": 10}, "backlog (tasks)"),
    ("prometheus_alert_queue_thresholds", ["high"], "backlog (tasks)"),
    ("prometheus_address", "monitor.example", "not an IP address"),
    ("prometheus_port", 0, "give a TCP port"),
    ("prometheus_port", "http", "give a TCP port"),
    ("prometheus_flower_ca_file", "/nonexistent/ca.pem", "not a file on the controller"),
]


@pytest.mark.parametrize(("name", "value", "why"), BAD, ids=[f"{n}={v!r}" for n, v, _ in BAD])
def test_each_bad_setting_is_refused_naming_the_variable(name, value, why):
    _, hosts, _ = fleet()
    hv = {**hosts["monitor-1"], name: value}
    found = prometheus_setting_errors("monitor-1", hv)
    assert [(var, host) for var, host, _ in found] == [(name, "monitor-1")]
    assert why in found[0][2]


def test_every_prometheus_variable_with_a_rule_has_a_case():
    tried = {name for name, _, _ in BAD}
    assert set(PROMETHEUS_SETTINGS) | {"prometheus_alert_queue_thresholds"} <= tried


@pytest.mark.parametrize("value", ["0", "0s", "15s", "1h30m", "1w", "500ms", "2d12h"])
def test_sound_durations_pass(value):
    _, hosts, _ = fleet()
    assert (
        prometheus_setting_errors("m", {**hosts["monitor-1"], "prometheus_alert_beat_for": value})
        == []
    )


def test_the_inventory_rules_check_the_monitor_hosts_settings():
    groups, hosts, _ = fleet()
    settings = copy.deepcopy(hosts)
    settings["monitor-1"]["prometheus_alert_failure_ratio"] = 2
    settings["worker-1"]["prometheus_alert_failure_ratio"] = 3  # not where the thresholds count
    messages = [m for m in celery_inventory_errors(groups, settings) if "failure_ratio" in m]
    assert messages == [
        "prometheus_alert_failure_ratio on monitor-1 is 2: give a share above 0 and at most 1 "
        "(0.8 = 80%)."
    ]
