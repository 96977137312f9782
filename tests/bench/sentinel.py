#!/usr/bin/env python3
"""Benchmark: lose the replicated broker's primary under load, again and again (issue 22).

    .venv/bin/molecule converge -s sentinel   # the fleet, once (then: molecule destroy -s sentinel)
    .venv/bin/python tests/bench/sentinel.py [--runs 10] [--switchovers 10]

Each run: the reference app's producer on sentinel-worker-2 publishes a ledger task every 20 ms
(every tenth to the slow group), `docker kill` of the primary's VM, 20 s more of load through the
promoted replica, then every acknowledged task is waited for; the killed VM is started again
and waited for as a replica in sync before the next run. Prints, for each run: seconds until a
replica was promoted, the longest time the ledger did not grow (the queues not consumed), tasks
published / acknowledged / refused to the producer, lost (acknowledged, never run), run twice,
whether any worker, beat or Flower was restarted, and how long the killed VM took to rejoin.
First, SWITCHOVERS planned switchovers (playbooks/switchover.yml) under the same load, the same
figures. The playbooks run against Molecule's inventory of the converged scenario (the newest
~/.ansible/tmp/molecule.*.sentinel, or $MOLECULE_INVENTORY_FILE).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FOLDERS = ("molecule/sentinel/tests", "molecule/resources", "plugins/filter")
sys.path[:0] = [str(ROOT / folder) for folder in FOLDERS]

from failover import (  # noqa: E402
    kill_primary_under_load,
    restart_lost_node,
    switchover_under_load,
)

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
    ("kill_s", "docker kill s"),
    ("lost_acknowledged_s_before", "lost: acked s before the kill"),
)

SWITCHOVER_COLUMNS = (
    ("run", "switchover"),
    ("from", "from"),
    ("to", "to"),
    ("playbook_s", "playbook s"),
    *COLUMNS[3:11],
    ("refusals", "refused with"),
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--switchovers", type=int, default=10)
    args = parser.parse_args()
    # ansible-playbook of this virtualenv
    os.environ["PATH"] = f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"
    if "MOLECULE_INVENTORY_FILE" not in os.environ:
        found = glob.glob(os.path.expanduser("~/.ansible/tmp/molecule.*.sentinel/inventory/*.yml"))
        if not found:
            sys.exit("no converged sentinel scenario: run .venv/bin/molecule converge -s sentinel")
        os.environ["MOLECULE_INVENTORY_FILE"] = max(found, key=os.path.getmtime)
    print(" | ".join(title for _, title in SWITCHOVER_COLUMNS))
    for run in range(1, args.switchovers + 1):
        figures, kept = switchover_under_load()
        figures.update(run=run, restarted="none" if kept else "YES")
        print(" | ".join(str(figures.get(key, "")) for key, _ in SWITCHOVER_COLUMNS), flush=True)
    rows = []
    print(" | ".join(title for _, title in COLUMNS))
    for run in range(1, args.runs + 1):
        figures, kept = kill_primary_under_load()
        figures.update(run=run, restarted="none" if kept else "YES", rejoined_s=restart_lost_node())
        rows.append(figures)
        print(" | ".join(str(figures.get(key, "")) for key, _ in COLUMNS), flush=True)
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
