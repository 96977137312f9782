"""The layout's rules: which worker groups run where, what they consume, one beat, and the real
app (as the controller imports it) against that layout. Checked before any host is changed.

Every rule returns refusals, (subject, host, problem) triples that `once` words as one message
naming every host it concerns; the entry points return those messages, each naming the queue,
group or host at fault and the fix. An empty list means the layout is sound.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from fnmatch import fnmatchcase
from typing import Any

from ansible_collections.celery_toolkit.stack.plugins.plugin_utils.celery_common import (
    NAME,
    NAME_RULE,
    Refusal,
    once,
    truthy,
)

POSITIVE = (
    "concurrency",
    "prefetch_multiplier",
    "max_tasks_per_child",
    "max_memory_per_child",
    "stop_timeout",
)
Layout = Mapping[str, Iterable[Mapping[str, Any]]]


def _consumers(layout: Layout) -> dict[str, list[str]]:
    """Queue name -> ["host/group", ...] of the groups that consume it."""
    consumers: dict[str, list[str]] = {}
    for host, groups in layout.items():
        for group in groups:
            for queue in group.get("queues") or []:
                consumers.setdefault(queue, []).append(f"{host}/{group.get('name')}")
    return consumers


def undeclared_queue_errors(
    layout: Layout, declared: list[str], source: str, fix: str
) -> list[Refusal]:
    """Each group consumes only queues the app declares (`source` says where `declared` comes
    from: celery_app_queues, or the queues the imported app uses)."""
    found: list[Refusal] = []
    for host, groups in layout.items():
        for group in groups:
            unknown = [q for q in group.get("queues") or [] if q not in declared]
            if unknown:
                found.append(
                    (
                        f"worker group '{group.get('name')}'",
                        host,
                        f" consumes {', '.join(map(repr, unknown))}, not declared by the app "
                        f"({source}: {', '.join(declared)}): fix the queue name in "
                        f"celery_workers_groups{fix}.",
                    )
                )
    return found


def layout_errors(
    layout: Layout, beat_hosts: Iterable[str], queues: Iterable[str], routes: Mapping[str, str]
) -> list[str]:
    """Check a layout. `layout` maps each worker host to its worker groups; `queues` and `routes`
    are the inventory's (celery_app_queues, celery_app_routes; empty: the app's own are read by
    app_report_errors)."""
    layout = {host: list(groups) for host, groups in layout.items()}
    declared = list(queues)
    errors: list[str] = []
    consumers = _consumers(layout)

    for pattern, queue in routes.items():
        if declared and queue not in declared:
            errors.append(
                f"celery_app_routes sends '{pattern}' to queue '{queue}', which the app does not "
                f"declare (celery_app_queues: {', '.join(declared)}): fix the route or declare "
                "the queue."
            )
        elif queue not in consumers:
            errors.append(
                f"queue '{queue}' has no consumer: celery_app_routes sends '{pattern}' there but "
                "no worker group in celery_workers_groups consumes it, so those tasks would wait "
                f"forever. Add '{queue}' to the queues of a group, or route '{pattern}' elsewhere."
            )
    if declared:
        found = undeclared_queue_errors(
            layout, declared, "celery_app_queues", " or declare the queue"
        )
        errors += once(found)

    beat = sorted(beat_hosts)
    if len(beat) == 0 and layout:
        errors.append(
            "no host runs beat, so no periodic task is ever sent: set "
            "celery_workers_beat_enabled: true on exactly one host of celery_workers."
        )
    elif len(beat) > 1:
        errors.append(
            f"beat is enabled on {len(beat)} hosts ({', '.join(beat)}): every periodic task would "
            "run that many times. Set celery_workers_beat_enabled: false on all of them but one."
        )
    return errors


def _layout(worker_hosts: Iterable[str], settings: Mapping[str, Mapping[str, Any]]) -> Layout:
    return {h: list(settings[h]["celery_workers_groups"]) for h in worker_hosts}


def celery_layout_errors(
    worker_hosts: Iterable[str],
    settings: Mapping[str, Mapping[str, Any]],
    queues: Iterable[str],
    routes: Mapping[str, str],
) -> list[str]:
    """Ansible entry point: each worker host's layout and beat from its settings (the
    inventory's, else celery_workers' defaults: validate.yml's __validate_settings)."""
    worker_hosts = list(worker_hosts)
    beat = [h for h in worker_hosts if truthy(settings[h]["celery_workers_beat_enabled"])]
    return layout_errors(_layout(worker_hosts, settings), beat, queues, routes)


