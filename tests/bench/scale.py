#!/usr/bin/env python3
"""Benchmark: cold deploy and idempotent re-run time for 1, 2, 4 and 8 worker hosts.

    .venv/bin/python tests/bench/scale.py [--sizes 1 2 4 8]

For each size it creates a fleet (one Redis VM plus N worker VMs running the fast group, the
first also slow, beat and Flower) on a private network, runs deploy.yml twice, records both
times and how many wheelhouses the controller built over the two runs (from an empty cache),
and destroys the fleet. The containers carry the project label with owner "bench-scale".
Prints a table: ratios matter, not seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
BIN = ROOT / ".venv" / "bin"
NET = "172.30.78"
GROUP = {"pool": "prefork", "max_tasks_per_child": 1000, "max_memory_per_child": 262144}
FAST = {
    "name": "fast",
    "queues": ["high", "default"],
    "concurrency": 2,
    "prefetch_multiplier": 4,
    "stop_timeout": 120,
    **GROUP,
}
SLOW = {
    "name": "slow",
    "queues": ["low"],
    "concurrency": 1,
    "prefetch_multiplier": 1,
    "stop_timeout": 1920,
    **GROUP,
}


def run(args: list[str], inventory: Path | None = None) -> tuple[str, float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    env.update(ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_NOCOLOR="1")
    started = time.monotonic()
    cmd = [*args[:1], *(["-i", str(inventory)] if inventory else []), *args[1:]]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
    seconds = time.monotonic() - started
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd[:4])} failed:\n{proc.stdout[-3000:]}{proc.stderr[-1500:]}")
    return proc.stdout, seconds


def wheelhouses_built(out: str) -> int:
    """Wheelhouses the controller built in this deploy (not reused from its cache)."""
    return len(re.findall(r"^changed: \[[^\]]+ -> localhost\] => \(item=\d+\.\d+", out, re.M))


def write_fleet(folder: Path, n: int) -> tuple[Path, Path]:
    workers = [f"bench-w{i}" for i in range(1, n + 1)]
    platforms = [
        {
            "name": "bench-broker",
            "networks": [{"name": "celery-toolkit-bench", "ipv4_address": f"{NET}.10"}],
        }
    ]
    platforms += [
        {
            "name": w,
            "networks": [{"name": "celery-toolkit-bench", "ipv4_address": f"{NET}.{20 + i}"}],
        }
        for i, w in enumerate(workers)
    ]
    fleet = folder / "fleet.yml"
    fleet.write_text(yaml.safe_dump({"fleet_platforms": platforms, "fleet_owner": "bench-scale"}))
    hosts = {"bench-broker": None, **dict.fromkeys(workers)}
    inventory = {
        "all": {
            "hosts": hosts,
            "vars": {
                "ansible_connection": "community.docker.docker",
                "ansible_python_interpreter": "/usr/bin/python3",
                "celery_toolkit_sandbox": True,
                "redis_password": "bench-broker-password-not-secret",
                "redis_bind_addresses": ["127.0.0.1", f"{NET}.10"],
                "celery_app_broker_url": f"redis://:bench-broker-password-not-secret@{NET}.10:6379/0",
                "flower_basic_auth_user": "admin",
                "flower_basic_auth_password": "bench-flower-password",
                "celery_workers_beat_enabled": False,
                "celery_workers_groups": [FAST],
                # an empty cache per size: every cold deploy builds its wheelhouse once
                "celery_app_wheelhouse_cache": str(folder / "wheelhouse"),
            },
            "children": {
                "broker": {"hosts": {"bench-broker": None}},
                "celery_workers": {"hosts": dict.fromkeys(workers)},
                "flower": {"hosts": {workers[0]: None}},
            },
        }
    }
    inventory["all"]["hosts"][workers[0]] = {
        "celery_workers_beat_enabled": True,
        "celery_workers_groups": [FAST, SLOW],
    }
    hosts_file = folder / "hosts.yml"
    hosts_file.write_text(yaml.safe_dump(inventory))
    return hosts_file, fleet


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 2, 4, 8])
    args = parser.parse_args()
    rows = []
    for n in args.sizes:
        with tempfile.TemporaryDirectory() as tmp:
            hosts, fleet = write_fleet(Path(tmp), n)
            create = [
                str(BIN / "ansible-playbook"),
                "molecule/resources/create.yml",
                "-e",
                f"@{fleet}",
            ]
            destroy = [
                str(BIN / "ansible-playbook"),
                "molecule/resources/destroy.yml",
                "-e",
                "fleet_owner=bench-scale",
            ]
            run(destroy)
            run(create)
            try:
                out, cold = run([str(BIN / "ansible-playbook"), "playbooks/deploy.yml"], hosts)
                built = wheelhouses_built(out)
                out2, warm = run([str(BIN / "ansible-playbook"), "playbooks/deploy.yml"], hosts)
                built += wheelhouses_built(out2)
                changed = sum(int(c) for c in re.findall(r"changed=(\d+)", out2))
            finally:
                run(destroy)
        rows.append((n, cold, warm, built, changed))
        print(f"  {n} worker hosts: cold {cold:.0f} s, re-run {warm:.0f} s", file=sys.stderr)

    base_cold, base_warm = rows[0][1], rows[0][2]
    print(
        f"{'workers':>7} {'cold s':>8} {'x1':>6} {'re-run s':>9} {'x1':>6} "
        f"{'wheelhouses built':>18} {'re-run changed':>15}"
    )
    for n, cold, warm, built, changed in rows:
        print(
            f"{n:>7} {cold:>8.0f} {cold / base_cold:>6.2f} {warm:>9.0f} {warm / base_warm:>6.2f} "
            f"{built:>18} {changed:>15}"
        )
    print(json.dumps({"rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
