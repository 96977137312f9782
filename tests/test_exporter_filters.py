"""issue 20: exporters. What node_exporter collects of the app's processes under each process
manager (the seam's filter celery_process_node_exporter), and the rules validate.yml runs on the
exporters' variables (celery_inventory.package_exporter_errors)."""

from __future__ import annotations

import re

import pytest
from role_settings import fleet

from celery_inventory import celery_inventory_errors
from celery_process import celery_process_node_exporter, celery_process_unit_pattern


def include(app: str) -> re.Pattern[str]:
    """The pattern as node_exporter 1.5 compiles --collector.systemd.unit-include
    (collector/systemd_linux.go: regexp.MustCompile(fmt.Sprintf("^(?:%s)$", ...)))."""
    option = next(
        a
        for a in celery_process_node_exporter("systemd", app)["args"]
        if a.startswith("--collector.systemd.unit-include=")
    )
    return re.compile(f"^(?:{option.split('=', 1)[1]})$")


@pytest.mark.parametrize(
    "unit",
    [
        "refapp-worker@fast.service",
        "refapp-worker@slow.service",
        "refapp-worker@single.service",
        "refapp-worker@a_b-9.service",
        "refapp-beat.service",
        "refapp-flower.service",
        "refapp-exporter.service",
    ],
)
def test_the_systemd_collector_reads_the_apps_units(unit):
    assert include("refapp").match(unit)


@pytest.mark.parametrize(
    "unit",
    [
        "refapp.target",
        "refapp-worker@.service",  # the template itself
        "refapp-worker@fast.service.d",
        "refapp-worker@Fast.service",
        "refapp-beat.timer",
        "refapp-beatx.service",
        "xrefapp-beat.service",
        "other-worker@fast.service",
        "refappXworker@fast.service",
        "redis-server.service",
        "supervisor.service",
        "prometheus-node-exporter.service",
        "refapp-worker@fast.serviceX",
        "refapp-worker@fast.service\nrefapp-beat.service",
        "refapp-worker@" + "a" * 33 + ".service",
    ],
)
def test_the_systemd_collector_reads_nothing_else(unit):
    assert not include("refapp").match(unit)


def test_an_app_name_with_pattern_characters_is_literal():
    assert include("shop_2").match("shop_2-beat.service")
    # the app name's characters are literal: a dot or a plus would be escaped
    assert celery_process_unit_pattern("a.b+c").startswith("a\\.b\\+c-")
    assert not re.fullmatch(celery_process_unit_pattern("a.b"), "aXb-beat.service")


def test_the_systemd_collector_counts_restarts_and_is_one_word_per_option():
    args = celery_process_node_exporter("systemd", "refapp")["args"]
    assert "--collector.systemd" in args
    assert "--collector.systemd.enable-restarts-metrics" in args
    # Debian's unit splits ARGS at spaces
    assert all(" " not in a for a in args)
    assert celery_process_node_exporter("systemd", "refapp")["access"] is False


def test_supervisor_hosts_read_supervisords_socket():
    settings = celery_process_node_exporter("supervisor", "refapp")
    assert settings["args"] == [
        "--collector.supervisord",
        "--collector.supervisord.url=unix:///run/supervisor.sock",
    ]
    assert settings["access"] is True
    assert settings["socket"] == "/run/supervisor.sock"


@pytest.mark.parametrize("manager", ["systemd", "supervisor"])
def test_a_host_that_runs_no_process_of_the_app_gets_no_process_collector(manager):
    assert celery_process_node_exporter(manager, "refapp", False) == {"args": [], "access": False}


def test_an_unknown_manager_is_refused():
    with pytest.raises(Exception, match="celery_process_manager is 'runit'"):
        celery_process_node_exporter("runit", "refapp")


GROUPS = {"broker": ["vm1"], "celery_workers": ["vm1"], "flower": ["vm1"]}
SOUND = {
    "redis_password": "a-real-broker-secret-0123456789",
    "redis_default_user_enabled": True,
    "celery_app_broker_url": "redis://:a-real-broker-secret-0123456789@127.0.0.1:6379/0",
    "flower_basic_auth_user": "ops",
    "flower_basic_auth_password": "a-real-flower-secret-42",
    "redis_exporter_password": "a-real-exporter-secret-0123",
}


def errors(**changes):
    return celery_inventory_errors(GROUPS, fleet({"vm1": {**SOUND, **changes}}))


def test_a_sound_fleet_with_exporters_passes():
    assert errors() == []


def test_exporters_switched_off_need_no_password():
    assert errors(redis_exporter_enabled=False, redis_exporter_password="") == []


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"redis_exporter_password": ""}, "redis_exporter_password on vm1 is empty"),
        ({"redis_exporter_password": "short"}, "redis_exporter_password on vm1 is too short"),
        ({"redis_exporter_user": "default"}, "redis_exporter_user on vm1 is 'default'"),
        (
            {"redis_acl_users": [{"name": "redis-exporter", "password": "x" * 20}]},
            "redis_exporter_user on vm1 is 'redis-exporter'",
        ),
        (
            {"redis_exporter_port": 9100},
            "redis_exporter_port on vm1 is 9100, which node_exporter_port",
        ),
        ({"node_exporter_port": 5555}, "node_exporter_port on vm1 is 5555, which flower_port"),
        ({"node_exporter_address": "::1"}, None),
        ({"redis_firewall_monitor_allowed": ["10.0.0.0/24", "fd00::9"]}, None),
        ({"node_exporter_extra_args": ["--no-collector.wifi"]}, None),
        ({"node_exporter_extra_args": ["-x"]}, "node_exporter_extra_args on vm1 holds '-x'"),
    ],
)
def test_exporter_rules(changes, message):
    found = errors(**changes)
    if message is None:
        assert found == []
    else:
        assert any(e.startswith(message) for e in found), found
