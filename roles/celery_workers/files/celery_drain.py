"""Drain a worker group before it stops: the ExecStop of every worker unit.

    python celery_drain.py NODE TIMEOUT MAINPID   (NODE: group@host, as --hostname gives it;
                                                  MAINPID: systemd's, empty when it exited)

Runs as the app, with its environment, for any stop of the unit: a deploy, `systemctl stop`, a
VM's shutdown or reboot. It tells the worker to stop consuming every queue (cancel_consumer),
then waits, at most TIMEOUT seconds, until the worker holds no task: none running, none
reserved (prefetched), each acknowledged by the worker while it is still connected. Only then
does systemd send SIGTERM, Celery's warm shutdown, which then has nothing left to finish.

Why: a late-acknowledged task that finishes during a warm shutdown may not be acknowledged and
is delivered again (celery issue 3802); a drained worker shuts down with nothing in flight, so
a stop runs each task once. Tasks with an ETA are left to the warm shutdown, which gives them
back to the broker. A kill -9 or a power loss skips all of this: delivery stays at least once.

Never fails the stop: a worker that does not answer is stopped all the same.
"""

from __future__ import annotations

import os
import sys
import time


def held(inspect, node: str) -> int | None:
    """Tasks the worker runs or has reserved; None when it does not answer."""
    active = (inspect.active() or {}).get(node)
    reserved = (inspect.reserved() or {}).get(node)
    if active is None or reserved is None:
        return None
    return len(active) + len(reserved)


def drain(app, node: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    inspect = app.control.inspect(destination=[node], timeout=3.0)
    queues = sorted(q["name"] for q in (inspect.active_queues() or {}).get(node) or [])
    for queue in queues:
        app.control.cancel_consumer(queue, destination=[node], reply=True, timeout=3.0)
    silent = 0
    while time.monotonic() < deadline:
        count = held(inspect, node)
        if count == 0:
            return f"drained {node}: stopped consuming {','.join(queues) or '-'}, holds no task"
        silent = silent + 1 if count is None else 0
        if silent >= 3:
            return f"{node} does not answer: stopping it without a drain"
        time.sleep(1)
    return f"{node} still holds tasks after {timeout:.0f} s: the warm shutdown finishes them"


def alive(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ValueError, OSError):
        return False
    return True


def main(argv: list[str]) -> int:
    if len(argv) != 4:
        print(__doc__, file=sys.stderr)
        return 0
    if not alive(argv[3]):  # the worker exited (a crash, a kill): nothing to drain
        print(f"{argv[1]} is not running: nothing to drain", flush=True)
        return 0
    try:
        from celery.app.utils import find_app

        print(drain(find_app(os.environ["CELERY_APP"]), argv[1], float(argv[2])), flush=True)
    except Exception as exc:  # never block a stop
        print(f"drain of {argv[1]} skipped: {type(exc).__name__}: {exc}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
