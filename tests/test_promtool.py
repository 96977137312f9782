"""The generated alert rules under Prometheus's own tool: `promtool check rules` on the rule file
generated from the fixed test fleet (tests/promtool/fleet.yml), `promtool test rules` on the
cases in tests/promtool/*.test.yml, and every alert of that file has a case where it fires and
one where it stays silent (a new alert without both fails here).

promtool comes from Debian's `prometheus` package (.ci/run installs it); without it these tests
fail, naming the package: they are never skipped.

The cases compare alerts by their labels; promtool compares annotations too, word for word, so the
rule file they run against is the generated one without annotations (same expressions, `for:`
and labels). The annotations themselves are checked by `promtool check rules` (their templates
parse) and by tests/test_celery_alerts.py (each alert has a summary, a description, a runbook).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from ansible_collections.celery_toolkit.stack.plugins.filter.celery_alerts import (
    celery_alert_rules,
)
from role_settings import settings

HERE = Path(__file__).resolve().parent / "promtool"
CASES = sorted(HERE.glob("*.test.yml"))


def promtool() -> str:
    found = shutil.which("promtool")
    if not found:
        pytest.fail(
            "promtool is missing: install Debian's prometheus package "
            "(apt-get install --no-install-recommends prometheus); .ci/run does"
        )
    return found


def fleet() -> tuple[dict[str, list[str]], dict[str, dict[str, Any]], list[str]]:
    data = yaml.safe_load((HERE / "fleet.yml").read_text())
    hosts = {
        host: settings(**{**data["all"], **(own or {})}) for host, own in data["hosts"].items()
    }
    return data["groups"], hosts, data["queues"]


def rules() -> dict[str, Any]:
    groups, hosts, queues = fleet()
    return celery_alert_rules(groups, hosts, queues)


def without_annotations(rule_file: dict[str, Any]) -> dict[str, Any]:
    return {
        "groups": [
            {
                **group,
                "rules": [
                    {k: v for k, v in r.items() if k != "annotations"} for r in group["rules"]
                ],
            }
            for group in rule_file["groups"]
        ]
    }


def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool(), *map(str, args)], capture_output=True, text=True, check=False
    )


def test_the_generated_rules_pass_promtool_check(tmp_path):
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump(rules(), sort_keys=False))
    result = run("check", "rules", path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


def test_promtool_check_can_fail(tmp_path):
    broken = rules()
    broken["groups"][1]["rules"][0]["expr"] = "max by (queue) (celery_queue_consumers == 0"
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump(broken, sort_keys=False))
    assert run("check", "rules", path).returncode != 0


@pytest.fixture()
def case_dir(tmp_path):
    (tmp_path / "rules.yml").write_text(
        yaml.safe_dump(without_annotations(rules()), sort_keys=False)
    )
    for case in CASES:
        shutil.copy(case, tmp_path / case.name)
    return tmp_path


def test_the_rule_unit_tests_pass(case_dir):
    assert CASES
    result = run("test", "rules", *sorted(case_dir.glob("*.test.yml")))
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_rule_unit_tests_can_fail(case_dir):
    """The cases see the rules: with an alert's threshold changed, its cases fail."""
    changed = yaml.safe_load((case_dir / "rules.yml").read_text())
    for rule in changed["groups"][1]["rules"]:
        if rule.get("alert") == "RedisMemoryHigh":
            rule["expr"] = rule["expr"].replace("> 0.8", "> 0.99")
    (case_dir / "rules.yml").write_text(yaml.safe_dump(changed, sort_keys=False))
    result = run("test", "rules", case_dir / "broker.test.yml")
    assert result.returncode != 0
    assert "RedisMemoryHigh" in result.stdout + result.stderr


def cases_by_alert() -> dict[str, dict[str, int]]:
    """alert name -> {"fires": n, "silent": n} over every alert_rule_test of the case files."""
    seen: dict[str, dict[str, int]] = {}
    for case in CASES:
        for test in yaml.safe_load(case.read_text())["tests"]:
            for check in test.get("alert_rule_test") or []:
                kind = "fires" if check.get("exp_alerts") else "silent"
                counts = seen.setdefault(check["alertname"], {"fires": 0, "silent": 0})
                counts[kind] += 1
    return seen


def alert_names() -> list[str]:
    return sorted({r["alert"] for g in rules()["groups"] for r in g["rules"] if "alert" in r})


@pytest.mark.parametrize("alert", alert_names())
def test_every_alert_has_a_case_where_it_fires_and_one_where_it_stays_silent(alert):
    counts = cases_by_alert().get(alert, {"fires": 0, "silent": 0})
    assert counts["fires"] and counts["silent"], (
        f"{alert} has {counts['fires']} case(s) where it fires and {counts['silent']} where it "
        "stays silent in tests/promtool/*.test.yml: give it at least one of each"
    )


def test_the_case_count_can_fail():
    assert "NoSuchAlert" not in cases_by_alert()
    assert len(alert_names()) == 13
