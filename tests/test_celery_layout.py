"""The layout rules of plugins/filter/celery_layout.py, the settings rules of
celery_inventory.py and the runtime helpers of celery_runtime.py: each rule's pass and fail
path."""

import json

import pytest
from role_settings import fleet, settings

from celery_inventory import worker_setting_errors
from celery_layout import FilterModule, celery_group_errors, celery_layout_errors, layout_errors
from celery_runtime import FilterModule as RuntimeFilters
from celery_runtime import celery_route_queue, celery_single_layout

QUEUES = ["high", "default", "low"]
ROUTES = {"app.notify.*": "high", "app.bg.*": "default", "app.heavy.*": "low"}
SPLIT = [
    {"name": "fast", "queues": ["high", "default"]},
    {"name": "slow", "queues": ["low"]},
]
FULL_SPLIT = [
    {
        "name": "fast",
        "queues": ["high", "default"],
        "concurrency": 4,
        "pool": "prefork",
        "prefetch_multiplier": 4,
        "max_tasks_per_child": 1000,
        "max_memory_per_child": 262144,
        "stop_timeout": 120,
    },
    {
        "name": "slow",
        "queues": ["low"],
        "concurrency": 1,
        "pool": "prefork",
        "prefetch_multiplier": 1,
        "max_tasks_per_child": 100,
        "max_memory_per_child": 524288,
        "stop_timeout": 1920,
    },
]


def test_split_layout_is_sound():
    assert layout_errors({"vm1": SPLIT}, ["vm1"], QUEUES, ROUTES) == []


def test_routed_queue_without_consumer_is_named():
    errors = layout_errors({"vm1": SPLIT[:1]}, ["vm1"], QUEUES, ROUTES)
    assert len(errors) == 1
    assert "queue 'low' has no consumer" in errors[0]
    assert "app.heavy.*" in errors[0]


def test_route_to_undeclared_queue_is_named():
    errors = layout_errors({"vm1": SPLIT}, ["vm1"], QUEUES, {**ROUTES, "app.x": "urgent"})
    assert errors == [
        "celery_app_routes sends 'app.x' to queue 'urgent', which the app does not declare "
        "(celery_app_queues: high, default, low): fix the route or declare the queue."
    ]


def test_group_without_queues_is_named():
    idle = {**FULL_SPLIT[1], "name": "idle", "queues": []}
    # named once, by the rule on the group's own fields (the role's preflight runs it too)
    assert layout_errors({"vm1": [*SPLIT, idle]}, ["vm1"], QUEUES, ROUTES) == []
    errors = celery_group_errors([*FULL_SPLIT, idle], "vm1")
    assert errors == [
        "worker group 'idle' on vm1 consumes no queue: give it queues in celery_workers_groups "
        "or remove the group."
    ]


def test_group_consuming_undeclared_queue_is_named():
    layout = {"vm1": [{"name": "fast", "queues": ["high", "default", "hihg"]}, SPLIT[1]]}
    errors = layout_errors(layout, ["vm1"], QUEUES, ROUTES)
    assert len(errors) == 1
    assert "worker group 'fast' on vm1 consumes 'hihg'" in errors[0]


def test_two_beats_are_refused():
    layout = {"vm1": SPLIT, "vm2": SPLIT}
    errors = layout_errors(layout, ["vm2", "vm1"], QUEUES, ROUTES)
    assert errors == [
        "beat is enabled on 2 hosts (vm1, vm2): every periodic task would run that many times. "
        "Set celery_workers_beat_enabled: false on all of them but one."
    ]


def test_no_beat_is_refused():
    errors = layout_errors({"vm1": SPLIT}, [], QUEUES, ROUTES)
    assert len(errors) == 1
    assert errors[0].startswith("no host runs beat")


def test_consumers_may_be_spread_over_hosts():
    layout = {"vm1": SPLIT[:1], "vm2": SPLIT[1:]}
    assert layout_errors(layout, ["vm1"], QUEUES, ROUTES) == []


