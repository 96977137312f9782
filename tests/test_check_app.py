"""scripts/check-app, the routing check as a command for an app's CI."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def check_app(*args):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "app/src")}
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts/check-app"), "-A", "refapp", *args],
        capture_output=True,
        text=True,
        env=env,
    )


def test_reference_app_with_default_layout_passes():
    proc = check_app()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.startswith("ok: 11 tasks of refapp land in default, high, low")


def test_layout_without_a_consumer_for_low_fails_naming_the_tasks(tmp_path):
    layout = tmp_path / "layout.yml"
    layout.write_text(
        "celery_workers_groups:\n  - {name: fast, queues: [high, default], stop_timeout: 60}\n"
    )
    proc = check_app("--layout", str(layout))
    assert proc.returncode == 1
    assert proc.stdout.splitlines() == [
        "error: queue 'low' has no consumer: the app sends 3 task(s) there "
        "(refapp.tasks.heavy.scrape_site, refapp.tasks.heavy.sync_catalog, "
        "refapp.tasks.ledger.record_slow), and no worker group in celery_workers_groups consumes "
        "it, so they would wait forever. Add 'low' to the queues of a group, or route them "
        "elsewhere."
    ]
