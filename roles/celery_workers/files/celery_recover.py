"""Requeue the tasks a dead worker left behind in the broker, in seconds instead of an hour.

    python celery_recover.py [--dry-run] [--margin SECONDS] [--patience SECONDS]
                             [--alive NODE ...] [--if-unclean]
    python celery_recover.py --list-local

Runs as the app, with its environment (<app>-run python ..., the worker units' ExecStopPost,
playbooks/recover.yml). With late acks, a task a worker has received stays in Redis's `unacked`
hash until the worker acknowledges it; when the worker dies (kill -9, OOM, a stop that timed
out) nobody ever will, and kombu gives it back only after the transport's visibility_timeout
(Celery's default: 1 hour).

It takes the `unacked` entries as they are now, waits MARGIN seconds (a task a live worker has
just received is in its lists by then), asks every live worker what it holds (active, reserved,
scheduled), and gives back to its queue each entry of that first look that is still unacked and
held by no live worker: kombu's own restore_by_tag, a Redis transaction that a concurrent ack
wins. A second run finds nothing to give back.

A worker that does not answer is not taken for dead when something else says it lives: a
worker process of this host (--list-local prints them; recover.yml passes every host's as
--alive), or its heartbeat events. Such a worker (a solo or gevent pool busy with one task, a
group in its warm shutdown) is asked again, for at most PATIENCE seconds; when it still does not
say what it holds, nothing is given back (it could be running those tasks) and the output says
what to do. A rate-limited task waiting for its token is in none of a worker's three lists
(celery/worker/strategy.py hands it to the consumer's token bucket, not to reserved_requests):
an entry of a task that a live worker consuming its queue runs under a rate limit (`inspect
registered`, which shows limits set at run time too) is held back, not given back.

--if-unclean (ExecStopPost): does nothing unless systemd says the unit ended uncleanly
($SERVICE_RESULT other than "success"): a stop that drained has nothing stranded.
Prints one JSON object: "ok", "requeued", "held_back" and "lines" (one per task, then a summary).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import sys
import time
from dataclasses import dataclass, field

from kombu.utils.json import loads

INSPECT_TIMEOUT = 5.0
HEARTBEAT_LISTEN = 3.0  # Celery's workers send one every 2 s (worker_heartbeat_interval)
RETRY_EVERY = 2.0
ANY = "*"  # every task of a queue


def task_id(raw: dict) -> str:
    """The Celery task id of a raw kombu message (protocol 2: headers; 1: body)."""
    headers = raw.get("headers") or {}
    if headers.get("id"):
        return str(headers["id"])
    return str((raw.get("properties") or {}).get("correlation_id", ""))


def task_name(raw: dict) -> str:
    return str((raw.get("headers") or {}).get("task", "?"))


def limited_names(registered: list[str]) -> set[str]:
    """Names of the tasks `inspect registered rate_limit` shows with a limit other than none."""
    from celery.utils.time import rate

    names = set()
    for line in registered:
        found = re.match(r"(\S+) \[.*\brate_limit=([^\s\]]+)", line)
        if not found:
            continue
        try:
            if rate(found.group(2)):
                names.add(found.group(1))
        except ValueError:
            names.add(found.group(1))  # a limit we cannot read is still a limit
    return names


@dataclass
class Look:
    """What the live workers said: the ids they hold and, per queue, the rate-limited tasks of
    the workers consuming it; `silent`: workers known alive that did not say what they hold."""

    held: set[str] = field(default_factory=set)
    limited: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    silent: set[str] = field(default_factory=set)


def look(inspect, alive: set[str]) -> Look:
    """Ask every worker what it holds. A worker counts as alive when it answers ping or is in
    `alive` (a process on a host, a heartbeat); one that does not answer all three lists is
    silent. `inspect(destination, limit)` gives app.control.inspect for those workers (all of
    them: None), returning once `limit` answered (or its stand-in in the tests)."""
    answered = sorted(inspect(None, None).ping() or {})
    out = Look(silent=set(alive) - set(answered))
    if not answered:
        return out
    ask = inspect(answered, len(answered))
    lists = [ask.active() or {}, ask.reserved() or {}, ask.scheduled() or {}]
    said = set(answered).intersection(*(set(answer) for answer in lists))
    out.silent |= set(answered) - said
    for answer in lists:
        for node in said:
            for task in answer.get(node) or []:
                out.held.add(str(task.get("id") or (task.get("request") or {}).get("id")))
    registered = ask.registered("rate_limit") or {}
    queues = ask.active_queues() or {}
    for node in said:
        names = limited_names(registered.get(node) or [])
        # a worker whose rate limits we could not read may hold any of its queues' tasks
        names = names if node in registered else {ANY}
        for queue in queues.get(node) or []:
            for key in {queue.get("name"), queue.get("routing_key")} - {None, ""}:
                for name in names:
                    out.limited.setdefault(key, {}).setdefault(name, []).append(node)
    return out


def decide(first: dict[str, tuple[dict, str]], still: set[str], seen: Look):
    """Per entry of the first look (tag -> (message, routing key)) still unacknowledged and held
    by no worker that said what it holds: give it back, or hold it back when a live worker
    consuming its queue runs its task under a rate limit (the token bucket is listed nowhere).
    Returns (to give back: [(tag, id, name, routing key)], held back: [(id, name, key, nodes)])."""
    give, keep = [], []
    for tag, (message, routing_key) in sorted(first.items()):
        if tag not in still:
            continue  # acknowledged (or given back) meanwhile
        tid, name = task_id(message), task_name(message)
        if tid in seen.held:
            continue
        limited = seen.limited.get(routing_key) or {}
        nodes = limited.get(name, []) + limited.get(ANY, [])
        if nodes:
            keep.append((tid, name, routing_key, sorted(set(nodes))))
        else:
            give.append((tag, tid, name, routing_key))
    return give, keep


def refusal(silent: set[str], waited: float) -> list[str]:
    nodes = ", ".join(sorted(silent))
    return [
        f"{nodes}: alive (a worker process on its host, or its heartbeats) but did not say which"
        f" tasks it holds in {waited:.0f} s (a solo or gevent pool busy with a task, or a warm"
        " shutdown): nothing given back, it could be running them.",
        "Run playbooks/recover.yml again once it answers (`<app>-run celery -A $CELERY_APP"
        " inspect ping -d <node>`) or has stopped, or with a longer celery_recover_patience;"
        " kombu gives the tasks back by itself after the visibility timeout.",
    ]


def local_nodes(proc: str = "/proc", hostname: str | None = None) -> set[str]:
    """Node names of the Celery worker processes running on this host (their --hostname /
    -n argument, %h %n %d expanded as Celery does), read from /proc: no shell, no manager."""
    hostname = hostname or socket.gethostname()
    nodes = set()
    for pid in os.listdir(proc):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            with open(f"{proc}/{pid}/cmdline", "rb") as handle:
                argv = handle.read().decode(errors="replace").split("\0")
        except OSError:
            continue
        node = worker_node(argv)
        if node:
            nodes.add(expand(node, hostname))
    return nodes


def worker_node(argv: list[str]) -> str | None:
    """The node name a `celery ... worker` command line gives (or the toolkit's launcher's,
    celery_launch.py, which workers start through), None for any other command (a wrapper such
    as celery_supervise.py, whose worker may be the one that died)."""
    programs = [os.path.basename(a) for a in argv if a]
    program = next((p for p in programs if not p.startswith("python")), "")
    if program not in ("celery", "celery_launch.py") or "worker" not in argv:
        return None
    for i, arg in enumerate(argv):
        if arg.startswith("--hostname="):
            return arg.split("=", 1)[1]
        if arg in ("-n", "--hostname") and i + 1 < len(argv):
            return argv[i + 1]
    return "celery@%h"  # Celery's default


def expand(node: str, hostname: str) -> str:
    name, _, domain = hostname.partition(".")
    return node.replace("%h", hostname).replace("%n", name).replace("%d", domain)


def heard(app, seconds: float) -> set[str]:
    """Workers that sent a heartbeat event within about `seconds` (none when events cannot be
    read: the recovery then knows fewer workers alive, and relies on the other signs)."""
    nodes: set[str] = set()
    deadline = time.monotonic() + seconds
    receiver = None

    def on_event(event):
        if event.get("type") == "worker-heartbeat" and event.get("hostname"):
            nodes.add(event["hostname"])
        if time.monotonic() >= deadline:  # kombu's timeout counts only silent seconds
            receiver.should_stop = True

    try:
        with app.connection_for_read() as conn:
            receiver = app.events.Receiver(conn, handlers={"*": on_event})
            receiver.capture(limit=None, timeout=seconds, wakeup=False)
    except TimeoutError:
        pass
    except Exception as exc:  # noqa: BLE001 - report, and rely on the other signs
        print(f"heartbeats not read: {type(exc).__name__}: {exc}", file=sys.stderr)
    return nodes


def recover(app, margin, dry_run, patience=60.0, alive=(), listen=HEARTBEAT_LISTEN) -> dict:
    with app.connection_for_write() as conn:
        channel = conn.default_channel
        client = channel.client
        qos = channel.qos
        first = {}
        for tag, raw in client.hgetall(qos.unacked_key).items():
            message, _exchange, routing_key = loads(raw)
            first[tag.decode()] = (message, routing_key)
        if not first:
            return {
                "ok": True,
                "requeued": [],
                "held_back": [],
                "lines": ["no unacknowledged task in the broker"],
            }
        time.sleep(margin)
        lines = []
        started = time.monotonic()
        first_silent: set[str] = set()

        def inspect(destination, limit):
            return app.control.inspect(
                timeout=INSPECT_TIMEOUT, destination=destination, limit=limit
            )

        while True:
            # alive by other signs than an answer, seen afresh each round: a worker that stopped
            # meanwhile is dead now
            known = set(alive) | local_nodes() | (heard(app, listen) if listen else set())
            seen = look(inspect, known)
            if not seen.silent:
                break
            first_silent = first_silent or set(seen.silent)
            waited = time.monotonic() - started
            if waited >= patience:
                return {
                    "ok": False,
                    "requeued": [],
                    "held_back": [],
                    "lines": refusal(seen.silent, waited),
                }
            time.sleep(RETRY_EVERY)
        if first_silent:
            lines.append(
                f"waited {time.monotonic() - started:.0f} s for {', '.join(sorted(first_silent))}"
                " (alive, silent) to answer or stop"
            )
        still = {tag.decode() for tag in client.hkeys(qos.unacked_key)}
        give, keep = decide(first, still, seen)
        verb = "would requeue" if dry_run else "requeued"
        for tag, tid, name, routing_key in give:
            lines.append(f"{verb} {tid} {name} -> {routing_key}")
            if not dry_run:
                qos.restore_by_tag(tag, client)
        for tid, name, routing_key, nodes in keep:
            lines.append(
                f"held back {tid} {name} -> {routing_key}: rate-limited in {', '.join(nodes)},"
                " which may hold it waiting for its token"
            )
        lines.append(
            f"{len(give)} of {len(first)} unacknowledged task(s) held by no live worker"
            + (f", {len(keep)} held back (rate-limited)" if keep else "")
            + (" (dry run: nothing changed)" if dry_run else "")
        )
        return {
            "ok": True,
            "requeued": [tid for _tag, tid, _name, _key in give],
            "held_back": [tid for tid, *_ in keep],
            "lines": lines,
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true")
    parser.add_argument("--margin", type=float, default=5.0)
    parser.add_argument("--patience", type=float, default=60.0)
    parser.add_argument("--alive", action="append", default=[], metavar="NODE")
    parser.add_argument("--if-unclean", action="store_true")
    parser.add_argument("--list-local", action="store_true")
    args = parser.parse_args(argv)
    if args.list_local:
        print(json.dumps(sorted(local_nodes())), flush=True)
        return 0
    if args.if_unclean and os.environ.get("SERVICE_RESULT", "success") == "success":
        return 0
    from celery.app.utils import find_app

    try:
        out = recover(
            find_app(os.environ["CELERY_APP"]),
            args.margin,
            args.dry_run,
            patience=args.patience,
            alive=args.alive,
        )
    except Exception as exc:  # report, never a traceback
        out = {
            "ok": False,
            "requeued": [],
            "held_back": [],
            "lines": [f"recovery failed: {type(exc).__name__}: {exc}"],
        }
    print(json.dumps(out) if not args.if_unclean else "\n".join(out["lines"]), flush=True)
    return 0 if out["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