def test_ansible_entry_point_reads_each_hosts_settings():
    hostvars = {
        "vm1": {"celery_workers_groups": SPLIT},  # beat on: the role's default
        "vm2": {"celery_workers_groups": SPLIT[:1], "celery_workers_beat_enabled": "false"},
    }
    assert celery_layout_errors(["vm1", "vm2"], fleet(hostvars), QUEUES, ROUTES) == []
    hostvars["vm2"]["celery_workers_beat_enabled"] = True
    errors = celery_layout_errors(["vm1", "vm2"], fleet(hostvars), QUEUES, ROUTES)
    assert errors and "beat is enabled on 2 hosts (vm1, vm2)" in errors[0]


def test_a_typo_in_a_groups_queue_is_said_once_for_every_host():
    layout = {f"vm{n}": [{"name": "fast", "queues": ["high", "hihg"]}, *SPLIT] for n in (1, 2, 3)}
    errors = layout_errors(layout, ["vm1"], QUEUES, ROUTES)
    assert errors == [
        "worker group 'fast' on vm1, vm2 and vm3 consumes 'hihg', not declared by the app "
        "(celery_app_queues: high, default, low): fix the queue name in celery_workers_groups or "
        "declare the queue."
    ]


@pytest.mark.parametrize(
    ("task", "queue"),
    [("app.notify.sms", "high"), ("app.heavy.scrape", "low"), ("app.other", "default")],
)
def test_route_queue_first_match(task, queue):
    assert celery_route_queue(task, ROUTES) == queue


def test_single_layout_consumes_every_declared_queue():
    single = celery_single_layout(FULL_SPLIT, QUEUES)
    assert single == [
        {
            "name": "all",
            "queues": ["high", "default", "low"],
            "concurrency": 5,
            "pool": "prefork",
            "prefetch_multiplier": 1,
            "max_tasks_per_child": 100,
            "max_memory_per_child": 524288,
            "stop_timeout": 1920,
        }
    ]
    assert layout_errors({"vm1": single}, ["vm1"], QUEUES, ROUTES) == []


def test_single_layout_needs_a_split_layout_and_queues():
    with pytest.raises(ValueError, match="celery_workers_groups is empty"):
        celery_single_layout([], QUEUES)
    with pytest.raises(ValueError, match="celery_app_queues is empty"):
        celery_single_layout(FULL_SPLIT, [])


def test_filters_are_registered():
    assert set(FilterModule().filters()) == {
        "celery_group_errors",
        "celery_layout_errors",
        "celery_app_report_errors",
    }
    assert set(RuntimeFilters().filters()) == {
        "celery_route_queue",
        "celery_single_layout",
        "celery_private_addresses",
        "celery_health_report",
        "celery_status_lines",
        "celery_status_ok",
    }


def test_private_addresses_prefer_the_inventory_then_facts():
    from celery_runtime import celery_private_addresses

    hostvars = {
        "a": {"celery_private_address": "10.0.0.5", "ansible_facts": {}},
        "b": {"ansible_facts": {"default_ipv4": {"address": "10.0.0.6"}}},
        "c": {
            "ansible_host": "10.0.0.7",
            "ansible_facts": {"default_ipv4": {"address": "1.2.3.4"}},
        },
        "d": {
            "ansible_host": "vm-d.example.internal",
            "ansible_facts": {"default_ipv4": {"address": "10.0.0.8"}},
        },
    }
    assert celery_private_addresses(["a", "b", "c", "d"], hostvars) == [
        "10.0.0.5",
        "10.0.0.6",
        "10.0.0.7",
        "10.0.0.8",
    ]
    with pytest.raises(ValueError, match="set celery_private_address for it"):
        celery_private_addresses(["c"], {"c": {"ansible_facts": {}}})


@pytest.mark.parametrize("batch", [1, 3, "2", "25%", "100%", [1, "50%", "100%"]])
def test_rolling_batch_accepts_hosts_percentages_and_lists(batch):
    from celery_inventory import batch_errors

    assert batch_errors(batch) == []


@pytest.mark.parametrize("batch", [0, -1, "0%", "150%", "two", True, None, [], [1, 0], 1.5])
def test_rolling_batch_refuses_what_serial_would_choke_on(batch):
    from celery_inventory import batch_errors

    assert batch_errors(batch) == [
        "celery_deploy_batch must be a number of hosts (1 or more), a percentage from '1%' to "
        f"'100%', or a list of those; got {batch!r}: set it in group_vars/all (1 = one host at "
        "a time, the safest rolling restart)"
    ]


