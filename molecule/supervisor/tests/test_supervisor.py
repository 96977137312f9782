"""The stack under supervisord, as its user sees it: programs, warm stops, verify.yml, the
incident rollback and the return under load, and switches of process manager under load.

The tests run in file order and share the deployed host."""

import json
import re
import time

import pytest
import yaml

from load import SEND, as_app, assert_exactly_once, playbook, switch_under_load
from playbook_runner import LEDGER, ROOT, record_figure, run_playbook, wait_for

HOST = "celery-toolkit-supervisor"
# the app's programs: worker groups, beat, Flower and the Celery exporter (issue 20)
PROGRAMS = [
    "refapp-worker-fast",
    "refapp-worker-slow",
    "refapp-beat",
    "refapp-flower",
    "refapp-exporter",
]
FIGURES = "supervisor-figures.json"


def ledger(host, prefix):
    return json.loads(as_app(host, LEDGER, prefix))["ledger"]


def busy(host):
    """The fast group runs tasks now (its pool children have started some)."""
    out = host.run(
        "refapp-run celery -A refapp inspect active -j -d fast@supervisor.$(hostname) 2>/dev/null"
    ).stdout
    try:
        return sum(len(v) for v in json.loads(out).values()) >= 4
    except ValueError:
        return False


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
    assert "stopwaitsecs=3840" in slow  # the drain and the warm shutdown, 1920 s each
    # the worker runs as the app, not as supervisord's root
    users = host.check_output(
        "ps -eo user:20,args | grep '[c]elery_launch.py -A refapp worker' | awk '{print $1}'"
    )
    assert set(users.split()) == {"refapp"}
    # with the app user's HOME, as systemd's User= gives it, not supervisord's (root's)
    environ = host.check_output(
        f"tr '\\0' '\\n' < /proc/{celery_main_pid(host, 'refapp-worker-fast')}/environ"
    )
    assert "HOME=/opt/refapp" in environ.splitlines()


def test_a_vm_shutdown_waits_for_the_longest_group_and_stops_supervisord_before_redis(host):
    props = host.check_output("systemctl show -p TimeoutStopUSec -p After supervisor.service")
    # every program's stopwaitsecs added up: 2 x (1920 + 120) for the groups, 30 + 30 + 30 more
    assert "TimeoutStopUSec=1h 9min 30s" in props
    assert "redis-server.service" in props.split("After=")[1]


def test_logs_are_rotated_files_that_supervisorctl_tails(host):
    log = host.check_output("supervisorctl tail refapp-worker-fast")
    assert "ready." in log


# supervisord's own view of each program's settings (XML-RPC over its socket, as supervisorctl)
CONFIG_INFO = """
import json, xmlrpc.client
from supervisor.xmlrpc import SupervisorTransport
rpc = xmlrpc.client.ServerProxy("http://localhost", SupervisorTransport(None, None, "unix:///run/supervisor.sock"))
print(json.dumps({c["name"]: [c["stdout_logfile_maxbytes"], c["stdout_logfile_backups"]]
                  for c in rpc.supervisor.getAllConfigInfo()}))
"""


def test_each_programs_log_is_bounded_as_the_inventory_says(host):
    """issue 21: celery_app_log_max_bytes 10MB and celery_app_log_backups 3 (host_vars/)."""
    info = json.loads(host.check_output(f"python3 -c '{CONFIG_INFO}'"))
    assert {p: info.get(p) for p in PROGRAMS} == dict.fromkeys(PROGRAMS, [10 * 1024 * 1024, 3])


def test_verify_passes_and_names_the_supervised_nodes():
    out, _ = playbook("verify.yml")
    node = f"supervisor.{HOST}"
    assert re.search(rf"worker\s+fast@{node}\s+pong\s+queues\s+default,high\s", out)
    assert re.search(rf"worker\s+slow@{node}\s+pong\s+queues\s+low\s", out)
    assert re.search(rf"probe\s+low\s+ran\s+on\s+slow@{node}\s", out)
    assert re.search(rf"beat\s+{HOST}\s", out)


def test_check_mode_on_the_converged_host_changes_nothing(host):
    before = programs(host)
    out, _ = playbook("deploy.yml", "--check", "--diff")
    recap = [line for line in out.splitlines() if line.startswith(HOST)]
    assert recap and "changed=0" in recap[-1] and "failed=0" in recap[-1], recap
    assert programs(host) == before


def pids(host):
    """supervisorctl pid of every program: a restart gives a program a new one."""
    return {p: host.check_output(f"supervisorctl pid {p}") for p in PROGRAMS}


