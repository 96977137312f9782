"""docs/examples/ci-workflow.yml, the CI workflow users copy: its steps run as written, in a
repository shaped like a user's (an app the toolkit was not designed around, tests/apps/tinyq,
and one inventory), and fail on what they are there to catch.

The checkout steps are GitHub's own. The Molecule step is `scripts/test molecule <scenario>`
on a copy of the user's scenario: the toolkit's suite runs that same command for its app-*
scenarios, so it is not run a second time here.
"""

import os
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW = yaml.safe_load((ROOT / "docs/examples/ci-workflow.yml").read_text())
STEPS = {s.get("name"): s for s in WORKFLOW["jobs"]["check"]["steps"] if "run" in s}

GROUP_VARS = {
    "redis_password": "a-real-broker-secret-0123456789",
    "redis_default_user_enabled": True,
    "celery_app_broker_url": "redis://:a-real-broker-secret-0123456789@127.0.0.1:6379/0",
    "flower_basic_auth_user": "ops",
    "flower_basic_auth_password": "a-real-flower-secret-42",
    # issue 20: the Redis exporter (on by default) logs in as a user of its own
    "redis_exporter_password": "a-real-exporter-secret-0123",
    "celery_app_source": str(ROOT / "tests/apps/tinyq"),
    "celery_app_constraints": str(ROOT / "tests/apps/tinyq/constraints.txt"),
    "celery_app_module": "tinyq",
    "celery_app_name": "tinyq",
    # the toolkit's tests keep their wheelhouses in the checkout (a user's default: ~/.cache)
    "celery_app_wheelhouse_cache": str(ROOT / ".cache/wheelhouse"),
    "celery_workers_groups": [
        {
            "name": "main",
            "queues": ["celery"],
            "concurrency": 2,
            "pool": "prefork",
            "prefetch_multiplier": 1,
            "max_tasks_per_child": 1000,
            "max_memory_per_child": 262144,
            "stop_timeout": 120,
        }
    ],
}


class Dumper(yaml.SafeDumper):
    """Indents lists under their key, as yamllint's default config wants (the user's style)."""

    def increase_indent(self, flow=False, indentless=False):
        return super().increase_indent(flow, False)


def dump(data: dict) -> str:
    return "---\n" + yaml.dump(data, Dumper=Dumper)


def user_repo(tmp_path: Path, **overrides) -> Path:
    inventory = tmp_path / "inventories/staging"
    (inventory / "group_vars").mkdir(parents=True)
    hosts = {
        "all": {
            "children": {
                g: {"hosts": {"vm1": None}} for g in ("broker", "celery_workers", "flower")
            }
        }
    }
    (inventory / "hosts.yml").write_text(dump(hosts))
    (inventory / "group_vars/all.yml").write_text(dump({**GROUP_VARS, **overrides}))
    return tmp_path


def run_step(name: str, repo: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    env.update({k: str(v) for k, v in WORKFLOW["env"].items()})
    env.update(TOOLKIT=str(ROOT), INVENTORIES="inventories/staging", ANSIBLE_NOCOLOR="1")
    env.pop("ANSIBLE_VAULT_PASSWORD_FILE")  # the test inventory is not vaulted
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-c", STEPS[name]["run"]],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


SETUP = "Set up the toolkit's tools (a virtualenv from its pinned requirements)"
LINT = "Lint the inventories"
VALIDATE = (
    "Validate every inventory with the app (the checks deploy.yml runs first; no host contacted)"
)


def test_the_checks_pass_on_a_sound_repository(tmp_path):
    repo = user_repo(tmp_path)
    for step in (SETUP, LINT, VALIDATE):
        proc = run_step(step, repo)
        assert proc.returncode == 0, (step, proc.stdout[-3000:], proc.stderr[-2000:])


def test_lint_step_refuses_broken_yaml(tmp_path):
    repo = user_repo(tmp_path)
    path = repo / "inventories/staging/group_vars/all.yml"
    path.write_text(path.read_text() + "celery_app_name: again\n")  # a duplicate key
    proc = run_step(LINT, repo)
    assert proc.returncode != 0
    assert 'duplication of key "celery_app_name"' in proc.stdout


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {
                "celery_workers_groups": [
                    {**GROUP_VARS["celery_workers_groups"][0], "queues": ["mail"]}
                ]
            },
            "group 'main' on vm1 consumes 'mail'",
        ),
        (
            {"redis_password": "CHANGE-ME-at-least-16-characters"},
            "redis_password on vm1 still holds a sample value",
        ),
    ],
    ids=["a-queue-the-app-does-not-use", "a-sample-password"],
)
def test_validate_step_refuses_what_deploy_would(tmp_path, overrides, message):
    proc = run_step(VALIDATE, user_repo(tmp_path, **overrides))
    assert proc.returncode != 0
    assert message in " ".join(proc.stdout.split()), proc.stdout[-3000:]


def test_molecule_step_is_the_command_the_suite_runs():
    step = next(
        s["run"] for s in WORKFLOW["jobs"]["check"]["steps"] if "Molecule" in s.get("name", "")
    )
    assert 'scripts/test molecule "$SCENARIO"' in step
    # the scenario a user copies: an app of their own, deployed with inventory changes only
    assert (ROOT / "molecule/app-default-queue/molecule.yml").exists()