def test_health_report_names_the_group_its_state_and_its_log():
    from celery_process import celery_systemd_described
    from celery_runtime import celery_health_report

    state = {
        "item": "worker@mail",
        "stdout_lines": ["ActiveState=activating", "SubState=auto-restart", "NRestarts=7"],
    }
    log = {"stdout_lines": ["Traceback (most recent call last):", "ModuleNotFoundError: gevent"]}
    described = celery_systemd_described([(state, log)])
    assert described[0]["running"] is False
    assert celery_health_report(described, "vm1", 60) == [
        "worker group 'mail' on vm1 does not answer a ping with its queues within 60 s "
        "(celery_workers_health_timeout): systemd says activating (auto-restart), restarted 7 "
        "times. Last lines of its log:",
        "  | Traceback (most recent call last):",
        "  | ModuleNotFoundError: gevent",
    ]
    beat = celery_systemd_described(
        [({"item": "beat", "stdout_lines": ["ActiveState=failed"]}, {})]
    )
    assert celery_health_report(beat, "vm1", 6) == [
        "beat on vm1 did not stay active for 6 s: systemd says failed (?), restarted ? times. "
        "Last lines of its log:",
        "  | (empty)",
    ]


def test_systemd_description_keeps_the_last_six_log_lines_and_sees_a_running_unit():
    from celery_process import celery_systemd_described

    state = {
        "item": "beat",
        "stdout_lines": ["ActiveState=active", "SubState=running", "NRestarts=0"],
    }
    log = {"stdout_lines": [f"line {n}" for n in range(10)]}
    (beat,) = celery_systemd_described([(state, log)])
    assert beat["running"] is True
    assert beat["restarts"] == "0"
    assert beat["log"] == [f"line {n}" for n in range(4, 10)]


def test_systemd_description_leaves_out_systemds_job_messages_of_a_crash_loop():
    """Read when a crash-looping unit has just been started again: systemd's five job messages
    since the crash would push the traceback out of the last six lines (seen in CI)."""
    from celery_process import celery_systemd_described

    def entry(message, message_id=None):
        return json.dumps({"MESSAGE": message} | ({"MESSAGE_ID": message_id} if message_id else {}))

    crash = [
        entry("Traceback (most recent call last):"),
        entry("ModuleNotFoundError: No module named 'gevent'"),
        entry(
            "x.service: Main process exited, code=exited, status=1/FAILURE",
            "98e322203f7a4ed290d09fe03c09fe15",
        ),
        entry("x.service: Failed with result 'exit-code'.", "d9b373ed55a64feb8242e02dbe79a49c"),
        entry("x.service: Consumed 1.2s CPU time.", "ae8f7b866b0347b9af31fe1c80b127c0"),
    ]
    restart = [
        entry(
            "x.service: Scheduled restart job, restart counter is at 3.",
            "5eb03494b6584870a536b337290809b3",
        ),
        entry("Stopped x.service.", "9d1aaa27d60140bd96365438aad20286"),
        entry("Starting x.service...", "7d4958e842da4a758f6c1cdc7b36dcc5"),
        entry("Started x.service.", "39f53479d3a045ac8e11786248231fbf"),
    ]
    state = {"item": "worker@all", "stdout_lines": ["ActiveState=active", "SubState=running"]}
    log = {"stdout_lines": [entry("an older run")] * 3 + crash + restart}
    (worker,) = celery_systemd_described([(state, log)])
    assert worker["log"] == [
        "an older run",
        "an older run",
        "Traceback (most recent call last):",
        "ModuleNotFoundError: No module named 'gevent'",
        "x.service: Main process exited, code=exited, status=1/FAILURE",
        "x.service: Failed with result 'exit-code'.",
    ]
    # a message in bytes that are not UTF-8, and one over two lines
    log = {"stdout_lines": [json.dumps({"MESSAGE": [104, 105, 255]}), entry("a\nb")]}
    (worker,) = celery_systemd_described([(state, log)])
    assert worker["log"] == ["hi\ufffd", "a", "b"]


