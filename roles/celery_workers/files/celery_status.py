"""What Celery itself says of a deployed layout, asked from a worker host as the app
(<app>-run python -c ...): the health gate after every start (roles/celery_workers/tasks/
health.yml), playbooks/verify.yml and rollback.yml's queue count; roles/celery_exporter's
exporter imports judge_group (installed beside it). Needs nothing from the app:
no task of its own, no result backend.

Reads one JSON object on the command line:
  {"mode": "host", "groups": {"fast": ["high", "default"], ...}, "timeout": 60,
   "node": "{group}@{host}"}
      every group of this host answers a ping and consumes exactly its queues (a group that
      just started gets until the timeout); "node" is how its process manager names a group's
      Celery node ("{group}@supervisor.{host}" under supervisor);
  {"mode": "queued", "queues": ["high", ...]}
      how many messages wait in each queue;
  {"mode": "probes", "groups": [{"name": "fast", "queues": [...]}, ...], "timeout": 60}
      Celery's built-in task `celery.accumulate` is sent to every consumed queue, and Celery's
      task events (every worker unit runs with --task-events) say which worker ran it: it must
      be a worker of a group that consumes that queue.
Prints one JSON object: "ok", the "rows" checked and the "lines" of the status table. Never a
traceback: an error becomes the row's text.
"""

import json
import os
import socket
import sys
import threading
import time
import uuid

from celery.app.utils import find_app

PROBE_TASK = "celery.accumulate"  # registered by Celery in every app


def judge_group(node: str, want: list, ping, active) -> dict:
    """A group's node is healthy when it answered a ping and consumes exactly its queues (`want`);
    `ping` and `active` are its answers to Celery's ping and active_queues (None: no answer).
    The health gate and roles/celery_exporter's celery_group_up both judge with this."""
    got = sorted(q["name"] for q in active or [])
    return {
        "node": node,
        "ping": "pong" if ping else "no answer",
        "queues": got,
        "expected": sorted(want),
        "ok": bool(ping) and got == sorted(want),
    }


def check_host(app, groups: dict, timeout: float = 60, node: str = "{group}@{host}") -> dict:
    host = socket.gethostname()
    nodes = {node.format(group=group, host=host): sorted(qs) for group, qs in groups.items()}
    deadline = time.monotonic() + timeout
    rows, ok = [], True
    for node, want in sorted(nodes.items()):
        # a reply ends the wait at once (one destination); a group that just (re)started needs
        # a moment, so ask again every 1.5 s or so until the deadline
        inspect = app.control.inspect(destination=[node], timeout=1.0)
        ping, active = None, None
        while True:
            ping = (inspect.ping() or {}).get(node)
            active = (inspect.active_queues() or {}).get(node) if ping else None
            if (ping and active is not None) or time.monotonic() >= deadline:
                break
            time.sleep(0.5)
        row = judge_group(node, want, ping, active)
        ok = ok and row["ok"]
        rows.append(row)
    lines = [
        f"worker {r['node']:<28} {r['ping']:<5} queues {','.join(r['queues']) or '-'}"
        + ("" if r["ok"] else f"   EXPECTED {','.join(r['expected'])}")
        for r in rows
    ]
    return {"ok": ok, "rows": rows, "lines": lines}


class TaskEvents:
    """Celery's task-succeeded events, captured in a thread: task id -> (worker, time)."""

    def __init__(self, app, wanted: set[str]):
        self.wanted, self.ran = wanted, {}
        self.ready, self.done = threading.Event(), threading.Event()
        self.connection = app.connection_for_read()
        self.receiver = app.events.Receiver(
            self.connection,
            handlers={"task-succeeded": self.on_task, "worker-heartbeat": self.on_heartbeat},
        )
        self.thread = threading.Thread(target=self.capture, daemon=True)

    def capture(self):
        try:  # wakeup: the workers send a heartbeat once this consumer listens
            self.receiver.capture(limit=None, timeout=None, wakeup=True)
        except Exception:  # the rows say what did not arrive
            self.done.set()

    def on_heartbeat(self, event):
        self.ready.set()

    def on_task(self, event):
        if event.get("uuid") in self.wanted:
            self.ran[event["uuid"]] = (event.get("hostname", "?"), time.monotonic())
            if set(self.ran) >= self.wanted:
                self.done.set()

    def __enter__(self):
        self.thread.start()
        self.ready.wait(10)  # events are published, not queued: listen before sending
        return self

    def __exit__(self, *exc):
        self.receiver.should_stop = True
        self.thread.join(5)
        self.connection.release()


def check_probes(app, groups: list, timeout: float = 60) -> dict:
    expect: dict[str, list[str]] = {}
    for group in groups:
        for queue in group["queues"]:
            expect.setdefault(queue, []).append(group["name"])
    ids = {queue: str(uuid.uuid4()) for queue in expect}
    sent, errors = {}, {}
    with TaskEvents(app, set(ids.values())) as events:
        for queue, task_id in sorted(ids.items()):
            try:
                app.send_task(PROBE_TASK, args=[f"verify-{queue}"], queue=queue, task_id=task_id)
                sent[queue] = time.monotonic()
            except Exception as exc:  # report every queue, not just the first failure
                errors[queue] = f"{type(exc).__name__}: {exc}"
        events.done.wait(timeout)
    rows, ok = [], True
    for queue, groups_of_queue in sorted(expect.items()):
        worker, finished = events.ran.get(ids[queue], (None, None))
        row = {"queue": queue, "expected": groups_of_queue, "ok": False}
        if worker:
            row.update(worker=worker, seconds=round(finished - sent[queue], 3))
            row["ok"] = worker.split("@")[0] in groups_of_queue
        else:
            row["worker"] = f"none ({errors.get(queue) or f'no worker ran it in {timeout:.0f} s'})"
        ok = ok and row["ok"]
        rows.append(row)
    lines = [
        f"probe  {r['queue']:<8} ran on {r['worker']:<28} {r.get('seconds', '-')} s"
        + ("" if r["ok"] else f"   EXPECTED a worker of {','.join(r['expected'])}")
        for r in rows
    ]
    return {"ok": ok, "rows": rows, "lines": lines}


def count_queued(app, queues: list) -> dict:
    with app.connection_for_write() as conn:
        client = conn.default_channel.client
        counts = {q: client.llen(q) for q in queues}
    return {"ok": True, "counts": counts, "lines": [f"{q}={n}" for q, n in counts.items()]}


def main() -> int:
    spec = json.loads(sys.argv[1])
    try:
        app = find_app(os.environ["CELERY_APP"])
        if spec["mode"] == "host":
            out = check_host(
                app, spec["groups"], spec.get("timeout", 60), spec.get("node", "{group}@{host}")
            )
        elif spec["mode"] == "queued":
            out = count_queued(app, spec["queues"])
        else:
            out = check_probes(app, spec["groups"], spec.get("timeout", 60))
    except Exception as exc:
        out = {"ok": False, "rows": [], "lines": [f"{spec['mode']}: {type(exc).__name__}: {exc}"]}
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
