"""Requeue the tasks a dead worker left behind in the broker, in seconds instead of an hour.

    python celery_recover.py [--dry-run] [--margin SECONDS] [--if-unclean]

Runs as the app, with its environment (<app>-run python ..., the worker units' ExecStopPost,
playbooks/recover.yml). With late acks, a task a worker has received stays in Redis's `unacked`
hash until the worker acknowledges it; when the worker dies (kill -9, OOM, a stop that timed
out) nobody ever will, and kombu gives it back only after the transport's visibility_timeout
(Celery's default: 1 hour).

It takes the `unacked` entries as they are now, waits MARGIN seconds (a task a live worker has
just received is in its lists by then), asks every live worker what it holds (active, reserved,
scheduled), and gives back to its queue each entry of that first look that is still unacked and
held by no live worker: kombu's own restore_by_tag, a Redis transaction that a concurrent ack
wins. A second run finds nothing to give back. When a worker that answers ping does not say
what it holds, nothing is given back (it could be running those tasks).

--if-unclean (ExecStopPost): does nothing unless systemd says the unit ended uncleanly
($SERVICE_RESULT other than "success"): a stop that drained has nothing stranded.
Prints one JSON object: "ok", "requeued" and "lines" (one per task, then a summary).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from kombu.utils.json import loads


def task_id(raw: dict) -> str:
    """The Celery task id of a raw kombu message (protocol 2: headers; 1: body)."""
    headers = raw.get("headers") or {}
    if headers.get("id"):
        return str(headers["id"])
    return str((raw.get("properties") or {}).get("correlation_id", ""))


def held_ids(app, timeout: float) -> set[str] | None:
    """Ids of the tasks every live worker holds; None when one of them does not say."""
    inspect = app.control.inspect(timeout=timeout)
    nodes = set(inspect.ping() or {})
    ids: set[str] = set()
    for answer in (inspect.active(), inspect.reserved(), inspect.scheduled()):
        answer = answer or {}
        if not nodes <= set(answer):
            return None
        for tasks in answer.values():
            for task in tasks:
                ids.add(str(task.get("id") or (task.get("request") or {}).get("id")))
    return ids


def recover(app, margin: float, dry_run: bool) -> dict:
    with app.connection_for_write() as conn:
        channel = conn.default_channel
        client = channel.client
        qos = channel.qos
        first = {tag.decode(): raw for tag, raw in client.hgetall(qos.unacked_key).items()}
        if not first:
            return {"ok": True, "requeued": [], "lines": ["no unacknowledged task in the broker"]}
        time.sleep(margin)
        held = held_ids(app, timeout=5.0)
        if held is None:
            return {
                "ok": False,
                "requeued": [],
                "lines": ["a live worker did not say which tasks it holds: nothing given back"],
            }
        still = set(client.hkeys(qos.unacked_key))
        lines, requeued = [], []
        for tag, raw in sorted(first.items()):
            if tag.encode() not in still:
                continue  # acknowledged (or given back) meanwhile
            message, _exchange, routing_key = loads(raw)
            tid = task_id(message)
            if tid in held:
                continue
            name = (message.get("headers") or {}).get("task", "?")
            lines.append(
                f"{'would requeue' if dry_run else 'requeued'} {tid} {name} -> {routing_key}"
            )
            requeued.append(tid)
            if not dry_run:
                qos.restore_by_tag(tag, client)
        lines.append(
            f"{len(requeued)} of {len(first)} unacknowledged task(s) held by no live worker"
            + (" (dry run: nothing changed)" if dry_run else "")
        )
        return {"ok": True, "requeued": requeued, "lines": lines}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true")
    parser.add_argument("--margin", type=float, default=5.0)
    parser.add_argument("--if-unclean", action="store_true")
    args = parser.parse_args(argv)
    if args.if_unclean and os.environ.get("SERVICE_RESULT", "success") == "success":
        return 0
    from celery.app.utils import find_app

    try:
        out = recover(find_app(os.environ["CELERY_APP"]), args.margin, args.dry_run)
    except Exception as exc:  # report, never a traceback
        out = {
            "ok": False,
            "requeued": [],
            "lines": [f"recovery failed: {type(exc).__name__}: {exc}"],
        }
    print(json.dumps(out) if not args.if_unclean else "\n".join(out["lines"]), flush=True)
    return 0 if out["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
