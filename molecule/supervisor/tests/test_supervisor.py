"""The stack under supervisord, as its user sees it: programs, warm stops, verify.yml, the
incident rollback and the return under load, and switches of process manager under load.

The tests run in file order and share the deployed host."""

import re

import pytest

from load import assert_exactly_once, playbook, switch_under_load

HOST = "celery-toolkit-supervisor"
PROGRAMS = ["refapp-worker-fast", "refapp-worker-slow", "refapp-beat", "refapp-flower"]
FIGURES = "supervisor-figures.json"


def programs(host):
    """supervisorctl status: program -> state."""
    out = host.run("supervisorctl status").stdout
    return {line.split()[0]: line.split()[1] for line in out.splitlines() if line.strip()}


def app_units(host):
    """The app's systemd units that systemd knows of (loaded or with a file)."""
    out = host.check_output("systemctl list-unit-files --no-legend 'refapp*' 'refapp-*' || true")
    return sorted(line.split()[0] for line in out.splitlines() if line.strip())


def test_every_process_is_a_running_program_and_no_unit_of_the_app_exists(host):
    assert programs(host) == dict.fromkeys(PROGRAMS, "RUNNING")
    assert host.service("supervisor").is_enabled
    assert app_units(host) == []


def test_programs_stop_warmly_with_the_groups_stop_timeout(host):
    slow = host.file("/etc/supervisor/conf.d/refapp-worker-slow.conf").content_string
    assert "stopasgroup=false" in slow
    assert "stopsignal=TERM" in slow
    assert "stopwaitsecs=1920" in slow
    # the worker runs as the app, not as supervisord's root
    users = host.check_output(
        "ps -eo user:20,args | grep '[c]elery -A refapp worker' | awk '{print $1}'"
    )
    assert set(users.split()) == {"refapp"}


def test_logs_are_rotated_files_that_supervisorctl_tails(host):
    log = host.check_output("supervisorctl tail refapp-worker-fast")
    assert "ready." in log


def test_verify_passes_and_names_the_supervised_nodes():
    out, _ = playbook("verify.yml")
    node = f"supervisor.{HOST}"
    assert re.search(rf"worker\s+fast@{node}\s+pong\s+queues\s+default,high\s", out)
    assert re.search(rf"worker\s+slow@{node}\s+pong\s+queues\s+low\s", out)
    assert re.search(rf"probe\s+low\s+ran\s+on\s+slow@{node}\s", out)
    assert re.search(rf"beat\s+{HOST}\s", out)


@pytest.fixture(scope="module")
def rollback_run(host):
    return switch_under_load(host, "svrb", "rollback.yml", figures=FIGURES)


def test_rollback_under_load_runs_every_task_exactly_once(host, rollback_run):
    out, after = rollback_run
    assert re.search(r"layout\s+split \(fast, slow\)\s+-> single \(all\)", out)
    assert_exactly_once(after, "svrb")
    assert programs(host) == dict.fromkeys(
        ["refapp-worker-all", "refapp-beat", "refapp-flower"], "RUNNING"
    )
    verify, _ = playbook("verify.yml")
    assert re.search(
        rf"worker\s+all@supervisor.{HOST}\s+pong\s+queues\s+default,high,low\s", verify
    )


def test_second_rollback_changes_nothing(rollback_run):
    out, _ = playbook("rollback.yml")
    recap = [line for line in out.splitlines() if line.startswith(HOST)]
    assert recap and "changed=0" in recap[-1], recap


def test_deploy_returns_to_split_under_load_exactly_once(host, rollback_run):
    _, after = switch_under_load(host, "svback", "deploy.yml", figures=FIGURES)
    assert_exactly_once(after, "svback")
    assert programs(host) == dict.fromkeys(PROGRAMS, "RUNNING")


def test_switch_to_systemd_under_load_leaves_no_program(host, rollback_run):
    _, after = switch_under_load(
        host, "tosd", "deploy.yml", "-e", "celery_process_manager=systemd", figures=FIGURES
    )
    assert_exactly_once(after, "tosd")
    assert programs(host) == {}
    assert not host.file("/etc/supervisor/conf.d/refapp-worker-fast.conf").exists
    for unit in ("refapp-worker@fast", "refapp-worker@slow", "refapp-beat", "refapp-flower"):
        assert host.service(unit).is_running, unit
    verify, _ = playbook("verify.yml", "-e", "celery_process_manager=systemd")
    assert re.search(rf"worker\s+fast@{HOST}\s+pong\s+queues\s+default,high\s", verify)


def test_switch_back_to_supervisor_under_load_leaves_no_unit(host, rollback_run):
    _, after = switch_under_load(host, "tosv", "deploy.yml", figures=FIGURES)
    assert_exactly_once(after, "tosv")
    assert programs(host) == dict.fromkeys(PROGRAMS, "RUNNING")
    assert app_units(host) == []
    # the drain of the stopped systemd groups reached them only: nothing left consuming nothing
    verify, _ = playbook("verify.yml")
    assert re.search(rf"worker\s+fast@supervisor.{HOST}\s+pong\s+queues\s+default,high\s", verify)
