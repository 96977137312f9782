"""Verify a deployed Celery layout from a worker host, as the app (<app>-run python -c ...).

Reads one JSON object on the command line:
  {"mode": "host", "groups": {"fast": ["high", "default"], ...}}
      every group of this host answers ping and consumes exactly its queues;
  {"mode": "queued", "queues": ["high", ...]}
      how many messages wait in each queue;
  {"mode": "probes", "task": "<probe task>", "groups": [{"name": "fast", "queues": [...]}, ...]}
      a probe sent to each consumed queue is executed by a worker of a group that consumes it.
Prints one JSON object: "ok", the "rows" checked and the "lines" of the status table.
"""

import json
import os
import socket
import sys
import time
import uuid

from celery.app.utils import find_app


def check_host(app, groups: dict, timeout: float = 60) -> dict:
    host = socket.gethostname()
    nodes = {f"{group}@{host}": sorted(queues) for group, queues in groups.items()}
    rows, ok = [], True
    for node, want in sorted(nodes.items()):
        inspect = app.control.inspect(destination=[node], timeout=5.0)
        ping, active, deadline = None, None, time.monotonic() + timeout
        while time.monotonic() < deadline:  # a group that just (re)started needs a moment
            ping = (inspect.ping() or {}).get(node)
            active = (inspect.active_queues() or {}).get(node)
            if ping and active is not None:
                break
            time.sleep(2)
        got = sorted(q["name"] for q in active or [])
        row_ok = bool(ping) and got == want
        ok = ok and row_ok
        rows.append(
            {
                "node": node,
                "ping": "pong" if ping else "no answer",
                "queues": got,
                "expected": want,
                "ok": row_ok,
            }
        )
    lines = [
        f"worker {r['node']:<28} {r['ping']:<5} queues {','.join(r['queues']) or '-'}"
        + ("" if r["ok"] else f"   EXPECTED {','.join(r['expected'])}")
        for r in rows
    ]
    return {"ok": ok, "rows": rows, "lines": lines}


def check_probes(app, task: str, groups: list) -> dict:
    expect: dict[str, list[str]] = {}
    for group in groups:
        for queue in group["queues"]:
            expect.setdefault(queue, []).append(group["name"])
    rows, ok = [], True
    for queue, groups in sorted(expect.items()):
        token = f"verify-{queue}-{uuid.uuid4().hex[:8]}"
        started = time.monotonic()
        try:
            result = app.send_task(task, args=[token], queue=queue).get(timeout=60)
            worker = result.get("worker", "")
            seconds = round(time.monotonic() - started, 3)
            row_ok = result.get("token") == token and worker.split("@")[0] in groups
            rows.append(
                {
                    "queue": queue,
                    "worker": worker,
                    "expected": groups,
                    "seconds": seconds,
                    "release": result.get("release", ""),
                    "ok": row_ok,
                }
            )
        except Exception as exc:  # report every queue, not just the first failure
            row_ok = False
            rows.append(
                {
                    "queue": queue,
                    "worker": f"none ({type(exc).__name__}: {exc})",
                    "expected": groups,
                    "ok": False,
                }
            )
        ok = ok and row_ok
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
    app = find_app(os.environ["CELERY_APP"])
    if spec["mode"] == "host":
        out = check_host(app, spec["groups"], spec.get("timeout", 60))
    elif spec["mode"] == "queued":
        out = count_queued(app, spec["queues"])
    else:
        out = check_probes(app, spec["task"], spec["groups"])
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
