"""rollback.yml and the way back, under load: no task lost, none run twice.

The tests run in file order and share the deployed host: split -> single -> split. The host was
deployed by the previous release and upgraded under load by test_0_upgrade.py, which runs first.
"""

import json
import re

import pytest
import yaml

from load import as_app, assert_exactly_once, current_release, playbook, switch_under_load
from playbook_runner import ROOT, run_playbook


def active_since(host, unit):
    return host.check_output(f"systemctl show -p ActiveEnterTimestampMonotonic --value {unit}")


def test_rollback_whose_single_worker_cannot_start_keeps_the_split_groups(host, tmp_path):
    """The single worker derived from split groups that ask for a pool the release lacks
    (gevent) crash-loops: the split groups must never stop, and the rollback must fail saying
    why. (An extra inventory source: host vars win over the scenario's group_vars.)"""
    before = {g: active_since(host, f"refapp-worker@{g}") for g in ("fast", "slow")}
    groups = yaml.safe_load((ROOT / "roles/celery_workers/defaults/main.yml").read_text())[
        "celery_workers_groups"
    ]
    broken = tmp_path / "broken.yml"
    broken.write_text(
        yaml.safe_dump(
            {
                "all": {
                    "hosts": {
                        "celery-toolkit-rollback": {
                            "celery_workers_groups": [{**g, "pool": "gevent"} for g in groups],
                            "celery_workers_health_timeout": 20,
                        }
                    }
                }
            }
        )
    )
    proc, _ = run_playbook("rollback.yml", check=False, inventories=(broken,))
    out = re.sub(r"\s+", " ", proc.stdout)
    assert proc.returncode != 0
    assert "worker group 'all' on celery-toolkit-rollback does not answer a ping" in out
    assert "No module named ''gevent''" in out or "No module named 'gevent'" in out
    assert "celery-toolkit-rollback is back on release" in out
    assert "with layout split (fast, slow), and its groups answer" in out
    # the split groups never stopped; the single worker is gone
    assert {g: active_since(host, f"refapp-worker@{g}") for g in before} == before
    assert not host.service("refapp-worker@all").is_running
    assert not host.file("/etc/refapp/worker-all.env").exists
    verify, _ = run_playbook("verify.yml")
    assert re.search(r"layout\s+split\s", verify.stdout)


@pytest.fixture(scope="module")
def rollback_run(host):
    return switch_under_load(host, "rb", "rollback.yml")


def test_rollback_under_load_runs_every_task_exactly_once(rollback_run):
    out, after = rollback_run
    assert re.search(r"layout\s+split \(fast, slow\)\s+-> single \(all\)", out)
    assert_exactly_once(after, "rb")


def test_single_worker_consumes_every_queue(host, rollback_run):
    assert host.service("refapp-worker@all").is_running
    for group in ("fast", "slow"):
        assert not host.service(f"refapp-worker@{group}").is_running
        assert not host.file(f"/etc/refapp/worker-{group}.env").exists
    out, _ = playbook("verify.yml")
    assert re.search(
        r"worker\s+all@celery-toolkit-rollback\s+pong\s+queues\s+default,high,low\s", out
    )
    assert re.search(r"layout\s+single\s", out)
    for queue in ("high", "default", "low"):
        assert re.search(rf"probe\s+{queue}\s+ran\s+on\s+all@celery-toolkit-rollback\s", out)


def test_second_rollback_changes_nothing(rollback_run):
    out, _ = playbook("rollback.yml")
    recap = [line for line in out.splitlines() if line.startswith("celery-toolkit-rollback")]
    assert recap and "changed=0" in recap[-1], recap


def test_deploy_returns_to_split_under_load_exactly_once(host, rollback_run):
    out, after = switch_under_load(host, "back", "deploy.yml")
    assert_exactly_once(after, "back")
    assert not host.service("refapp-worker@all").is_running
    verify, _ = playbook("verify.yml")
    assert re.search(r"layout\s+split\s", verify)
    assert re.search(r"probe\s+low\s+ran\s+on\s+slow@celery-toolkit-rollback\s", verify)
    assert re.search(r"probe\s+high\s+ran\s+on\s+fast@celery-toolkit-rollback\s", verify)


def test_beat_runs_once(host, rollback_run):
    assert host.service("refapp-beat").is_running
    # one beat process (a second beat would send every periodic task twice)
    assert host.check_output("ps -eo args | grep -c '[c]elery -A refapp beat'") == "1"


def test_rollback_to_previous_release_refused_with_one_release(rollback_run):
    proc, _ = run_playbook(
        "rollback.yml", "-e", "celery_app_rollback_to_previous=true", check=False
    )
    assert proc.returncode != 0
    assert re.search(r"there\s+is\s+no\s+previous\s+release\s+to\s+return", proc.stdout)


