"""Pause every worker's consumers around a planned switchover of the broker's primary, then
give each worker back exactly the queues it consumed (issue 22; playbooks/switchover.yml).

    python celery_pause.py pause TIMEOUT    stop consuming everywhere, wait until no worker holds
                                            a task; prints a line, then who consumed what (JSON)
    python celery_pause.py resume TIMEOUT   every worker of that JSON (on stdin) consumes its
                                            queues again

Runs as the app, with its environment, on one worker host. Why: the switchover closes the
clients' connections to the old primary, and kombu gives a channel's unacknowledged messages
back when its connection closes, so a task running then (acks_late) runs again once it is given
back (5 of 26 switchovers under load, tests/test_sentinel_failover.py). A worker that runs and
holds nothing has nothing to give back. Producers and beat go on publishing: the queues wait.

pause exits 1 when a worker still holds tasks (or consumes, or does not answer) after TIMEOUT
seconds, having resumed every consumer itself: nothing was switched; resume exits 1 when a
worker does not consume exactly its queues again within TIMEOUT. Each says so in one line.
"""

from __future__ import annotations

import json
import os
import sys
import time


def consumed(app, nodes=None) -> dict[str, list[str]]:
    """Each answering worker's queues (all workers, or `nodes`)."""
    inspect = app.control.inspect(destination=nodes, timeout=3.0)
    return {
        node: sorted(q["name"] for q in queues or [])
        for node, queues in (inspect.active_queues() or {}).items()
    }


def held(app, nodes: list[str]) -> dict[str, int]:
    """Tasks each worker runs or has reserved (a node missing from the answer: -1)."""
    inspect = app.control.inspect(destination=nodes, timeout=3.0)
    active, reserved = inspect.active() or {}, inspect.reserved() or {}
    return {
        node: len(active[node]) + len(reserved[node]) if node in active and node in reserved else -1
        for node in nodes
    }


def add_back(app, state: dict[str, list[str]]) -> None:
    for node, queues in state.items():
        for queue in queues:
            app.control.add_consumer(queue, destination=[node], reply=True, timeout=3.0)


def pause(app, timeout: float) -> str:
    state = consumed(app)
    if not state:
        raise SystemExit("celery_pause: no worker answers: nothing to pause")
    try:
        return _pause(app, state, timeout)
    except SystemExit:
        raise
    except Exception as exc:  # give the consumers back whatever went wrong, then say it
        add_back(app, state)
        raise SystemExit(
            f"celery_pause: the pause failed ({type(exc).__name__}: {exc}); the consumers are "
            "back, nothing was switched."
        ) from None


def _pause(app, state: dict[str, list[str]], timeout: float) -> str:
    nodes = sorted(state)
    deadline = time.monotonic() + timeout
    still = state
    while True:
        for node, queues in still.items():  # again for a worker that missed the broadcast
            for queue in queues:
                app.control.cancel_consumer(queue, destination=[node], reply=True, timeout=3.0)
        time.sleep(1)
        now = consumed(app, nodes)
        still = {node: queues for node, queues in now.items() if queues}
        counts = held(app, nodes)
        if not still and len(now) == len(nodes) and all(c == 0 for c in counts.values()):
            return f"paused {len(nodes)} workers ({', '.join(nodes)}): none holds a task\n" + (
                json.dumps(state)
            )
        if time.monotonic() > deadline:
            add_back(app, state)
            busy = (
                ", ".join(
                    f"{n} ({'no answer' if c < 0 else f'{c} tasks'})"
                    for n, c in counts.items()
                    if c
                )
                or ", ".join(sorted(still))
                or "none"
            )
            raise SystemExit(
                f"celery_pause: after {timeout:.0f} s these workers still hold tasks, consume or "
                f"do not answer: {busy}. Their consumers are back; nothing was switched. Run it "
                "again when the long tasks are done, or give it longer."
            )


def resume(app, timeout: float) -> str:
    state = json.load(sys.stdin)
    deadline = time.monotonic() + timeout
    error = ""
    while True:
        # (again each round: a worker's control connection may still be moving to the new
        # primary, and miss a broadcast; this process's may reach the old primary through a
        # sentinel that has not seen the switch yet: "The previous master is now a slave")
        try:
            add_back(app, state)
            now = consumed(app, sorted(state))
        except Exception as exc:  # noqa: BLE001 - a broker between two primaries: ask again
            error, now = f" ({type(exc).__name__}: {exc})", {}
        wrong = {n: now.get(n) for n, queues in state.items() if now.get(n) != queues}
        if not wrong:
            return f"resumed {len(state)} workers, each consuming its queues again"
        if time.monotonic() > deadline:
            said = "; ".join(
                f"{n} consumes {q or 'nothing'}, had {state[n]}" for n, q in wrong.items()
            )
            raise SystemExit(
                f"celery_pause: after {timeout:.0f} s, workers not consuming their queues: "
                f"{said}{error}"
            )
        time.sleep(2)


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[1] not in ("pause", "resume"):
        print(__doc__, file=sys.stderr)
        return 2
    from celery.app.utils import find_app

    app = find_app(os.environ["CELERY_APP"])
    print((pause if argv[1] == "pause" else resume)(app, float(argv[2])), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
