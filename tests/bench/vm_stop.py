#!/usr/bin/env python3
"""Benchmark: stop a whole worker VM mid-load, again and again; count tasks lost and run twice.

    .venv/bin/molecule converge -s cluster     # the fleet, once (molecule destroy -s cluster after)
    .venv/bin/python tests/bench/vm_stop.py [--runs 10] [--tasks 200] [--compare 3] [--kill-runs 5]

Each run sends TASKS ledger tasks of 0.1 s to `high` (consumed by the fast group on
cluster-fast-1 and cluster-fast-2), waits 2 s, `docker stop`s cluster-fast-2 (systemd shuts
down: every worker unit drains, then stops warmly), waits until every task ran, starts the VM
again and waits until its group answers. It does RUNS runs on an idle machine, then RUNS runs
while CPU burners (one per core, started and stopped by this script) load the machine; with
--compare N, N runs of each again with the drain switched off on the stopped VM (a runtime
drop-in that empties ExecStop=, gone when the VM restarts): the stop is then Celery's warm
shutdown alone.
Prints the series side by side: runs, tasks not yet run when the VM stopped, lost, run twice,
and the time `docker stop` took.

Then KILL_RUNS times: kill -9 of the fast group's main process on cluster-fast-2 with 10 tasks
of 4 s in flight, timed until every task ran (the unit's ExecStopPost gives back what the dead
worker held). With --compare, one run more with that ExecStopPost emptied: how many tasks are
still stranded after 90 s (given back by hand afterwards, as playbooks/recover.yml does).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import subprocess
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "molecule/resources"))

from load import SEND  # noqa: E402  (a sibling folder, not an installed module)
from playbook_runner import LEDGER  # noqa: E402

SENDER, STOPPED, OTHER = "cluster-fast-1", "cluster-fast-2", "cluster-fast-1"
PING = """
import sys
from refapp import app
print(bool(app.control.inspect(destination=[sys.argv[1]], timeout=3).ping()))
"""


def as_app(container: str, script: str, *args: str) -> str:
    proc = subprocess.run(
        ["docker", "exec", container, "refapp-run", "python", "-c", script, *args],
        capture_output=True,
        text=True,
        check=True,
    )
    return proc.stdout.strip()


def ledger(prefix: str) -> dict:
    return json.loads(as_app(SENDER, LEDGER, prefix))


def wait(predicate, timeout: float, step: float = 1.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return False


DROPIN = "/run/systemd/system/refapp-worker@fast.service.d"
NO_DRAIN = (
    f"mkdir -p {DROPIN} && printf '[Service]\\nExecStop=\\n' > {DROPIN}/nodrain.conf"
    " && systemctl daemon-reload"
)


def one_run(n: int, drain: bool) -> dict:
    prefix = f"bench-vmstop-{uuid.uuid4().hex[:8]}"
    if not drain:
        subprocess.run(["docker", "exec", STOPPED, "sh", "-c", NO_DRAIN], check=True)
    as_app(SENDER, SEND, prefix, str(n), "0.1")
    time.sleep(2)
    before = len(ledger(prefix)["ledger"])
    started = time.monotonic()
    subprocess.run(["docker", "stop", "-t", "120", STOPPED], check=True, capture_output=True)
    stop_seconds = time.monotonic() - started
    try:
        wait(
            lambda: len(ledger(prefix)["ledger"]) >= n and not ledger(prefix)["queued"]["high"], 240
        )
        time.sleep(3)  # a task run twice would show by now
        runs = ledger(prefix)["ledger"]
    finally:
        subprocess.run(["docker", "start", STOPPED], check=True, capture_output=True)
    node = f"fast@{STOPPED}"
    if not wait(lambda: as_app(OTHER, PING, node) == "True", 180, 3):
        sys.exit(f"{node} did not answer again after its VM started")
    expected = {f"{prefix}-{i}" for i in range(n)}
    return {
        "pending": n - before,
        "lost": len(expected - set(runs)),
        "twice": sum(1 for count in runs.values() if count > 1),
        "stop_s": stop_seconds,
    }


def burn(seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        pass


def series(runs: int, n: int, busy: bool, drain: bool) -> list[dict]:
    burners = []
    if busy:  # bounded: each burner stops by itself after an hour, and is stopped below
        burners = [
            multiprocessing.Process(target=burn, args=(3600,), daemon=True)
            for _ in range(multiprocessing.cpu_count())
        ]
        for proc in burners:
            proc.start()
    try:
        results = []
        for i in range(runs):
            results.append(one_run(n, drain))
            label = f"{'drain' if drain else 'no drain'}, {'busy' if busy else 'idle'}"
            print(f"  {label} run {i + 1}: {results[-1]}", flush=True)
        return results
    finally:
        for proc in burners:
            proc.terminate()
            proc.join()


NO_RECOVER = (
    f"mkdir -p {DROPIN} && printf '[Service]\\nExecStopPost=\\n' > {DROPIN}/norecover.conf"
    " && systemctl daemon-reload"
)
RECOVER = "refapp-run python /usr/local/lib/celery-toolkit/celery_recover.py --margin 5"


def main_pid(container: str) -> str:
    return subprocess.run(
        [
            "docker",
            "exec",
            container,
            "systemctl",
            "show",
            "-p",
            "MainPID",
            "--value",
            "refapp-worker@fast",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


def kill_run(recover: bool, n: int = 10, seconds: float = 4.0, patience: float = 90) -> dict:
    """kill -9 of the fast group's main process on STOPPED with N tasks of SECONDS in flight;
    with recover=False its ExecStopPost is emptied (runtime drop-in) for this run."""
    prefix = f"bench-kill9-{uuid.uuid4().hex[:8]}"
    if not recover:
        subprocess.run(["docker", "exec", STOPPED, "sh", "-c", NO_RECOVER], check=True)
    try:
        as_app(SENDER, SEND, prefix, str(n), str(seconds))
        time.sleep(2)
        pid = main_pid(STOPPED)
        killed = time.monotonic()
        subprocess.run(["docker", "exec", STOPPED, "kill", "-9", pid], check=True)
        all_ran = wait(lambda: len(ledger(prefix)["ledger"]) >= n, patience)
        after = round(time.monotonic() - killed, 1)
        stranded = n - len(ledger(prefix)["ledger"])
    finally:
        if not recover:
            subprocess.run(
                [
                    "docker",
                    "exec",
                    STOPPED,
                    "sh",
                    "-c",
                    f"rm -f {DROPIN}/norecover.conf && systemctl daemon-reload",
                ],
                check=True,
            )
    if not all_ran:  # give the stranded tasks back by hand, as recover.yml does
        subprocess.run(
            ["docker", "exec", SENDER, "sh", "-c", RECOVER], check=True, capture_output=True
        )
        if not wait(lambda: len(ledger(prefix)["ledger"]) >= n, 60):
            sys.exit(f"{prefix}: tasks still not run after a manual recovery")
    node = f"fast@{STOPPED}"
    if not wait(lambda: as_app(OTHER, PING, node) == "True", 120, 3):
        sys.exit(f"{node} did not answer again after kill -9")
    runs = ledger(prefix)["ledger"]
    return {
        "all_ran_s": after if all_ran else None,
        "stranded_after_s": None if all_ran else (patience, stranded),
        "twice": sum(1 for count in runs.values() if count > 1),
        "lost": n - len(runs),
    }


def kill_series(runs: int, recover: bool) -> list[dict]:
    results = []
    for i in range(runs):
        results.append(kill_run(recover))
        label = "ExecStopPost recovery" if recover else "no recovery"
        print(f"  kill -9, {label}, run {i + 1}: {results[-1]}", flush=True)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument(
        "--compare",
        type=int,
        default=0,
        metavar="RUNS",
        help="runs without the drain (and one kill -9 without recovery)",
    )
    parser.add_argument("--kill-runs", type=int, default=5, help="kill -9 runs (0: none)")
    args = parser.parse_args()
    modes = {True: args.runs, False: args.compare}
    table = {
        (drain, busy): series(runs, args.tasks, busy, drain)
        for drain, runs in modes.items()
        if runs
        for busy in (False, True)
    }
    print(f"\nstop a fast VM mid-load: {args.tasks} tasks of 0.1 s on 'high'")
    print(
        f"{'stop':<10} {'machine':<8} {'runs':>5} {'pending at stop':>16} {'lost':>5} "
        f"{'run twice':>10} {'docker stop s':>14}"
    )
    for (drain, busy), results in table.items():
        pending = sorted(r["pending"] for r in results)
        stops = sorted(r["stop_s"] for r in results)
        print(
            f"{'drain' if drain else 'warm only':<10} {'busy' if busy else 'idle':<8} "
            f"{len(results):>5} {f'{pending[0]}-{pending[-1]}':>16} "
            f"{sum(r['lost'] for r in results):>5} {sum(r['twice'] for r in results):>10} "
            f"{f'{stops[0]:.1f}-{stops[-1]:.1f}':>14}"
        )
    if args.kill_runs:
        kills = {True: kill_series(args.kill_runs, True)}
        if args.compare:
            kills[False] = kill_series(1, False)
        print(f"\nkill -9 of fast's main process on {STOPPED}, 10 tasks of 4 s on 'high'")
        print(f"{'recovery':<22} {'runs':>5} {'all ran after s':>16} {'lost':>5} {'run twice':>10}")
        for recover, results in kills.items():
            done = sorted(r["all_ran_s"] for r in results if r["all_ran_s"] is not None)
            stuck = [r["stranded_after_s"] for r in results if r["stranded_after_s"]]
            ran = f"{done[0]}-{done[-1]}" if done else "-"
            if stuck:
                ran += f" ({sum(s[1] for s in stuck)} not run after {stuck[0][0]:.0f} s)"
            print(
                f"{'ExecStopPost' if recover else 'none (visibility timeout)':<22} "
                f"{len(results):>5} {ran:>16} {sum(r['lost'] for r in results):>5} "
                f"{sum(r['twice'] for r in results):>10}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
