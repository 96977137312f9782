"""An app the toolkit was not designed around, as its user sees it: deployed by deploy.yml
with inventory changes only, verified, rolled back to the single worker, verified again, and
returned to its layout. Shared by the app-* scenarios; APP_SHAPE (molecule.yml, verifier env)
names the app and its groups: {"app": ..., "groups": {group: [queues]}, "manage_py": bool}.

The tests run in file order on one converged host.
"""

import json
import os
import re

import pytest

from playbook_runner import run_playbook

SHAPE = json.loads(os.environ["APP_SHAPE"])
APP = SHAPE["app"]
GROUPS = SHAPE["groups"]
QUEUES = sorted({q for queues in GROUPS.values() for q in queues})


def node(host, group):
    return f"{group}@{host.check_output('hostname')}"


def assert_table(out, host, groups):
    """verify.yml's status table: each group answers with its queues, each queue's probe ran on
    a group that consumes it."""
    for group, queues in groups.items():
        name, consumed = re.escape(node(host, group)), ",".join(sorted(queues))
        assert re.search(rf"worker\s+{name}\s+pong\s+queues\s+{consumed}\s", out), out[-3000:]
        for queue in queues:
            assert re.search(
                rf"probe\s+{queue}\s+ran\s+on\s+{re.escape(node(host, group))}\s", out
            ), out[-3000:]


@pytest.mark.parametrize(
    "unit", [*(f"{APP}-worker@{g}" for g in GROUPS), f"{APP}-beat", f"{APP}-flower"]
)
def test_units_run(host, unit):
    assert host.service(unit).is_running


def test_verify_passes_without_a_probe_task_of_the_app(host):
    proc, _ = run_playbook("verify.yml")
    assert_table(proc.stdout, host, GROUPS)
    assert re.search(r"layout\s+split\s", proc.stdout)


def test_release_holds_the_broker_client_the_app_did_not_ask_for(host):
    out = host.check_output(f"/opt/{APP}/current/venv/bin/python -c 'import redis; print(1)'")
    assert out == "1"


def test_rollback_to_the_single_worker_then_verify(host):
    proc, _ = run_playbook("rollback.yml")
    groups = ", ".join(GROUPS)
    assert re.search(rf"layout\s+split \({groups}\)\s+-> single \(all\)", proc.stdout)
    verify, _ = run_playbook("verify.yml")
    assert_table(verify.stdout, host, {"all": QUEUES})
    assert re.search(r"layout\s+single\s", verify.stdout)


def test_deploy_returns_to_the_layout_then_verify(host):
    run_playbook("deploy.yml")
    assert not host.service(f"{APP}-worker@all").is_running
    verify, _ = run_playbook("verify.yml")
    assert_table(verify.stdout, host, GROUPS)


def test_workers_run_from_the_apps_folder(host):
    """A source-tree app (Django) runs from its folder, where manage.py works through <app>-run;
    a packaged app has no folder and runs from /."""
    release = host.file(f"/opt/{APP}/current").linked_to
    for group in GROUPS:
        pid = host.check_output(f"systemctl show -p MainPID --value {APP}-worker@{group}")
        cwd = host.check_output(f"readlink /proc/{pid}/cwd")
        assert cwd == (f"{release}/src" if SHAPE.get("manage_py") else "/")
    if SHAPE.get("manage_py"):
        out = host.check_output(f"{APP}-run python manage.py check")
        assert "System check identified no issues" in out
