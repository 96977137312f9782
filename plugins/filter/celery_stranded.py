"""Queued messages a deploy would strand (issue 21): each worker host records the broker it
consumed from (host, port, database: never a secret; roles/celery_workers/tasks/state.yml) and
the queues its groups consumed. A deploy that moves the broker, or whose layout no longer
consumes a queue, leaves that queue's messages (and the `unacked` entries kombu would give back
to it) where no worker reads them. deploy.yml counts them on the old broker before any host
changes (roles/celery_deploy/tasks/stranded.yml) and refuses with the counts, unless
celery_deploy_drop_queued says they may be dropped; playbooks/move-queues.yml moves them.

(celery_broker_endpoint, in celery_broker.py, gives the {host, port, db} a host records.)
  celery_stranded_sources(hosts)        per old broker: where to count, which queues, and the
                                        queue of the new layout each one's messages go to
  celery_stranded_refusal(sources, counts, drop)
                                        {refuse, lines}: what the deploy says
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from ansible_collections.celery_toolkit.stack.plugins.plugin_utils.celery_common import truthy

MOVE = "playbooks/move-queues.yml"


def _label(endpoint: Mapping[str, Any]) -> str:
    return f"{endpoint.get('host')}:{endpoint.get('port')}/{endpoint.get('db')}"


def _queues(groups: Any) -> list[str]:
    return list(
        dict.fromkeys(
            str(q) for g in groups or [] if isinstance(g, Mapping) for q in g.get("queues") or []
        )
    )


def celery_stranded_sources(hosts: Iterable[Mapping[str, Any]], into: str = "") -> list[dict]:
    """`hosts`: per worker host {host, recorded (its local fact, {} when it ran nothing),
    broker (celery_broker_endpoint of its new celery_app_broker_url), groups (its new
    celery_workers_groups)}. Per old broker that hosts recorded: {host (the first one that
    recorded it, which counts and moves: its environment still reaches that broker), broker,
    new_broker, moved (the broker changes), queues (the old queues whose messages no worker of
    the new layout would read), moves ({queue: the queue of the new layout it goes to; "" when
    none is known: celery_deploy_move_into names one)}}. A host recorded before the broker was
    recorded (toolkit 0.18) is left out of the broker check, not of the layout's."""
    hosts = list(hosts)
    new_queues = set()
    for h in hosts:
        new_queues.update(_queues(h.get("groups")))
    new_brokers = [h["broker"] for h in hosts if h.get("broker")]
    new_broker = new_brokers[0] if new_brokers else {}
    sources: dict[str, dict] = {}
    for h in hosts:
        recorded = h.get("recorded") or {}
        old_queues = _queues(recorded.get("groups"))
        if not old_queues:
            continue
        old_broker = recorded.get("broker") or new_broker
        source = sources.setdefault(
            _label(old_broker),
            {
                "host": h["host"],
                "broker": dict(old_broker),
                "new_broker": dict(new_broker),
                "moved": bool(new_broker) and dict(old_broker) != dict(new_broker),
                "old_queues": [],
            },
        )
        source["old_queues"] += [q for q in old_queues if q not in source["old_queues"]]
    found = []
    for source in sources.values():
        old = source.pop("old_queues")
        leaving = old if source["moved"] else [q for q in old if q not in new_queues]
        if not leaving:
            continue
        source["queues"] = leaving
        source["moves"] = {q: q if q in new_queues else into for q in leaving}
        found.append(source)
    return found


def move_into_errors(workers: Iterable[str], settings: Mapping[str, Mapping[str, Any]]) -> list:
    """celery_deploy_move_into names a queue the new layout consumes (on some worker host), or
    nothing: move-queues.yml would move messages where no worker reads them."""
    workers = list(workers)
    consumed = {q for w in workers for q in _queues(settings[w]["celery_workers_groups"])}
    found = []
    for host in workers:
        into = settings[host].get("celery_deploy_move_into") or ""
        if into and into not in consumed:
            found.append(
                (
                    "celery_deploy_move_into",
                    host,
                    f" is {into!r}, a queue no worker group of the layout consumes "
                    f"(celery_workers_groups: {', '.join(sorted(consumed)) or 'none'}): name "
                    "one of those, or leave it empty.",
                )
            )
    return found


def celery_stranded_refusal(
    sources: Iterable[Mapping[str, Any]], counts: Mapping[str, Mapping[str, Any]], drop: Any
) -> dict[str, Any]:
    """`counts`: per source's counting host, what files/celery_queued.py counted there
    ({queues: {queue: waiting}, unacked_by_key: {routing key: entries}, journal: 0 or 1}, or
    {error}). Refuses when a queue that leaves holds messages, or an unacked entry would be given
    back to one (all of them when the broker moves), or an interrupted move left a message in
    its journal, or a count failed; says once what and the two ways out."""
    lines: list[str] = []
    total = 0
    failed = False
    for source in sources:
        figures = counts.get(source["host"]) or {"error": "not counted"}
        where = (
            f"broker {_label(source['broker'])} -> {_label(source['new_broker'])}"
            if source["moved"]
            else f"broker {_label(source['broker'])}, queues the new layout no longer consumes"
        )
        if "error" in figures:
            failed = True
            lines.append(f"{where}: could not count ({figures['error']}), from {source['host']}")
            continue
        waiting = {q: int(figures["queues"].get(q, 0)) for q in source["queues"]}
        by_key = figures.get("unacked_by_key") or {}
        unacked = (
            sum(int(n) for n in by_key.values())
            if source["moved"]
            else sum(int(by_key.get(q, 0)) for q in source["queues"])
        )
        journal = int(figures.get("journal") or 0)
        if not any(waiting.values()) and not unacked and not journal:
            continue
        total += sum(waiting.values()) + unacked + journal
        parts = [f"{q} {n} waiting" for q, n in waiting.items() if n]
        parts += [f"{unacked} unacked"] if unacked else []
        parts += [f"{journal} in the journal of an interrupted move"] if journal else []
        lines.append(f"{where}: {', '.join(parts)}")
        missing = [q for q, dest in source["moves"].items() if not dest]
        if missing:
            lines.append(
                f"  (no queue of the new layout consumes {', '.join(missing)}: "
                "celery_deploy_move_into names the one that takes their messages)"
            )
    if not lines:
        return {"refuse": False, "lines": []}
    if failed:
        head = "deploy.yml could not count the messages a change of broker or layout would strand:"
    else:
        head = f"deploy.yml would strand {total} queued messages (no worker would read them again):"
    if truthy(drop):  # a broker gone for good cannot be counted: the user's word holds
        return {
            "refuse": False,
            "lines": [head.replace("would strand", "leaves behind")]
            + lines
            + ["celery_deploy_drop_queued is true: they stay where they are, unread."],
        }
    return {
        "refuse": True,
        "lines": [head]
        + lines
        + [
            f"Move them first: ansible-playbook -i INVENTORY {MOVE} (it stops the app's workers, "
            "gives their unacked messages back and moves each message once), then deploy again;",
            "or, if they may be lost, set celery_deploy_drop_queued: true for this deploy.",
        ],
    }


class FilterModule:
    """Ansible entry point."""

    def filters(self) -> dict[str, Any]:
        return {
            "celery_stranded_sources": celery_stranded_sources,
            "celery_stranded_refusal": celery_stranded_refusal,
        }