def test_status_table_keeps_rows_and_says_why_a_check_gave_none():
    from celery_runtime import celery_status_lines, celery_status_ok

    good = {"stdout": '{"ok": true, "lines": ["worker fast@vm1 pong queues high"]}', "rc": 0}
    bad = {"stdout": '{"ok": false, "lines": ["probe  low  ran on none   EXPECTED slow"]}'}
    crashed = {"stdout": "", "rc": 1, "stderr_lines": ["Traceback ...", "KeyError: 'CELERY_APP'"]}
    assert celery_status_lines([good, bad, crashed]) == [
        "worker fast@vm1 pong queues high",
        "probe  low  ran on none   EXPECTED slow",
        "status check failed: KeyError: 'CELERY_APP'",
    ]
    assert celery_status_ok([good]) is True
    assert celery_status_ok([good, bad]) is False
    assert celery_status_ok([crashed]) is False


@pytest.mark.parametrize("manager", ["systemd", "supervisor"])
def test_process_manager_systemd_and_supervisor_are_accepted(manager):
    assert worker_setting_errors("vm1", settings(celery_process_manager=manager)) == []


def test_supervisor_refuses_a_setting_only_systemd_applies():
    hv = settings(celery_process_manager="supervisor", celery_app_memory_deny_write_execute=True)
    ((var, host, problem),) = worker_setting_errors("vm1", hv)
    assert (var, host) == ("celery_app_memory_deny_write_execute", "vm1")
    assert problem.startswith(" is true, where celery_process_manager is 'supervisor'")
    hv["celery_process_manager"] = "systemd"
    assert worker_setting_errors("vm1", hv) == []


@pytest.mark.parametrize("timeout", [0, -5, "0"])
def test_a_health_timeout_below_one_second_is_refused(timeout):
    ((var, host, problem),) = worker_setting_errors(
        "vm1", settings(celery_workers_health_timeout=timeout)
    )
    assert (var, host) == ("celery_workers_health_timeout", "vm1")
    assert problem.startswith(f" is {timeout!r}: a worker group would have no time")
    assert worker_setting_errors("vm1", settings(celery_workers_health_timeout=1)) == []
    # not a number: the argument spec (type int) names it, the rule does not crash on it
    assert worker_setting_errors("vm1", settings(celery_workers_health_timeout="soon")) == []


def test_supervisor_status_lines_become_states_per_process():
    from celery_process import celery_supervisor_described, celery_supervisor_status

    lines = [
        "shop-worker-main                 RUNNING   pid 812, uptime 0:03:10",
        "shop-beat                        BACKOFF   Exited too quickly (process log may have "
        "details)",
        "shop-worker-mail: ERROR (no such process)",
    ]
    status = celery_supervisor_status(lines, "shop", ["worker@main", "beat", "worker@mail"])
    assert status["worker@main"] == {
        "process": "worker@main",
        "state": "RUNNING",
        "detail": "pid 812, uptime 0:03:10",
    }
    assert status["beat"]["state"] == "BACKOFF"
    assert status["worker@mail"]["state"] == "UNKNOWN"
    described = celery_supervisor_described(
        [(status["worker@main"], {"stdout_lines": ["a"]}), (status["beat"], {})]
    )
    assert [d["running"] for d in described] == [True, False]
    assert described[0]["instance"] == "812"
    assert described[1]["instance"] == ""


def test_supervisor_program_names():
    from celery_process import celery_supervisor_program

    assert celery_supervisor_program("worker@fast", "refapp") == "refapp-worker-fast"
    assert celery_supervisor_program("beat", "refapp") == "refapp-beat"
    assert celery_supervisor_program("flower", "refapp") == "refapp-flower"


def test_health_report_under_supervisor_says_what_supervisord_says():
    from celery_process import celery_supervisor_described
    from celery_runtime import celery_health_report

    status = {"process": "worker@all", "state": "BACKOFF", "detail": "Exited too quickly"}
    described = celery_supervisor_described([(status, {"stdout_lines": ["ImportError: x"]})])
    assert celery_health_report(described, "vm1", 60) == [
        "worker group 'all' on vm1 does not answer a ping with its queues within 60 s "
        "(celery_workers_health_timeout): supervisor says BACKOFF (Exited too quickly). "
        "Last lines of its log:",
        "  | ImportError: x",
    ]