PROBE_RELEASE = """
from refapp.tasks.probe import probe
print(probe.apply_async(args=["release"], queue="low").get(timeout=60)["release"])
"""


def test_rollback_to_previous_release(host, rollback_run):
    first = current_release(host)
    defaults = yaml.safe_load((ROOT / "roles/celery_app/defaults/main.yml").read_text())
    pins = defaults["celery_app_extra_requirements"] + ["six==1.17.0"]  # a new wheelhouse
    playbook("deploy.yml", "-e", json.dumps({"celery_app_extra_requirements": pins}))
    second = current_release(host)
    assert second > first, "a new release sorts after the one before it"

    out, _ = playbook("rollback.yml", "-e", "celery_app_rollback_to_previous=true")
    assert re.search(rf"release\s+{second}\s+->\s+{first}\s", out)
    assert current_release(host) == first
    # the workers restarted on the previous release: a task says which release ran it
    assert as_app(host, PROBE_RELEASE).strip().startswith(first + "-")

    again, _ = playbook("rollback.yml", "-e", "celery_app_rollback_to_previous=true")
    recap = [line for line in again.splitlines() if line.startswith("celery-toolkit-rollback")]
    assert "changed=0" in recap[-1], recap


# Runs on the host with the broker URL of the app (or of Flower): each admin command must be
# refused with NOPERM (SHUTDOWN last: were it allowed, Redis would stop).
REFUSED = """
import os, redis
client = redis.Redis.from_url(os.environ["CELERY_BROKER_URL"])
for command in (["FLUSHALL"], ["FLUSHDB"], ["CONFIG", "GET", "maxmemory"], ["KEYS", "*"],
                ["ACL", "LIST"], ["REPLICAOF", "NO", "ONE"], ["SHUTDOWN", "NOSAVE"]):
    try:
        client.execute_command(*command)
        print(command[0], "ALLOWED")
    except redis.exceptions.NoPermissionError:
        print(command[0], "NOPERM")
"""

# (DEBUG and MODULE are not in the rules either; Redis refuses them to everyone before the ACL
# check, enable-debug-command and enable-module-command being off.)
ADMIN_COMMANDS = ["FLUSHALL", "FLUSHDB", "CONFIG", "KEYS", "ACL", "REPLICAOF", "SHUTDOWN"]
ADMIN = "REDISCLI_AUTH=sandbox-broker-password-not-secret redis-cli --user admin"


def test_the_app_and_flower_were_refused_nothing(host, rollback_run):
    """Every command the app, its helpers and Flower sent through the scenario (loads, rollbacks,
    deploys, drains, verify) was allowed by their profiles: Redis's ACL log names none."""
    log = host.check_output(f"{ADMIN} --json ACL LOG 128")
    refused = [
        (e["username"], e["reason"], e["object"])
        for e in json.loads(log)
        if e["username"] in ("refapp", "refapp-flower")
    ]
    assert refused == []


def test_app_user_gets_noperm_for_admin_commands(host, rollback_run):
    out = as_app(host, REFUSED)
    assert out.split() == [w for c in ADMIN_COMMANDS for w in (c, "NOPERM")], out
    assert "user=refapp " in host.check_output(f"{ADMIN} CLIENT LIST")


def flower_api(host, path):
    return host.check_output(
        f"curl -sf -u admin:sandbox-flower-password http://127.0.0.1:5555/api/{path}"
    )


def test_flower_logs_in_as_its_own_user_and_sees_the_workers(host, rollback_run):
    env = host.check_output("cat /etc/refapp/flower.env")
    # written quoted as systemd reads it (systemd_env_quote)
    assert 'CELERY_BROKER_URL="redis://refapp-flower:' in env
    workers = json.loads(flower_api(host, "workers?refresh=1"))
    assert any(name.endswith("@celery-toolkit-rollback") for name in workers), workers
    queues = json.loads(flower_api(host, "queues/length"))
    assert {q["name"] for q in queues["active_queues"]} >= {"high", "default", "low"}
    clients = host.check_output(f"{ADMIN} CLIENT LIST")
    assert "user=refapp-flower " in clients
    refused = host.run(
        "REDISCLI_AUTH=sandbox-flower-broker-password redis-cli --user refapp-flower FLUSHALL"
    )
    assert "NOPERM" in refused.stdout + refused.stderr
    # the administrator's password no longer opens `default`
    out = host.run("REDISCLI_AUTH=sandbox-broker-password-not-secret redis-cli PING")
    assert "PONG" not in out.stdout, out.stdout
