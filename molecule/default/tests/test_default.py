"""The deployed stack as its user sees it: units, file modes, hardening, verify.yml."""

import json
import re
import time

import pytest
import yaml

from load import SEND, as_app
from playbook_runner import ROOT, play_recap, run_playbook, wait_for

# the scenario moves the app's folders away from /opt/refapp and /etc/refapp, and sets secrets
# with symbols (tests/test_exact_values.py)
HOSTVARS = yaml.safe_load(
    (ROOT / "molecule/default/host_vars/celery-toolkit-default.yml").read_text()
)
BASE, CONFIG = HOSTVARS["celery_app_base_dir"], HOSTVARS["celery_app_config_dir"]

UNITS = ["refapp-worker@fast", "refapp-worker@slow", "refapp-beat", "refapp-flower"]


@pytest.mark.parametrize("unit", [*UNITS, "redis-server", "refapp.target"])
def test_unit_enabled_and_active(host, unit):
    service = host.service(unit)
    assert service.is_enabled, f"{unit} is not enabled"
    assert service.is_running, f"{unit} is not active"


@pytest.mark.parametrize("unit", UNITS)
def test_unit_security_score_at_most_2(host, unit):
    out = host.check_output(f"systemd-analyze security {unit}.service | tail -1")
    score = float(re.search(r"exposure level for .*: (\d+\.\d+)", out).group(1))
    assert score <= 2.0, out


@pytest.mark.parametrize("unit", UNITS)
def test_workers_stop_warmly(host, unit):
    props = host.check_output(f"systemctl show -p KillMode -p KillSignal -p Restart {unit}.service")
    assert "KillMode=mixed" in props
    assert "KillSignal=15" in props
    assert "Restart=always" in props


@pytest.mark.parametrize("group", ["fast", "slow"])
def test_every_stop_of_a_worker_drains_it_first(host, group):
    unit = f"refapp-worker@{group}.service"
    stop = host.check_output(f"systemctl show -p ExecStop {unit}")
    assert "/usr/local/lib/celery-toolkit/celery_drain.py" in stop
    assert f"{group}@" in stop or "%i@%H" in stop


def test_stopping_a_group_drains_it_and_logs_so(host):
    since = host.check_output("date '+%Y-%m-%d %H:%M:%S'")
    host.run_expect([0], "systemctl stop refapp-worker@fast.service")
    try:
        log = host.check_output(f"journalctl -u refapp-worker@fast --since '{since}' -o cat")
    finally:
        host.run_expect([0], "systemctl start refapp-worker@fast.service")
    assert "drained fast@" in log, log[-2000:]
    assert "stopped consuming default,high" in log, log[-2000:]


def test_slow_group_waits_for_long_tasks(host):
    out = host.check_output("systemctl show -p TimeoutStopUSec refapp-worker@slow.service")
    assert out == "TimeoutStopUSec=32min"


@pytest.mark.parametrize(
    ("path", "owner", "group", "mode"),
    [
        (CONFIG, "root", "refapp", 0o750),
        (f"{CONFIG}/refapp.env", "root", "refapp", 0o640),
        (f"{CONFIG}/flower.env", "root", "refapp", 0o640),
        (f"{CONFIG}/worker-fast.env", "root", "refapp", 0o640),
        ("/usr/local/sbin/refapp-run", "root", "root", 0o750),
    ],
)
def test_secret_files_are_not_world_readable(host, path, owner, group, mode):
    f = host.file(path)
    assert (f.user, f.group, f.mode) == (owner, group, mode)


def test_current_points_at_a_complete_release(host):
    current = host.file(f"{BASE}/current")
    assert current.is_symlink
    release = json.loads(host.file(current.linked_to + "/RELEASE").content_string)
    assert current.linked_to.endswith("/" + release["id"])


def test_processes_run_as_the_app_user(host):
    users = host.check_output("ps -o user= -C celery | sort -u")
    assert users.split() == ["refapp"]


def test_flower_listens_on_loopback_only(host):
    sockets = [s for s in host.socket.get_listening_sockets() if s.endswith(":5555")]
    assert sockets and all(s.startswith("tcp://127.0.0.1:") for s in sockets), sockets


def test_flower_credentials_are_not_on_the_command_line(host):
    password = HOSTVARS["flower_basic_auth_password"]
    assert password not in host.check_output("ps -eo args")
    assert password.split()[0] not in host.check_output("ps -eo args")


def test_verify_playbook_passes():
    """playbooks/verify.yml: pings, active queues, one probe per queue run by the right group."""
    proc, _ = run_playbook("verify.yml")
    # the YAML callback may fold a long line: whitespace between tokens may include a newline
    out = proc.stdout
    assert re.search(r"probe\s+low\s+ran\s+on\s+slow@celery-toolkit-default\s", out)
    assert re.search(r"probe\s+high\s+ran\s+on\s+fast@celery-toolkit-default\s", out)
    assert re.search(r"probe\s+default\s+ran\s+on\s+fast@celery-toolkit-default\s", out)
    assert re.search(r"worker\s+fast@celery-toolkit-default\s+pong\s+queues\s+default,high\s", out)
    assert re.search(r"worker\s+slow@celery-toolkit-default\s+pong\s+queues\s+low\s", out)
    assert re.search(r"layout\s+split\s", out)
    assert re.search(r"beat\s+celery-toolkit-default\s", out)