def app_report_errors(
    report: Mapping[str, Any],
    layout: Layout,
    queues: Iterable[str] | None = None,
    longest_countdown: int = 0,
    routes: Mapping[str, str] | None = None,
) -> list[str]:
    """Check the real app (as inspect_app.py reports it) against the layout that will run it.

    `layout` maps each worker host to its groups; `queues` and `routes` are celery_app_queues
    and celery_app_routes from the inventory (None or empty: read from the app, nothing to
    compare); `longest_countdown` is celery_app_longest_countdown.
    """
    layout = {host: list(groups) for host, groups in layout.items()}
    consumers = _consumers(layout)
    tasks: Mapping[str, Mapping[str, Any]] = report["tasks"]
    errors: list[str] = []
    found: list[Refusal] = []

    if report.get("transport_error"):
        errors.append(
            f"the app's broker client does not load ({report['transport_error']}): every worker "
            "would crash at start. Keep celery[redis] in celery_app_broker_requirements (the "
            "default), or add the missing module to the app's requirements."
        )
    used_queues = list(report.get("queues") or report["declared_queues"])
    if queues and sorted(queues) != sorted(used_queues):
        errors.append(
            f"celery_app_queues ({', '.join(queues)}) differs from the queues the app uses "
            f"({', '.join(used_queues)}): leave celery_app_queues unset (the toolkit reads them "
            "from the app) or make it the same."
        )
    # whatever celery_app_queues says, the groups consume only what the app really uses
    errors += once(undeclared_queue_errors(layout, used_queues, "its queues", ""))
    for pattern in report["route_patterns"]:
        if not any(fnmatchcase(name, pattern) for name in tasks):
            errors.append(
                f"the app's route '{pattern}' matches no registered task: its tasks fall into "
                f"'{report['default_queue']}' instead. Fix the pattern in the app's task_routes "
                "(a typo in a module name?) or remove it."
            )
    for pattern, queue in (routes or {}).items():
        matched = sorted(name for name in tasks if fnmatchcase(name, pattern))
        if not matched:
            errors.append(
                f"celery_app_routes pattern '{pattern}' matches no task the app registers, so "
                f"the tasks meant for it land in '{report['default_queue']}': fix the pattern "
                "(celery_app_routes mirrors the app's task_routes), or leave celery_app_routes "
                "unset: the toolkit reads the app's routing."
            )
        elif other := [n for n in matched if tasks[n].get("queue") not in (None, queue)]:
            errors.append(
                f"celery_app_routes sends '{pattern}' to queue '{queue}', but the app sends "
                f"{other[0]} to '{tasks[other[0]]['queue']}': make celery_app_routes mirror the "
                "app's task_routes, or leave it unset: the toolkit reads the app's routing."
            )
    used = {t.get("queue") for t in tasks.values()} | {report["default_queue"]}
    for queue, where in sorted(consumers.items()):
        if queue in used_queues and queue not in used:
            errors.append(
                f"queue '{queue}' is consumed by {', '.join(where)} but no task of the app "
                "lands there: those workers idle. Route tasks to it or drop it from the groups."
            )
    stranded: dict[str, list[str]] = {}
    for name, task in sorted(tasks.items()):
        queue = task.get("queue")
        if queue is None:
            errors.append(f"task {name} cannot be routed: {task.get('error')}.")
        elif queue not in consumers:
            stranded.setdefault(queue, []).append(name)
    for queue, names in sorted(stranded.items()):
        shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        errors.append(
            f"queue '{queue}' has no consumer: the app sends {len(names)} task(s) there "
            f"({shown}), and no worker group in celery_workers_groups consumes it, so they "
            f"would wait forever. Add '{queue}' to the queues of a group, or route them elsewhere."
        )
    for entry, name in report["beat"].items():
        if name not in tasks:
            errors.append(
                f"beat entry '{entry}' sends '{name}', which the app does not register: every "
                "run would fail. Fix the task name in the app's beat_schedule."
            )

    limits = {name: int(t["time_limit"]) for name, t in tasks.items() if t.get("time_limit")}
    if limits:
        longest = max(limits.values())
        needed = longest + int(longest_countdown)
        if int(report["visibility_timeout"]) <= needed:
            errors.append(
                f"the broker's visibility_timeout ({report['visibility_timeout']} s) is not "
                f"longer than the longest task time limit ({longest} s, "
                f"{max(limits, key=limits.get)}) plus the longest countdown "
                f"(celery_app_longest_countdown: {longest_countdown} s): such a task would be "
                "delivered again while it runs. Raise the app's broker_transport_options "
                f"visibility_timeout above {needed} s."
            )
    for host, groups in layout.items():
        for group in groups:
            own = [
                n for n, lim in limits.items() if tasks[n].get("queue") in group.get("queues", [])
            ]
            if not own:
                continue
            slowest = max(own, key=limits.get)
            if int(group.get("stop_timeout", 0)) < limits[slowest]:
                found.append(
                    (
                        f"worker group '{group.get('name')}'",
                        host,
                        f" has stop_timeout {group.get('stop_timeout')} s, shorter than the time "
                        f"limit of {slowest} ({limits[slowest]} s) that it runs: a stop or deploy "
                        f"would kill that task. Set its stop_timeout to at least "
                        f"{limits[slowest]}.",
                    )
                )
    return errors + once(found)


