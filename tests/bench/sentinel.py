#!/usr/bin/env python3
"""Benchmark: lose the replicated broker's primary under load, again and again (issue 22).

    .venv/bin/molecule converge -s sentinel   # the fleet, once (then: molecule destroy -s sentinel)
    .venv/bin/python tests/bench/sentinel.py [--runs 10]

Each run: the reference app's producer on sentinel-worker-2 publishes a ledger task every 20 ms
(every tenth to the slow group), `docker kill` of the primary's VM, 20 s more of load through the
promoted replica, then every acknowledged task is waited for; the killed VM is started again
and waited for as a replica in sync before the next run. Prints, for each run: seconds until a
replica was promoted, the longest time the ledger did not grow (the queues not consumed), tasks
published / acknowledged / refused to the producer, lost (acknowledged, never run), run twice,
whether any worker, beat or Flower was restarted, and how long the killed VM took to rejoin.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FOLDERS = ("molecule/sentinel/tests", "molecule/resources", "plugins/filter")
sys.path[:0] = [str(ROOT / folder) for folder in FOLDERS]

from failover import kill_primary_under_load, restart_lost_node  # noqa: E402

COLUMNS = (
    ("run", "run"),
    ("killed", "killed"),
    ("promoted_after_s", "promoted s"),
    ("longest_stall_s", "not consumed s"),
    ("longest_publish_gap_s", "publish gap s"),
    ("published", "published"),
    ("acknowledged", "acked"),
    ("publishes_refused", "refused"),
    ("lost", "lost"),
    ("ran_twice", "twice"),
    ("restarted", "restarts"),
    ("rejoined_s", "rejoined s"),
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    rows = []
    print(" | ".join(title for _, title in COLUMNS))
    for run in range(1, args.runs + 1):
        figures, kept = kill_primary_under_load()
        figures.update(run=run, restarted="none" if kept else "YES", rejoined_s=restart_lost_node())
        rows.append(figures)
        print(" | ".join(str(figures[key]) for key, _ in COLUMNS), flush=True)
    worst = {
        "runs": len(rows),
        "runs_losing_nothing": sum(1 for r in rows if r["lost"] == 0),
        "runs_running_nothing_twice": sum(1 for r in rows if r["ran_twice"] == 0),
        "longest_not_consumed_s": max(r["longest_stall_s"] for r in rows),
        "runs_with_a_restart": sum(1 for r in rows if r["restarted"] != "none"),
    }
    print(json.dumps(worst))
    return 0


if __name__ == "__main__":
    sys.exit(main())
