#!/usr/bin/env python3
"""Benchmark: deploy.yml's wall time for 1, 2, 4 and 8 worker hosts, and rollback.yml's.

    .venv/bin/python tests/bench/scale.py [--sizes 1 2 4 8]
        [--runs before:<commit>:1 after:.:1 after:.:25%:8] [--json .cache/bench/scale.json]

For each size and run (a label, a git revision to deploy from, a celery_deploy_batch; runs of
one size follow each other, so they see the same machine) it creates a fleet (one Redis VM plus
N worker VMs running the fast group, the first also slow, beat and Flower) on a private network
and runs deploy.yml three times: cold (from an empty wheelhouse cache), a re-run that changes
nothing, and a re-run in which the last host's fast group has one more process (one group
restarts on one host); on the 1-host fleet it then runs rollback.yml twice. It records each
run's time, each play's time, the re-run's changed tasks and the wheelhouses built, then
destroys the fleet (its containers carry the project label with owner "bench-scale"). A
revision other than "." is deployed from a git worktree of it (the toolkit before a change).
Ratios matter, not seconds.
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

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
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


def run(
    args: list[str], inventory: Path | None = None, cwd: Path = ROOT, times: Path | None = None
) -> tuple[str, float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    env.update(ANSIBLE_CONFIG=str(cwd / "ansible.cfg"), ANSIBLE_NOCOLOR="1")
    if times:
        env.update(
            ANSIBLE_CALLBACK_PLUGINS=str(HERE / "callback_plugins"),
            ANSIBLE_CALLBACKS_ENABLED="play_times",
            CELERY_TOOLKIT_PLAY_TIMES=str(times),
        )
    started = time.monotonic()
    cmd = [*args[:1], *(["-i", str(inventory)] if inventory else []), *args[1:]]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, env=env)
    seconds = time.monotonic() - started
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd[:4])} failed:\n{proc.stdout[-3000:]}{proc.stderr[-1500:]}")
    return proc.stdout, seconds


def wheelhouses_built(out: str) -> int:
    """Wheelhouses the controller built in this deploy (not reused from its cache)."""
    return len(re.findall(r"^changed: \[[^\]]+ -> localhost\] => \(item=\d+\.\d+", out, re.M))


def write_fleet(folder: Path, n: int, batch: str, bumped: bool = False) -> tuple[Path, Path]:
    """The fleet and its inventory; bumped: the last worker host's fast group gets one more
    process (a re-run then restarts that one group on that one host)."""
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
                # the benchmark's app logs in as `default`, as inventories before ACL users did
                "redis_default_user_enabled": True,
                "redis_bind_addresses": ["127.0.0.1", f"{NET}.10"],
                "celery_app_broker_url": f"redis://:bench-broker-password-not-secret@{NET}.10:6379/0",
                "flower_basic_auth_user": "admin",
                "flower_basic_auth_password": "bench-flower-password",
                "celery_workers_beat_enabled": False,
                "celery_workers_groups": [FAST],
                "celery_deploy_batch": batch,
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
    if bumped:
        last = inventory["all"]["hosts"].get(workers[-1]) or {"celery_workers_groups": [FAST]}
        last["celery_workers_groups"] = [
            {**g, "concurrency": g["concurrency"] + 1} if g["name"] == "fast" else g
            for g in last["celery_workers_groups"]
        ]
        inventory["all"]["hosts"][workers[-1]] = last
    hosts_file = folder / "hosts.yml"
    hosts_file.write_text(yaml.safe_dump(inventory))
    return hosts_file, fleet


def worktree(rev: str, tree: Path) -> Path:
    """A checkout of rev to deploy from (the toolkit before a change), sharing this .venv."""
    subprocess.run(
        ["git", "worktree", "add", "--detach", str(tree), rev],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    (tree / ".venv").symlink_to(ROOT / ".venv")
    return tree


def measure(n: int, batch: str, tree: Path, folder: Path) -> dict:
    """Cold deploy, re-run, and a re-run that restarts one group on one host, on a new fleet."""
    hosts, fleet = write_fleet(folder, n, batch)
    playbook = str(BIN / "ansible-playbook")
    destroy = [playbook, "molecule/resources/destroy.yml", "-e", "fleet_owner=bench-scale"]
    run(destroy)
    run([playbook, "molecule/resources/create.yml", "-e", f"@{fleet}"])
    row: dict = {"workers": n, "batch": batch}
    try:
        built = 0
        for step in ("cold", "rerun", "restart_one"):
            if step == "restart_one":
                hosts, _ = write_fleet(folder, n, batch, bumped=True)
            times = folder / f"{step}.json"
            out, seconds = run([playbook, "playbooks/deploy.yml"], hosts, cwd=tree, times=times)
            built += wheelhouses_built(out)
            row[step] = round(seconds, 1)
            row[f"{step}_plays"] = json.loads(times.read_text())
            row[f"{step}_changed"] = sum(int(c) for c in re.findall(r"changed=(\d+)", out))
        row["wheelhouses_built"] = built
        if n == 1:  # the incident path on a converged single host: split -> single, then again
            for step in ("rollback", "rollback_again"):
                _, row[step] = run([playbook, "playbooks/rollback.yml"], hosts, cwd=tree)
                row[step] = round(row[step], 1)
    finally:
        run(destroy)
    return row


def plays(timed: list) -> dict:
    """[[play, seconds], ...] -> play -> (seconds added up, times it ran), in run order."""
    out: dict = {}
    for name, seconds in timed:
        total, count = out.get(name, (0.0, 0))
        out[name] = (total + seconds, count + 1)
    return out


def table(rows: list[dict], label: str) -> str:
    lines = [
        f"{label}: deploy.yml wall time, s (x1: divided by the 1-host figure)",
        f"{'workers':>7} {'batch':>5} {'cold':>7} {'x1':>5} {'re-run':>7} {'x1':>5} {'/cold':>6} "
        f"{'restart 1':>9} {'x1':>5} {'re-run changed':>14} {'wheelhouses':>11}",
    ]
    for r in rows:
        one = next(
            x
            for x in rows
            if x["batch"] == r["batch"]
            and x["workers"] == min(y["workers"] for y in rows if y["batch"] == r["batch"])
        )
        lines.append(
            f"{r['workers']:>7} {r['batch']:>5} {r['cold']:>7.1f} {r['cold'] / one['cold']:>5.2f} "
            f"{r['rerun']:>7.1f} {r['rerun'] / one['rerun']:>5.2f} {r['rerun'] / r['cold']:>6.2f} "
            f"{r['restart_one']:>9.1f} {r['restart_one'] / one['restart_one']:>5.2f} "
            f"{r['rerun_changed']:>14} {r['wheelhouses_built']:>11}"
        )
    lines.append("")
    lines.append(
        "wall time of each play, s (cold / re-run / restart 1; a rolling play's batches added up):"
    )
    for r in rows:
        lines.append(f"  {r['workers']} workers, batch {r['batch']}:")
        steps = [plays(r[f"{step}_plays"]) for step in ("cold", "rerun", "restart_one")]
        for name in dict.fromkeys(n for step in steps for n in step):
            cells = [step.get(name, (0.0, 0)) for step in steps]
            batches = max(count for _, count in cells)
            note = f"  ({batches} batches)" if batches > 1 else ""
            lines.append("    " + " ".join(f"{t:>6.1f}" for t, _ in cells) + f"  {name}{note}")
    return "\n".join(lines)


def side_by_side(rows: list[dict], labels: list[str]) -> str:
    """Each size's times under each run, in one table."""
    head = f"{'workers':>7}" + "".join(f" | {label[:26]:^26}" for label in labels)
    sub = f"{'':>7}" + " | cold   re-run  restart 1 " * len(labels)
    lines = [head, sub]
    for n in sorted({r["workers"] for r in rows}):
        line = f"{n:>7}"
        for label in labels:
            r = next((x for x in rows if x["workers"] == n and x["label"] == label), None)
            line += (
                f" | {r['cold']:>5.0f} {r['rerun']:>7.1f} {r['restart_one']:>10.1f} "
                if r
                else " | " + " " * 25
            )
        lines.append(line)
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument(
        "--runs",
        nargs="+",
        default=["after:.:1", "after:.:25%"],
        help="LABEL:REV:BATCH[:SIZES], REV '.' = this working tree, SIZES e.g. 4,8 (default all)",
    )
    parser.add_argument("--json", type=Path, help="also write the rows to this file")
    args = parser.parse_args()
    runs = [(spec.split(":") + [""])[:4] for spec in args.runs]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        trees = {
            rev: ROOT if rev == "." else worktree(rev, Path(tmp) / f"rev{i}")
            for i, rev in enumerate(dict.fromkeys(rev for _, rev, _, _ in runs))
        }
        try:
            # size by size, every run of a size in turn: they see the same machine
            for n in args.sizes:
                for label, rev, batch, sizes in runs:
                    if sizes and str(n) not in sizes.split(","):
                        continue
                    with tempfile.TemporaryDirectory() as size_tmp:
                        row = measure(n, batch, trees[rev], Path(size_tmp))
                    row["label"] = f"{label} (batch {batch})"
                    rows.append(row)
                    print(
                        f"  {row['label']}: {n} workers: cold {row['cold']:.0f} s, "
                        f"re-run {row['rerun']:.1f} s, restart one {row['restart_one']:.1f} s",
                        file=sys.stderr,
                        flush=True,
                    )
                    if args.json:
                        args.json.parent.mkdir(parents=True, exist_ok=True)
                        args.json.write_text(json.dumps(rows, indent=1))
        finally:
            for rev, tree in trees.items():
                if rev != ".":
                    subprocess.run(
                        ["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, check=False
                    )
    labels = list(dict.fromkeys(r["label"] for r in rows))
    print(side_by_side(rows, labels))
    print()
    print("rollback.yml on the converged 1-host fleet, s (split -> single, then a second run):")
    for r in rows:
        if "rollback" in r:
            print(f"  {r['label']:<28} {r['rollback']:>6.1f} {r['rollback_again']:>6.1f}")
    for label in labels:
        print()
        print(table([r for r in rows if r["label"] == label], label))
    return 0


if __name__ == "__main__":
    sys.exit(main())
