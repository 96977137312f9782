#!/usr/bin/env python3
"""Benchmark: a recovery while a live worker holds tasks it does not list; count tasks run twice
and lost (issue 21: "0 tasks run twice in 10 runs each").

    .venv/bin/molecule converge -s default    # the fleet, once (molecule destroy -s default after)
    .venv/bin/python tests/bench/recovery.py [--runs 10] [--container celery-toolkit-default]
                                             [--helper FILE]

Each run plays the three cases of molecule/resources/recovery_cases.py on the default
scenario's stack VM (fast: prefork; slow: solo), each with a recovery in the middle, run as
playbooks/recover.yml runs it (the helper on the host, with the host's worker processes as
alive): a rate-limited task waiting for its token (4 of 5 in the bucket), a solo pool busy for
45 s (longer than the helper's 5 s inspect timeout), a group in its warm shutdown (SIGTERM to its
main process with 4 tasks of 40 s running). Prints one row per case: runs, tasks, run twice,
lost, runs where the worker was silent (the precondition), mean seconds of the recovery.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "molecule/resources"))

import recovery_cases  # noqa: E402  (a sibling folder, not an installed module)

HELPER = "/usr/local/lib/celery-toolkit/celery_recover.py"


def shell(container: str):
    def sh(command: str) -> str:
        proc = subprocess.run(
            ["docker", "exec", container, "sh", "-c", command],
            capture_output=True,
            text=True,
            check=True,
        )
        return proc.stdout.strip()

    return sh


def recoverer(container: str, seconds: list[float], helper: str = HELPER):
    def recover() -> str:
        started = time.monotonic()
        proc = subprocess.run(
            ["docker", "exec", container, "refapp-run", "python", helper, "--margin", "5"],
            capture_output=True,
            text=True,
        )
        seconds.append(time.monotonic() - started)
        return proc.stdout + proc.stderr

    return recover


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--container", default="celery-toolkit-default")
    parser.add_argument(
        "--helper",
        help="a celery_recover.py of the controller to run instead of the deployed one"
        " (e.g. an earlier version's, for a comparison): copied to the VM's /var/tmp",
    )
    args = parser.parse_args()
    sh = shell(args.container)
    helper = HELPER
    if args.helper:
        helper = "/var/tmp/celery_recover_compared.py"  # /tmp is a tmpfs docker cp misses
        subprocess.run(
            ["docker", "exec", "-i", args.container, "sh", "-c", f"cat > {helper}"],
            input=Path(args.helper).read_text(),
            text=True,
            check=True,
        )
        sh(f"chmod 0644 {helper}")
    tag = uuid.uuid4().hex[:6]
    rows = {
        name: {"runs": 0, "tasks": 0, "run_twice": 0, "lost": 0, "silent": 0, "refused": 0, "s": []}
        for name in recovery_cases.CASES
    }
    for run in range(args.runs):
        for name, case in recovery_cases.CASES.items():
            row = rows[name]
            out = case(
                sh,
                recoverer(args.container, row["s"], helper),
                f"bench-{tag}-{run}-{name.replace(' ', '-')}",
            )
            first = next((x for x in out["output"].splitlines() if x.startswith("{")), "{}")
            ok = json.loads(first).get("ok")
            row["runs"] += 1
            row["refused"] += 1 if ok is False else 0
            row["tasks"] += out["tasks"]
            row["run_twice"] += out["run_twice"]
            row["lost"] += out["lost"]
            row["silent"] += 1 if out.get("silent", True) else 0
            print(
                f"run {run + 1} {name}: twice {out['run_twice']} lost {out['lost']} ok {ok}"
                f" silent {out.get('silent', '-')} recovery {row['s'][-1]:.1f} s",
                flush=True,
            )
    print()
    print(
        "| case | runs | tasks | run twice | lost | worker silent | refused | recovery (mean s) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, row in rows.items():
        mean = sum(row["s"]) / len(row["s"]) if row["s"] else 0
        silent = row["silent"] if name != "rate-limited" else "-"
        print(
            f"| {name} | {row['runs']} | {row['tasks']} | {row['run_twice']} | {row['lost']}"
            f" | {silent} | {row['refused']} | {mean:.1f} |"
        )
    return 0 if all(r["run_twice"] == 0 and r["lost"] == 0 for r in rows.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
