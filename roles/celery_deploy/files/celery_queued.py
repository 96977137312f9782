"""Count or move the app's queued messages on the broker its environment names (issue 21). Run
as the app, with the app's environment (<app>-run python -c THIS EXPORTER MODE SPEC):

  count '{"queues": [...]}'   print {"queues": {queue: waiting}, "unacked": n,
                              "unacked_by_key": {queue its exchange routes it to: entries},
                              "journal": 0 or 1 (a message an interrupted move left between two
                              brokers)} (deploy.yml's count before any host changes:
                              roles/celery_deploy/tasks/stranded.yml)
  where '{}'                  print {"broker": {host, port, db}}: the broker the app's environment
                              names, never its secret (a host recorded before the record named
                              it: stranded.yml)
  ping -                      read {"url": the new broker URL} on stdin; print {"answers": true}
                              when it answers there as the app's user (move-queues.yml, before
                              any worker stops)
  move -                      read {"moves": {old queue: new queue}, "url": the new broker URL}
                              on stdin (the URL holds a secret: never argv) and move every
                              message of the old queues there; print {"moved": {...},
                              "restored": n, "unroutable": unacked entries left in place (their
                              exchange routes them nowhere)} (playbooks/move-queues.yml)

EXPORTER is the text of roles/celery_exporter/files/celery_exporter.py: kombu's key names of a
queue (one list per priority step) and the queue counts are its own, loaded as a module here.

Moving, only while no worker answers on the old broker (ping), per message, within the commands
the app's Redis user has (roles/redis: redis_acl_celery_rules): first every `unacked` entry goes
back to the queue its exchange routes it to, by kombu's own restore (one WATCH/MULTI transaction
each; the app's exchanges declared first, an entry routed nowhere left in place). Then, per
priority list of an old queue:
  - same Redis and database: WATCH old; LINDEX old -1; MULTI; RPOP old; LPUSH new; EXEC. One
    transaction: the message is in exactly one list at any time.
  - another Redis or database (no command spans two): WATCH old; MULTI; RPOP old; SET journal
    {key, message}; EXEC on the old Redis, then LPUSH on the new one, then DEL journal. A crash
    leaves the message in the journal (the key celery-toolkit:moving on the old Redis): count
    reports it, so deploy.yml refuses and the next move runs; it pushes it first, unless LPOS
    finds it in the new list already (nothing consumes there yet), so it arrives once.
RPOP from the right and LPUSH to the left keep the queue's order.
"""

from __future__ import annotations

import json
import os
import sys
import types

JOURNAL = "celery-toolkit:moving"


def _exporter(text: str) -> types.ModuleType:
    module = types.ModuleType("celery_exporter")
    exec(compile(text, "celery_exporter.py", "exec"), module.__dict__)  # noqa: S102 (the toolkit's own file)
    return module


def _client(channel):
    import redis  # kombu's Redis transport needs it: the app has it

    return redis.Redis(connection_pool=channel.client.connection_pool)


def _prefix(channel) -> str:
    return getattr(channel, "global_keyprefix", "") or ""


def in_journal(client, journal: str) -> int:
    """1 when an interrupted move left a message in the journal (popped from the old list, not
    yet pushed to the new broker): it is queued too, and only a move puts it back."""
    return int(client.get(journal) is not None)


def declare_exchanges(app, channel) -> None:
    """kombu gives an unacked entry back to the queues its exchange routes its routing key to,
    by the exchange's type, which a fresh channel knows only once declared (else direct: a topic
    key would match no queue and the entry would be dropped). Declaring is the channel's own
    note: nothing is sent to Redis."""
    for queue in app.amqp.queues.values():
        if queue.exchange is not None and queue.exchange.name:
            queue.exchange(channel).declare()


def unacked_by_queue(raws, lookup) -> dict[str, int]:
    """Per queue, the unacked entries kombu would give back to it: `lookup(exchange, routing key)`
    is the channel's routing (channel._lookup); an entry it routes nowhere counts under its
    routing key (the queue named so, the default routing)."""
    found: dict[str, int] = {}
    for raw in raws:
        try:
            _message, exchange, routing_key = json.loads(raw)
        except (ValueError, TypeError):
            found[""] = found.get("", 0) + 1
            continue
        for queue in dict.fromkeys(lookup(exchange, routing_key) or [str(routing_key)]):
            found[queue] = found.get(queue, 0) + 1
    return found


def give_back(entries, lookup, restore) -> tuple[int, int]:
    """Give back each unacked entry ({tag: raw}) that its exchange routes to a queue
    (`restore(tag)`: kombu's restore_by_tag); leave the others where they are, never dropped (kombu
    would delete one that routes nowhere). (given back, left)"""
    given = left = 0
    for tag, raw in entries.items():
        try:
            _message, exchange, routing_key = json.loads(raw)
        except (ValueError, TypeError):
            left += 1
            continue
        if lookup(exchange, routing_key):
            restore(tag.decode() if isinstance(tag, bytes) else tag)
            given += 1
        else:
            left += 1
    return given, left