def celery_app_report_errors(
    report: Mapping[str, Any],
    worker_hosts: Iterable[str],
    settings: Mapping[str, Mapping[str, Any]],
    queues: Iterable[str] | None = None,
    longest_countdown: int = 0,
    routes: Mapping[str, str] | None = None,
) -> list[str]:
    """Ansible entry point of app_report_errors: the layout is read from each host's settings."""
    return app_report_errors(
        report, _layout(worker_hosts, settings), queues, longest_countdown, routes
    )


def group_errors(host: str, groups: Iterable[Mapping[str, Any]]) -> list[Refusal]:
    """What the argument spec of celery_workers_groups cannot say: a name usable as a systemd
    instance, at least one queue, numbers above 0, no name twice (types, required fields and
    the pool's choices are in roles/celery_workers/meta/argument_specs.yml)."""
    found: list[Refusal] = []
    names: list[str] = []
    for group in groups:
        name = str(group.get("name", ""))
        names.append(name)
        subject = f"worker group '{name}'"
        if not NAME.match(name):
            found.append(
                (
                    subject,
                    host,
                    f" (celery_workers_groups): the name must be {NAME_RULE}: it names the "
                    f"group's process (<app>-worker@{name}) and the worker's node name.",
                )
            )
        if not group.get("queues"):
            found.append(
                (
                    subject,
                    host,
                    " consumes no queue: give it queues in celery_workers_groups or remove the "
                    "group.",
                )
            )
        for key in POSITIVE:
            value = group.get(key)
            try:
                ok = int(value) > 0
            except (TypeError, ValueError):
                continue  # not a whole number: the argument spec (type int) names it
            if not ok:
                found.append(
                    (
                        subject,
                        host,
                        f" (celery_workers_groups): {key} must be a whole number above 0, not "
                        f"{value!r}.",
                    )
                )
    for name in sorted({n for n in names if names.count(n) > 1}):
        found.append(
            (f"worker group '{name}'", host, " appears twice: give each group its own name.")
        )
    return found


def celery_group_errors(groups: Iterable[Mapping[str, Any]], host: str) -> list[str]:
    """Ansible entry point of group_errors (roles/celery_workers preflight)."""
    return once(group_errors(host, groups))


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {
            f.__name__: f
            for f in (celery_layout_errors, celery_app_report_errors, celery_group_errors)
        }