def test_check_mode_on_the_converged_host_changes_nothing():
    proc, _ = run_playbook("deploy.yml", "--check", "--diff")
    recap = [line for line in proc.stdout.splitlines() if line.startswith("celery-toolkit-default")]
    assert recap and "changed=0" in recap[-1] and "failed=0" in recap[-1], recap


def test_a_deploy_starts_a_stopped_group_and_puts_back_a_hand_edit(host):
    """A re-run skips a host only when it runs what it should: a stopped group or a hand-edited
    file brings it back into the deploy, which repairs both; then there is nothing to do."""
    settings = f"{CONFIG}/worker-fast.env"
    host.run_expect([0], "systemctl stop refapp-worker@slow.service")
    host.run_expect([0], f"sh -c 'echo \"# a hand edit\" >> {settings}'")
    # and what a deploy halted during staging leaves: a release folder without RELEASE
    half_made = f"{BASE}/releases/20000101T000000Z-000000000000"
    host.run_expect([0], f"mkdir -p {half_made}/venv/bin")
    proc, _ = run_playbook("deploy.yml")
    assert "celery-toolkit-default: files changed, a process is not running" in proc.stdout
    assert host.service("refapp-worker@slow").is_running
    assert "# a hand edit" not in host.file(settings).content_string
    assert not host.file(half_made).exists
    assert host.file(f"{BASE}/current/RELEASE").exists
    # nothing left to do: Molecule's idempotence stage, which this scenario leaves out for it
    proc, _ = run_playbook("deploy.yml")
    assert "1 of 1 hosts have nothing to switch or restart" in proc.stdout
    recap = {vm: (c["changed"], c["failed"]) for vm, c in play_recap(proc.stdout).items()}
    assert recap == {"celery-toolkit-default": (0, 0), "celery-toolkit-monitor": (0, 0)}, recap


def test_nothing_lands_in_the_default_folders(host):
    """With celery_app_base_dir and celery_app_config_dir set, no role or playbook falls back to
    /opt/refapp or /etc/refapp; the layout is recorded as the host's local fact."""
    assert not host.file("/opt/refapp").exists
    assert not host.file("/etc/refapp").exists
    layout = json.loads(host.file("/etc/ansible/facts.d/refapp.fact").content_string)
    assert layout["layout"] == "split"


# issue 21: the log bounds, from the inventory (host_vars/)
def test_the_journal_is_capped_as_the_inventory_says(host):
    dropin = host.file("/etc/systemd/journald.conf.d/refapp.conf").content_string
    assert f"SystemMaxUse={HOSTVARS['celery_app_journal_max_use']}" in dropin
    # what journald applies: it says so when it opens the journal ("... is 8.0M, max 256.0M, ...")
    opened = host.check_output(
        "journalctl -u systemd-journald -o cat --no-pager | grep 'System Journal (' | tail -1"
    )
    assert re.search(r"max 256(\.0)?M,", opened), opened


@pytest.mark.parametrize("unit", [*UNITS, "refapp-exporter"])
def test_each_service_logs_within_the_inventorys_rate_limit(host, unit):
    props = host.check_output(
        f"systemctl show -p LogRateLimitIntervalUSec -p LogRateLimitBurst {unit}.service"
    )
    assert "LogRateLimitIntervalUSec=10s" in props.splitlines(), props
    assert "LogRateLimitBurst=5000" in props.splitlines(), props
    # what journald applies to the running process: systemd hands it over when the unit starts
    burst = host.check_output(f"readlink /run/systemd/units/log-rate-limit-burst:{unit}.service")
    assert burst == "5000"


def test_a_restart_of_journald_loses_no_line_of_a_running_worker(host):
    """The cap applies when journald starts again; the workers' log streams outlive it (systemd
    keeps them in journald's file-descriptor store), so `journalctl -u` goes on without a restart
    of the worker."""
    pid = host.check_output("systemctl show -p MainPID --value refapp-worker@fast")
    since = host.check_output("date '+%Y-%m-%d %H:%M:%S'")
    host.run_expect([0], "systemctl restart systemd-journald")
    as_app(host, SEND, f"journald-{time.time_ns()}", "3", "0.1")

    def logged():
        log = host.check_output(f"journalctl -u refapp-worker@fast --since '{since}' -o cat")
        done = [line for line in log.splitlines() if "record_fast[" in line and "succeeded" in line]
        return len(done) >= 3

    assert wait_for(logged, 30), host.check_output("journalctl -u refapp-worker@fast -n 20 -o cat")
    assert host.check_output("systemctl show -p MainPID --value refapp-worker@fast") == pid
