"""Issue 21: the broker a worker host records (roles/celery_workers/tasks/state.yml) is the one
its environment names. A deploy records its new celery_app_broker_url; a failed deploy's way back
(roles/celery_deploy/tasks/restore.yml) puts the old environment back and passes the broker
recorded before, so the next deploy counts the queued messages where the workers ran. Runs
state.yml on the controller, into a temporary facts folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NEW_URL = "redis://app:s3cret@10.0.0.6:6379/1"
OLD = {"host": "10.0.0.5", "port": 6379, "db": 0}
PLAY = """
- hosts: localhost
  connection: local
  gather_facts: false
  tasks:
    - ansible.builtin.include_role:
        name: celery_toolkit.stack.celery_workers
        tasks_from: state
      vars:
        celery_app_name: refapp
        celery_app_broker_url: "%s"
        celery_workers_layout_name: split
        celery_workers_groups: [{name: fast, queues: [default]}]
        celery_workers_beat_enabled: false
        celery_workers_restart_token: r1
        celery_process_manager: systemd
"""


def record(tmp_path: Path, *extra: str) -> dict:
    playbook = tmp_path / "state.yml"
    playbook.write_text(PLAY % NEW_URL)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    env.update(ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_NOCOLOR="1")
    facts = tmp_path / "facts.d"
    proc = subprocess.run(
        [
            str(Path(sys.executable).parent / "ansible-playbook"),
            "-i",
            "localhost,",
            str(playbook),
            "-e",
            json.dumps(
                {
                    "celery_facts_dir": str(facts),
                    "celery_app_config_dir": str(tmp_path),
                    "ansible_python_interpreter": sys.executable,
                }
            ),
            *extra,
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    return json.loads((facts / "refapp.fact").read_text())


@pytest.mark.skipif(os.geteuid() != 0, reason="state.yml writes the fact owned by root")
def test_a_deploy_records_its_new_broker_and_the_way_back_the_old_one(tmp_path):
    assert record(tmp_path)["broker"] == {"host": "10.0.0.6", "port": 6379, "db": 1}
    # as restore.yml passes it: the broker recorded before the failed deploy
    back = record(tmp_path, "-e", json.dumps({"__celery_workers_recorded_broker": OLD}))
    assert back["broker"] == OLD
    assert "s3cret" not in json.dumps(back)
