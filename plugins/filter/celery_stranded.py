"""Queued messages a deploy would strand (issue 21): each worker host records the broker it
consumed from (host, port, database: never a secret; roles/celery_workers/tasks/state.yml) and
the queues its groups consumed. A deploy that moves the broker, or whose layout no longer
consumes a queue, leaves that queue's messages (and the `unacked` entries kombu would give back
to it) where no worker reads them. deploy.yml counts them on the old broker before any host
changes (roles/celery_deploy/tasks/stranded.yml) and refuses with the counts, unless
celery_deploy_drop_queued says they may be dropped; playbooks/move-queues.yml moves them.

(celery_broker_endpoint, in celery_broker.py, gives the {host, port, db} a host records.)
  celery_stranded_brokers(brokers, hostvars, defaults)
                                        what resolves an address to the broker host it reaches
  celery_stranded_outside(hosts, hostvars, groups, url)
                                        the worker hosts outside the play, as the inventory says
  celery_stranded_sources(hosts, into, brokers)
                                        per old Redis database: where to count, which queues, and
                                        the queue of the new layout each one's messages go to
  celery_stranded_answers(results)      what files/celery_queued.py answered, per source (its
                                        last line)
  celery_stranded_refusal(sources, counts, drop)
                                        {refuse, lines}: what the deploy says
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from ansible_collections.celery_toolkit.stack.plugins.filter.celery_broker import (
    broker_target,
    celery_broker_endpoint,
)
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


def celery_stranded_brokers(
    brokers: Iterable[str], hostvars: Mapping[str, Mapping[str, Any]], defaults: Mapping[str, Any]
) -> dict[str, dict]:
    """What tells which broker host an address reaches (celery_broker's rule): each broker host's
    redis_bind_addresses (the redis role's `defaults` when the inventory is silent) and its
    ansible_host."""
    found = {}
    for broker in brokers:
        hv = hostvars[broker]
        found[broker] = {
            "redis_bind_addresses": hv.get("redis_bind_addresses")
            or defaults["redis_bind_addresses"],
            "ansible_host": hv.get("ansible_host", broker),
        }
    return found


def celery_stranded_outside(
    hosts: Iterable[str],
    hostvars: Mapping[str, Mapping[str, Any]],
    default_groups: Any,
    default_url: Any,
) -> list[dict]:
    """The worker hosts of the inventory outside the play (--limit), as celery_stranded_sources
    reads a host: what they consume is the inventory's (celery_workers_groups, else the role's
    `default_groups`), so a queue only they read is no dropped queue; their record is not read
    (nothing is counted or moved from them: their workers keep running)."""
    found = []
    for host in hosts:
        hv = hostvars[host]
        found.append(
            {
                "host": host,
                "recorded": {},
                "broker": celery_broker_endpoint(hv.get("celery_app_broker_url", default_url)),
                "groups": hv.get("celery_workers_groups", default_groups),
            }
        )
    return found


def _place(worker: str, endpoint: Mapping[str, Any], brokers: Mapping[str, Mapping]) -> str:
    """The Redis database `worker` reaches at `endpoint`: the broker host of the inventory its
    address reaches from `worker` (so the broker host's own 127.0.0.1 and the others' 10.0.0.5 are
    one Redis, and a new port on the same Redis is no move), and the database; the address and
    port as written when no broker host listens there (a broker no longer in the inventory)."""
    reached, _ = (
        broker_target(worker, str(endpoint.get("host")), list(brokers), brokers)
        if brokers
        else ("", "")
    )
    return f"{reached or _label(endpoint).rpartition('/')[0]}/{endpoint.get('db')}"


def celery_stranded_sources(
    hosts: Iterable[Mapping[str, Any]], into: str = "", brokers: Mapping[str, Mapping] | None = None
) -> list[dict]:
    """`hosts`: per worker host {host, recorded (its local fact, {} when it ran nothing),
    broker (celery_broker_endpoint of its new celery_app_broker_url), groups (its new
    celery_workers_groups)}; `brokers`: celery_stranded_brokers. Each host's record is compared
    with its OWN new endpoint, both resolved to the Redis database they reach (_place). Per old
    Redis database that hosts recorded: {host (the first one that recorded it, which counts and
    moves: its environment still reaches that broker; one mover per database), broker (as that
    host recorded it), new_broker (that host's new endpoint), moved (its new endpoint reaches
    another database), queues (the old queues whose messages no worker of the new layout would
    read there), moves ({queue: the queue of the new layout it goes to; "" when none is known:
    celery_deploy_move_into names one)}}. A host recorded before the broker was recorded (toolkit
    0.18) is left out of the broker check, not of the layout's."""
    brokers = brokers or {}
    hosts = list(hosts)
    read_at: dict[str, set] = {}  # per database, the queues the new layout reads there
    new_place = {}
    for h in hosts:
        new_place[h["host"]] = _place(h["host"], h.get("broker") or {}, brokers)
        read_at.setdefault(new_place[h["host"]], set()).update(_queues(h.get("groups")))
    sources: dict[str, dict] = {}
    for h in hosts:
        recorded = h.get("recorded") or {}
        old_queues = _queues(recorded.get("groups"))
        if not old_queues:
            continue
        old_broker = recorded.get("broker") or h.get("broker") or {}
        old_place = (
            _place(h["host"], old_broker, brokers)
            if recorded.get("broker")
            else new_place[h["host"]]
        )
        source = sources.setdefault(
            old_place,
            {
                "host": h["host"],
                "broker": dict(old_broker),
                "new_broker": dict(h.get("broker") or {}),
                "moved": old_place != new_place[h["host"]],
                "old_queues": [],
                "place": old_place,
                "into_place": new_place[h["host"]],
            },
        )
        source["old_queues"] += [q for q in old_queues if q not in source["old_queues"]]
    found = []
    for source in sources.values():
        old = source.pop("old_queues")
        still = read_at.get(source.pop("place"), set())
        there = read_at.get(source.pop("into_place"), set())
        leaving = [q for q in old if q not in still]
        if not leaving:
            continue
        source["queues"] = leaving
        source["moves"] = {q: q if q in there else into for q in leaving}
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
    ({queues: {queue: waiting}, unacked_by_key: {queue its exchange routes it to: entries},
    journal: 0 or 1}, or {error}). Refuses when a queue that leaves holds messages, or an unacked
    entry would be given back to one (all of them when the broker moves), or an interrupted move
    left a message in its journal, or a count failed; says once what and the two ways out."""
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


def _last_json(stdout: Any) -> dict:
    """The last line the helper printed, read as JSON (an app that prints at import prints
    before it); {error} when there is none or it is not an object."""
    lines = [line for line in str(stdout or "").splitlines() if line.strip()]
    try:
        out = json.loads(lines[-1]) if lines else {"error": "no answer"}
    except ValueError:
        out = None
    return out if isinstance(out, dict) else {"error": "an answer that is not JSON"}


def celery_stranded_answers(results: Iterable[Mapping[str, Any]]) -> list[dict]:
    """The registered results of files/celery_queued.py run in a loop over the sources (the
    runs that happened; never the command's stdin): per run {host, broker, new_broker (labels),
    answer (its last line, or {error})}."""
    found = []
    for result in results or []:
        if "stdout" not in result:  # skipped: another host's source
            continue
        answer = _last_json(result["stdout"])
        if result.get("rc", 0) != 0 and set(answer) <= {"error"}:
            answer = {"error": f"{answer.get('error', 'no answer')}, exit status {result['rc']}"}
        elif result.get("rc", 0) != 0:
            answer = {"error": f"exit status {result['rc']}"}
        item = result.get("item") or {}
        found.append(
            {
                "host": item.get("host"),
                "broker": _label(item.get("broker") or {}),
                "new_broker": _label(item.get("new_broker") or {}),
                "answer": answer,
            }
        )
    return found


class FilterModule:
    """Ansible entry point."""

    def filters(self) -> dict[str, Any]:
        return {
            "celery_stranded_answers": celery_stranded_answers,
            "celery_stranded_brokers": celery_stranded_brokers,
            "celery_stranded_outside": celery_stranded_outside,
            "celery_stranded_sources": celery_stranded_sources,
            "celery_stranded_refusal": celery_stranded_refusal,
        }