def test_a_change_to_one_group_restarts_that_group_only(host):
    groups = yaml.safe_load((ROOT / "roles/celery_workers/defaults/main.yml").read_text())[
        "celery_workers_groups"
    ]
    before = pids(host)
    changed = [{**g, "concurrency": 3} if g["name"] == "fast" else g for g in groups]
    playbook("deploy.yml", "-e", json.dumps({"celery_workers_groups": changed}))
    after = pids(host)
    assert after["refapp-worker-fast"] != before["refapp-worker-fast"]
    assert {p: after[p] for p in PROGRAMS[1:]} == {p: before[p] for p in PROGRAMS[1:]}
    assert "--concurrency=3" in host.check_output("ps -eo args | grep '[f]ast@supervisor'")
    # no deploy back to the inventory's layout here: the rollback that follows replaces it, and
    # test_deploy_returns_to_split_under_load_exactly_once returns to it (and checks it)


@pytest.fixture(scope="module")
def rollback_run(host):
    return switch_under_load(host, "svrb", "rollback.yml", figures=FIGURES)


def test_rollback_under_load_runs_every_task_exactly_once(host, rollback_run):
    out, after = rollback_run
    assert re.search(r"layout\s+split \(fast, slow\)\s+-> single \(all\)", out)
    assert_exactly_once(after, "svrb")
    assert programs(host) == dict.fromkeys(
        ["refapp-worker-all", "refapp-beat", "refapp-flower", "refapp-exporter"], "RUNNING"
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
    # the inventory's layout, not the one test_a_change_to_one_group_restarts_that_group_only left
    fast = host.check_output("ps -eo args | grep '[f]ast@supervisor'")
    assert "--concurrency=4" in fast and "--concurrency=3" not in fast


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


def celery_main_pid(host, program):
    """The Celery main process of a program: the child of the wrapper supervisord started."""
    wrapper = host.check_output(f"supervisorctl pid {program}")
    return host.check_output(f"pgrep -P {wrapper}")


def test_kill_9_of_a_worker_leaves_no_task_stranded(host, rollback_run):
    """kill -9 of the fast group's Celery main process with 10 tasks of 4 s in flight: the
    wrapper gives back what it held (as the systemd unit's ExecStopPost) and supervisord
    restarts the group; every task runs within minutes, not after the 2-hour visibility
    timeout."""
    prefix, n = "svkill9", 10
    as_app(host, SEND, prefix, str(n), "4")
    assert wait_for(lambda: len(ledger(host, prefix)) < n and busy(host), 30)
    killed = time.monotonic()
    host.run_expect([0], f"kill -9 {celery_main_pid(host, 'refapp-worker-fast')}")
    ran = wait_for(lambda: len(ledger(host, prefix)) == n, 180)
    runs = ledger(host, prefix)
    record_figure(
        FIGURES,
        "kill -9 of fast's Celery main process, 10 tasks of 4 s",
        {
            "all_ran_after_s": round(time.monotonic() - killed, 1),
            "ran_twice": sum(1 for c in runs.values() if c > 1),
        },
    )
    assert ran, f"{n - len(runs)} of {n} tasks never ran in 180 s: {sorted(runs)}"
    log = host.file("/var/log/supervisor/refapp-worker-fast.log").content_string
    assert re.search(r"requeued \S+ refapp\.tasks\.ledger\.record_fast -> high", log), log[-3000:]
    assert wait_for(lambda: programs(host).get("refapp-worker-fast") == "RUNNING", 60)


def test_deploy_whose_group_cannot_start_returns_to_what_ran(host, rollback_run, tmp_path):
    """A group that crash-loops (a pool the release lacks) fails the deploy at the health gate,
    and the host returns to the layout that ran: its groups answer again."""
    broken = tmp_path / "broken.yml"
    groups = [
        {**g, "pool": "gevent"} if g["name"] == "slow" else g
        for g in yaml.safe_load((ROOT / "roles/celery_workers/defaults/main.yml").read_text())[
            "celery_workers_groups"
        ]
    ]
    broken.write_text(
        yaml.safe_dump(
            {
                "all": {
                    "hosts": {
                        HOST: {"celery_workers_groups": groups, "celery_workers_health_timeout": 20}
                    }
                }
            }
        )
    )
    proc, _ = run_playbook("deploy.yml", check=False, inventories=(broken,))
    out = re.sub(r"\s+", " ", proc.stdout)
    assert proc.returncode != 0
    assert f"worker group 'slow' on {HOST} does not answer a ping" in out, out[-3000:]
    assert "supervisor says" in out
    assert f"{HOST} is back on release" in out
    assert programs(host) == dict.fromkeys(PROGRAMS, "RUNNING")
    verify, _ = playbook("verify.yml")
    assert re.search(rf"worker\s+slow@supervisor.{HOST}\s+pong\s+queues\s+low\s", verify)