def test_supervisor_pids_tell_which_programs_did_not_restart():
    from celery_process import (
        celery_supervisor_not_restarted,
        celery_supervisor_pids,
        celery_supervisor_status,
    )

    def status(lines):
        return celery_supervisor_status(lines, "shop", ["worker@main", "worker@mail", "beat"])

    before = celery_supervisor_pids(
        status(
            [
                "shop-worker-main   RUNNING   pid 10, uptime 0:01:00",
                "shop-worker-mail   RUNNING   pid 11, uptime 0:01:00",
                "shop-beat          STOPPED   Nov 26 09:00 AM",
            ]
        )
    )
    assert before == {"worker@main": "10", "worker@mail": "11", "beat": ""}
    after = status(
        [
            "shop-worker-main   RUNNING   pid 20, uptime 0:00:01",
            "shop-worker-mail   RUNNING   pid 11, uptime 0:01:05",
            "shop-beat          STOPPED   Nov 26 09:00 AM",
        ]
    )
    assert celery_supervisor_not_restarted(after, before) == ["worker@mail", "beat"]


def test_a_renamed_variable_is_refused_naming_its_successor():
    hv = settings(celery_workers_memory_deny_write_execute=True)
    assert worker_setting_errors("vm1", hv) == [
        (
            "celery_workers_memory_deny_write_execute",
            "vm1",
            " is set but the toolkit no longer reads it: set celery_app_memory_deny_write_execute "
            "(it now hardens every service of the app, Flower too).",
        )
    ]
    assert worker_setting_errors("vm1", settings(celery_app_memory_deny_write_execute=True)) == []


# issue 21: releases kept, log bounds
@pytest.mark.parametrize("keep", [0, 1, "1"])
def test_keeping_fewer_than_two_releases_is_refused(keep):
    ((var, host, problem),) = worker_setting_errors("vm1", settings(celery_app_keep_releases=keep))
    assert (var, host) == ("celery_app_keep_releases", "vm1")
    assert problem.startswith(f" is {int(keep)}: a host whose new release fails the health gate")
    assert "Set it to 2 or more" in problem
    assert worker_setting_errors("vm1", settings(celery_app_keep_releases=2)) == []


@pytest.mark.parametrize(
    "var, good",
    [
        ("celery_app_journal_max_use", ["1G", "512M", "100K", "2T", "1048576"]),
        ("celery_app_log_rate_limit_interval", ["30s", "1min", "500ms", "10", "2h"]),
        ("celery_app_log_max_bytes", ["50MB", "50mb", "1GB", "100KB", "1048576"]),
    ],
)
def test_log_bounds_accept_what_journald_systemd_and_supervisord_read(var, good):
    for value in good:
        assert worker_setting_errors("vm1", settings(**{var: value})) == [], value


@pytest.mark.parametrize(
    "var, bad, expected",
    [
        ("celery_app_journal_max_use", "1 GB", "a size journald reads, above 0"),
        ("celery_app_journal_max_use", "0", "a size journald reads, above 0"),
        ("celery_app_journal_max_use", "10%", "a size journald reads, above 0"),
        ("celery_app_log_rate_limit_interval", "0", "a time span systemd reads, above 0"),
        ("celery_app_log_rate_limit_interval", "30 seconds", "a time span systemd reads"),
        ("celery_app_log_max_bytes", "50M", "a size supervisord reads, above 0"),
        ("celery_app_log_max_bytes", "0", "a size supervisord reads, above 0"),
        ("celery_app_log_max_bytes", True, "a size supervisord reads, above 0"),
        ("celery_app_log_rate_limit_burst", 0, "give at least 1 message per interval"),
        ("celery_app_log_backups", -1, "0 or more (5, the default)"),
    ],
)
def test_log_bounds_refuse_what_would_not_read_or_lifts_the_bound(var, bad, expected):
    ((name, host, problem),) = worker_setting_errors("vm1", settings(**{var: bad}))
    assert (name, host) == (var, "vm1")
    assert expected in problem


def test_log_bounds_of_the_defaults_are_sound():
    assert worker_setting_errors("vm1", settings()) == []