def count(app, exporter, queues: list) -> dict:
    figures = exporter.collect_broker(app, queues, exporter.QueueAges())
    with app.connection_for_write() as conn:
        channel = conn.default_channel
        declare_exchanges(app, channel)
        prefix = _prefix(channel)
        client = _client(channel)
        journal = in_journal(client, prefix + JOURNAL)
        by_key = unacked_by_queue(
            client.hgetall(prefix + channel.unacked_key).values(), channel._lookup
        )
    return {
        "queues": {q: f["messages"] for q, f in figures["queues"].items()},
        "unacked": figures["unacked"],
        "unacked_by_key": by_key,
        "journal": journal,
    }


def _same_place(old, new) -> bool:
    """Do both clients reach one Redis database? A key written through one is read by the other."""
    probe = f"celery-toolkit:probe:{os.getpid()}:{os.urandom(8).hex()}"
    old.set(probe, "1", ex=60)
    try:
        return bool(new.exists(probe))
    finally:
        old.delete(probe)


def _finish_journal(old, new, journal: str) -> int:
    """Push the message a crashed run left between the brokers, unless it arrived."""
    raw = old.get(journal)
    if raw is None:
        return 0
    entry = json.loads(raw)
    if new.execute_command("LPOS", entry["key"], entry["message"]) is None:
        new.lpush(entry["key"], entry["message"])
    old.delete(journal)
    return 1


def _move_one(old, new, source: str, target: str, same: bool, journal: str) -> bool:
    """Move the oldest message of `source` to `target`; False when `source` is empty."""
    import redis

    with old.pipeline() as pipe:
        while True:
            try:
                pipe.watch(source)
                message = pipe.lindex(source, -1)
                if message is None:
                    return False
                pipe.multi()
                pipe.rpop(source)
                if same:
                    pipe.lpush(target, message)
                else:
                    entry = {"key": target, "message": message.decode()}
                    pipe.set(journal, json.dumps(entry))
                pipe.execute()
                break
            except redis.WatchError:
                continue
    if not same:
        new.lpush(target, message)
        old.delete(journal)
    return True


def live_refusal(pings: dict | None) -> str:
    """Why nothing may be given back or moved while a worker answers on the old broker ("" when
    none does): it may hold an unacked entry (given back, it would run twice) and consumes there
    (a worker outside the play or its --limit, or one that did not stop)."""
    nodes = sorted(pings or {})
    if not nodes:
        return ""
    return (
        f"{len(nodes)} worker(s) still answer on the old broker ({', '.join(nodes[:5])}): stop "
        "them (a host outside this run's --limit or the inventory), then run move-queues.yml "
        "again; nothing was given back or moved"
    )


def move(app, exporter, spec: dict) -> dict:
    if refusal := live_refusal(app.control.inspect(timeout=3.0).ping()):
        return {"error": refusal}
    with (
        app.connection_for_write() as old_conn,
        app.connection_for_write(spec["url"]) as new_conn,
    ):
        old_channel, new_channel = old_conn.default_channel, new_conn.default_channel
        old, new = _client(old_channel), _client(new_channel)
        prefix = _prefix(old_channel)
        journal = prefix + JOURNAL
        same = _same_place(old, new)
        # first what an interrupted move left between the brokers (whatever `same` is now)
        restored = _finish_journal(old, new, journal)
        # the workers are stopped: what they held and did not acknowledge goes back to its queue
        declare_exchanges(app, old_channel)
        given, unroutable = give_back(
            old.hgetall(prefix + old_channel.unacked_key),
            old_channel._lookup,
            old_channel.qos.restore_by_tag,
        )
        restored += given
        moved = {}
        for source_queue, target_queue in spec["moves"].items():
            sources = exporter._keys(old_channel, source_queue)
            targets = exporter._keys(new_channel, target_queue)
            moved[source_queue] = 0
            for source, target in zip(sources, targets, strict=True):
                if same and source == target:
                    continue  # the message is where the new layout reads it
                while _move_one(old, new, source, target, same, journal):
                    moved[source_queue] += 1
    return {"moved": moved, "restored": restored, "unroutable": unroutable, "same_database": same}


def where(app) -> dict:
    """The broker the app's environment names: host, port, database (no user, no password)."""
    conn = app.connection_for_write()
    db = str(conn.virtual_host or "0").strip("/") or "0"
    port = int(conn.port or 6379)
    return {"broker": {"host": conn.hostname, "port": port, "db": int(db) if db.isdigit() else db}}


def ping(app, url: str) -> dict:
    """Does the new broker answer the app's user? (PING, after its login)"""
    with app.connection_for_write(url) as conn:
        _client(conn.default_channel).ping()
    return {"answers": True}


def main(argv: list[str]) -> int:
    if os.getcwd() not in sys.path:  # a source-tree app, imported as `celery -A` does
        sys.path.insert(1, os.getcwd())
    exporter = _exporter(argv[1])
    mode = argv[2]
    spec = json.loads(sys.stdin.read() if argv[3] == "-" else argv[3])
    try:
        from celery.app.utils import find_app

        app = find_app(os.environ["CELERY_APP"])
        if mode == "count":
            out = count(app, exporter, spec["queues"])
        elif mode == "where":
            out = where(app)
        elif mode == "ping":
            out = ping(app, spec["url"])
        else:
            out = move(app, exporter, spec)
    except Exception as exc:  # the playbook says it; never a traceback with a URL in it
        out = {"error": f"{type(exc).__name__}: {exc}"}
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
