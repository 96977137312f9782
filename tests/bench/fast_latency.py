#!/usr/bin/env python3
"""Benchmark: latency of fast (high-queue) tasks while the slow queue is flooded, measured on
the deployed layouts side by side in one run: split (fast + slow groups) vs single worker.

    .venv/bin/python tests/bench/fast_latency.py [--inventory inventories/sandbox] [--host H]

It deploys the split layout (deploy.yml), measures, rolls back (rollback.yml), measures, and
deploys the split layout again, so the fleet ends as it started. Needs a deployed fleet
(scripts/demo) of the reference app. Prints p50/p99/max per layout and the ratio.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Runs on the worker host as the app (refapp-run python -c ...).
MEASURE = r"""
import json, sys, time
from refapp import app
from refapp.tasks.heavy import scrape_site
from refapp.tasks.probe import probe
n_slow, slow_seconds = int(sys.argv[1]), float(sys.argv[2])
n_probes, gap = int(sys.argv[3]), float(sys.argv[4])
for i in range(n_slow):
    scrape_site.delay(f"https://example.invalid/{i}", slow_seconds)
time.sleep(0.5)  # the flood is being consumed
latencies = []
for i in range(n_probes):
    started = time.monotonic()
    probe.apply_async(args=[f"bench-{i}"], queue="high").get(timeout=600)
    latencies.append(time.monotonic() - started)
    time.sleep(gap)
deadline = time.monotonic() + 600  # let the flood drain before the next layout
with app.connection_for_write() as conn:
    while conn.default_channel.client.llen("low") and time.monotonic() < deadline:
        time.sleep(1)
time.sleep(slow_seconds + 1)
print(json.dumps(latencies))
"""


def ansible(args: list[str]) -> str:
    proc = subprocess.run(args, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(args[:4])} failed:\n{proc.stdout[-3000:]}{proc.stderr[-2000:]}")
    return proc.stdout


def measure(inventory: str, host: str, args: argparse.Namespace) -> list[float]:
    out = ansible(
        [
            str(ROOT / ".venv/bin/ansible"),
            host,
            "-i",
            inventory,
            "-b",
            "-m",
            "ansible.builtin.command",
            "-a",
            json.dumps(
                {
                    "argv": [
                        "/usr/local/sbin/refapp-run",
                        "python",
                        "-c",
                        MEASURE,
                        str(args.slow_tasks),
                        str(args.slow_seconds),
                        str(args.probes),
                        str(args.gap),
                    ]
                }
            ),
        ]
    )
    return json.loads(out.split(">>", 1)[1].strip().splitlines()[-1])


def summary(latencies: list[float]) -> dict[str, float]:
    ordered = sorted(latencies)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return {"p50": statistics.median(ordered), "p99": p99, "max": ordered[-1]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inventory", default=str(ROOT / "inventories/sandbox"))
    parser.add_argument("--host", default="celery-sandbox-1", help="a worker host to measure from")
    parser.add_argument("--slow-tasks", type=int, default=20, help="long tasks flooding low")
    parser.add_argument("--slow-seconds", type=float, default=3.0, help="duration of each")
    parser.add_argument("--probes", type=int, default=30, help="fast tasks timed")
    parser.add_argument("--gap", type=float, default=0.2, help="seconds between fast tasks")
    args = parser.parse_args()
    playbook = str(ROOT / ".venv/bin/ansible-playbook")
    results = {}
    for layout, book in (("split", "deploy.yml"), ("single", "rollback.yml")):
        ansible([playbook, "-i", args.inventory, str(ROOT / "playbooks" / book)])
        results[layout] = summary(measure(args.inventory, args.host, args))
    ansible([playbook, "-i", args.inventory, str(ROOT / "playbooks/deploy.yml")])

    print(
        f"fast-task latency, {args.probes} tasks on 'high' while {args.slow_tasks} tasks of "
        f"{args.slow_seconds:g} s flood 'low' (host {args.host})"
    )
    print(f"{'layout':<8} {'p50 ms':>10} {'p99 ms':>10} {'max ms':>10}")
    for layout, s in results.items():
        ms = [s[k] * 1000 for k in ("p50", "p99", "max")]
        print(f"{layout:<8} {ms[0]:>10.1f} {ms[1]:>10.1f} {ms[2]:>10.1f}")
    ratio = results["single"]["p99"] / results["split"]["p99"]
    print(f"single/split p99 ratio: {ratio:.0f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
