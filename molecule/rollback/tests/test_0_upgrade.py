"""issue 21 (upgrades): the toolkit upgraded under a running app.

converge.yml deployed this fleet with the previous release's own playbooks and roles (tag
v0.19.0). Here this tree's deploy.yml upgrades it while a mixed load is in flight: every task runs
exactly once, what the previous release recorded on the host (its layout fact, its mark, its
release) is read and moved forward, only what CHANGELOG.md's "Upgrading from 0.19.0" announces
restarts, and a second deploy changes nothing. The file runs first (pytest collects test_0_*
before test_rollback.py), so that the rollback tests then run on the upgraded fleet.
"""

import json
import re

import pytest

from load import assert_exactly_once, current_release, playbook, switch_under_load

HOST = "celery-toolkit-rollback"
FACT = "/etc/ansible/facts.d/refapp.fact"
MARK = "/etc/ansible/facts.d/refapp_deploy.fact"

# CHANGELOG.md, "Upgrading from 0.19.0": every process of the app restarts once and journald
# once (the new journal cap). Redis does not: auth.conf gains the exporter's user and the celery
# profile's reads, applied to the running Redis (roles/redis/tasks/acl.yml). Any other running
# service that restarts is a restart nobody announced.
ANNOUNCED_RESTARTS = {
    "refapp-worker@fast.service",
    "refapp-worker@slow.service",
    "refapp-beat.service",
    "refapp-flower.service",
    "systemd-journald.service",
}
# What 0.20.0 adds (CHANGELOG.md, issue 20's exporters): started, nothing else new
NEW_SERVICES = {
    "refapp-exporter.service",
    "prometheus-node-exporter.service",
    "prometheus-redis-exporter.service",
}


def running_services(host):
    """Each running service on the host -> when it last entered `active` (monotonic usec):
    a value that changed is a restart."""
    units = host.check_output(
        "systemctl list-units --type=service --state=running --no-legend --plain"
    )
    names = [line.split()[0] for line in units.splitlines() if line.strip()]
    shown = host.check_output(
        "systemctl show -p Id -p ActiveEnterTimestampMonotonic " + " ".join(names)
    )
    services = {}
    for block in shown.strip().split("\n\n"):
        fields = dict(line.split("=", 1) for line in block.splitlines())
        services[fields["Id"]] = fields["ActiveEnterTimestampMonotonic"]
    return services


def releases(host):
    return sorted(host.check_output("ls /opt/refapp/releases").split())


@pytest.fixture(scope="module")
def previous(host):
    """The host as the previous release left it (read before anything else runs)."""
    return {
        "services": running_services(host),
        "fact": json.loads(host.file(FACT).content_string),
        "mark": json.loads(host.file(MARK).content_string),
        "release": current_release(host),
        "releases": releases(host),
        "journald_dropin": host.file("/etc/systemd/journald.conf.d/refapp.conf").exists,
    }


@pytest.fixture(scope="module")
def upgrade(host, previous):
    out, after = switch_under_load(host, "up", "deploy.yml", figures="upgrade-figures.json")
    return out, after, running_services(host)


def test_the_previous_release_deployed_the_fleet(previous):
    """What converge ran is 0.19.0's tree, not this one's: none of 0.20.0's additions is there."""
    assert previous["fact"]["layout"] == "split"
    assert [g["name"] for g in previous["fact"]["groups"]] == ["fast", "slow"]
    assert previous["mark"]["inputs"] and previous["mark"]["files"]
    assert not NEW_SERVICES & set(previous["services"])
    assert not previous["journald_dropin"]
    assert set(previous["services"]) >= ANNOUNCED_RESTARTS


def test_upgrade_under_load_runs_every_task_exactly_once(upgrade):
    _, after, _ = upgrade
    assert_exactly_once(after, "up")


def test_upgrade_reads_what_the_previous_release_recorded(host, previous, upgrade):
    """The plan read the previous release's mark (the host is pending because the toolkit, an
    input, changed; not as a host never deployed) and its release (one batch, not every host at
    once as on a first deploy); the release it installed keeps running; the layout fact and the
    mark are written forward."""
    out = re.sub(r"\s+", " ", upgrade[0])
    assert re.search(rf"{HOST}: inputs changed\b", out), out[-3000:]
    assert "no completed run recorded" not in out
    assert "batch: 1" in out
    assert "every host at once" not in out
    assert current_release(host) == previous["release"]
    assert releases(host) == previous["releases"]
    fact = json.loads(host.file(FACT).content_string)
    assert fact["layout"] == "split"
    assert [g["name"] for g in fact["groups"]] == ["fast", "slow"]
    mark = json.loads(host.file(MARK).content_string)
    assert mark["inputs"] != previous["mark"]["inputs"]
    assert host.file("/etc/systemd/journald.conf.d/refapp.conf").exists


def test_upgrade_restarts_only_what_the_changelog_announces(previous, upgrade):
    before, after = previous["services"], upgrade[2]
    assert sorted(set(before) - set(after)) == [], "services the upgrade stopped"
    restarted = {unit for unit in before if after[unit] != before[unit]}
    assert sorted(restarted - ANNOUNCED_RESTARTS) == [], "restarts the CHANGELOG does not announce"
    assert sorted(ANNOUNCED_RESTARTS - restarted) == [], "announced restarts that did not happen"
    assert set(after) - set(before) == NEW_SERVICES


def test_verify_passes_after_the_upgrade(upgrade):
    out, _ = playbook("verify.yml")
    assert re.search(r"layout\s+split\s", out)
    assert re.search(rf"probe\s+low\s+ran\s+on\s+slow@{HOST}\s", out)
    assert re.search(rf"probe\s+high\s+ran\s+on\s+fast@{HOST}\s", out)


def test_second_deploy_after_the_upgrade_changes_nothing(host, upgrade):
    out, _ = playbook("deploy.yml")
    recap = [line for line in out.splitlines() if line.startswith(HOST)]
    assert recap and "changed=0" in recap[-1], recap
    assert running_services(host) == upgrade[2]
