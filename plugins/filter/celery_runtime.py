"""Helpers the roles and playbooks use while they run (no rule of the inventory): the single
layout of an incident, where a task name is routed, each host's private address, the health
gate's refusal and verify.yml's status table.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from fnmatch import fnmatchcase
from typing import Any


def celery_route_queue(task_name: str, routes: Mapping[str, str], default: str = "default") -> str:
    """The queue a task name lands in under a glob routing table (first match wins)."""
    for pattern, queue in routes.items():
        if fnmatchcase(task_name, pattern):
            return queue
    return default


def celery_single_layout(
    groups: Iterable[Mapping[str, Any]], queues: Iterable[str], name: str = "all"
) -> list[dict[str, Any]]:
    """The incident layout: one group consuming every declared queue, derived from the split one.

    It gets the split groups' total concurrency (the host keeps its capacity), prefetch 1 (long
    and short tasks share it), the smallest per-child task limit, the largest per-child memory
    limit and the longest stop timeout (a stop still lets the longest task finish).
    """
    groups = list(groups)
    queues = list(queues)
    if not groups:
        raise ValueError("celery_workers_groups is empty: there is no layout to derive from")
    if not queues:
        raise ValueError("celery_app_queues is empty: the single worker would consume nothing")
    pools = {g.get("pool", "prefork") for g in groups}
    return [
        {
            "name": name,
            "queues": queues,
            "concurrency": sum(int(g["concurrency"]) for g in groups),
            "pool": pools.pop() if len(pools) == 1 else "prefork",
            "prefetch_multiplier": 1,
            "max_tasks_per_child": min(int(g["max_tasks_per_child"]) for g in groups),
            "max_memory_per_child": max(int(g["max_memory_per_child"]) for g in groups),
            "stop_timeout": max(int(g["stop_timeout"]) for g in groups),
        }
    ]


def celery_private_addresses(
    hosts: Iterable[str], hostvars: Mapping[str, Mapping[str, Any]]
) -> list[str]:
    """Each host's private address: celery_private_address when the inventory sets it, else
    ansible_host when it is an IP address, else the address of its default route from facts."""
    addresses = []
    for host in hosts:
        hv = hostvars[host]
        ansible_host = str(hv.get("ansible_host") or "")
        address = (
            hv.get("celery_private_address")
            or (
                ansible_host
                if re.fullmatch(r"[0-9.]+|[0-9a-fA-F:]+:[0-9a-fA-F:]*", ansible_host)
                else None
            )
            or ((hv.get("ansible_facts") or {}).get("default_ipv4") or {}).get("address")
        )
        if not address:
            raise ValueError(
                f"no private address known for {host}: set celery_private_address for it in the "
                "inventory (facts gave no default IPv4 address)"
            )
        addresses.append(str(address))
    return addresses


def celery_health_report(
    described: Iterable[Mapping[str, Any]], host: str, timeout: int
) -> list[str]:
    """The health gate's refusal: for each process that did not answer (a worker group) or did
    not stay up (beat), what its process manager says of it and the last lines of its log."""
    lines: list[str] = []
    for process in described:
        name = str(process.get("process", "?"))
        failure = (
            f"worker group '{name.removeprefix('worker@')}' on {host} does not answer a ping with "
            f"its queues within {timeout} s (celery_workers_health_timeout)"
            if name.startswith("worker@")
            else f"{name} on {host} did not stay active for {timeout} s"
        )
        # a count, "?" when the manager's count could not be read, None when it keeps none
        restarts = process.get("restarts", "?")
        lines.append(
            f"{failure}: {process.get('manager', '?')} says {process.get('state', '?')} "
            f"({process.get('detail', '?')})"
            + (f", restarted {restarts} times" if restarts is not None else "")
            + ". Last lines of its log:"
        )
        lines += [f"  | {line}" for line in process.get("log") or []] or ["  | (empty)"]
    return lines


def _status_answer(result: Mapping[str, Any]) -> dict[str, Any]:
    """celery_status.py's JSON from a command result; a row saying why when there is none."""
    try:
        answer = json.loads(result.get("stdout") or "")
        if isinstance(answer, dict) and "lines" in answer:
            return answer
    except ValueError:
        pass
    errors = [line for line in result.get("stderr_lines") or [] if line.strip()]
    why = errors[-1].strip() if errors else result.get("msg") or f"exit code {result.get('rc')}"
    return {"ok": False, "lines": [f"status check failed: {why}"]}


def celery_status_lines(results: Iterable[Mapping[str, Any]]) -> list[str]:
    """The status table from celery_status.py's answers (verify.yml), one line per row."""
    return [line for result in results for line in _status_answer(result)["lines"]]


def celery_status_ok(results: Iterable[Mapping[str, Any]]) -> bool:
    return all(bool(_status_answer(result).get("ok")) for result in results)


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {
            f.__name__: f
            for f in (
                celery_route_queue,
                celery_single_layout,
                celery_private_addresses,
                celery_health_report,
                celery_status_lines,
                celery_status_ok,
            )
        }
