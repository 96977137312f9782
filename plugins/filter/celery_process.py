"""The filters of the process-manager seam (roles/celery_process), the one place besides that
role that knows the process managers apart: which managers the toolkit supports, the Celery
node name of a worker group under each, the manager a host's record names, and what a manager
says of the app's processes in one shape (the health gate's refusal and beat's check read
`running`, `restarts` (a count, "?", or None when the manager keeps none) and `instance`
(changes when the process restarts)).

A process is named "worker@<group>", "beat" or "flower"; under systemd it is the unit
"<app>-<process>.service", under supervisor the program `celery_supervisor_program` names.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

from ansible_collections.celery_toolkit.stack.plugins.plugin_utils.celery_common import (
    Refusal,
    at_least,
)

try:
    from ansible.errors import AnsibleFilterError
except ImportError:  # the unit tests import the plugin without Ansible's package on the path
    AnsibleFilterError = ValueError  # type: ignore[assignment,misc]

# The process managers the toolkit supports (celery_process_manager, owned by the role celery),
# in the order the seam looks under them, each with the Celery node name of a worker group run
# by it (--hostname). The node names differ so that while a host switches manager both
# generations of a group consume side by side, and a drain (a control command sent to one node
# name) reaches only the one that stops.
MANAGERS: dict[str, str] = {
    "systemd": "{group}@{host}",
    "supervisor": "{group}@supervisor.{host}",
}
# What a host's record of an earlier toolkit version (no "manager" key) ran under.
RECORDED_BEFORE_MANAGERS = "systemd"
# Settings of the app that only one manager can apply: variable -> (that manager, what it is there).
ONE_MANAGER_SETTINGS: dict[str, tuple[str, str]] = {
    "celery_app_memory_deny_write_execute": ("systemd", "MemoryDenyWriteExecute="),
}


# issue 21: the bounds of the app's logs under each manager (celery_app_journal_max_use,
# celery_app_log_*), checked by celery_inventory's rules: the sizes and spans journald and systemd
# (parse_size, parse_sec) and supervisord (its byte_size: KB, MB, GB, any case) read, above 0
# (0 would lift the bound).
JOURNAL_SIZE = re.compile(r"^([0-9]+)[KMGT]?$")
TIME_SPAN = re.compile(r"^([0-9]+)(us|ms|s|sec|min|m|h)?$")
SUPERVISOR_SIZE = re.compile(r"^([0-9]+)(kb|mb|gb)?$", re.IGNORECASE)
LOG_FORMATS: dict[str, tuple[re.Pattern[str], str]] = {
    "celery_app_journal_max_use": (
        JOURNAL_SIZE,
        "a size journald reads, above 0: bytes, or a number with K, M, G or T ('1G', the default)",
    ),
    "celery_app_log_rate_limit_interval": (
        TIME_SPAN,
        "a time span systemd reads, above 0: seconds, or a number with ms, s, min or h ('30s', the "
        "default)",
    ),
    "celery_app_log_max_bytes": (
        SUPERVISOR_SIZE,
        "a size supervisord reads, above 0: bytes, or a number with KB, MB or GB ('50MB', the "
        "default)",
    ),
}


def log_setting_errors(host: str, hv: Mapping[str, Any]) -> list[Refusal]:
    """The bounds of the app's logs (celery_app_journal_max_use, celery_app_log_*): values
    journald, systemd and supervisord read, none that lifts the bound."""
    found: list[Refusal] = []
    for var, (pattern, what) in LOG_FORMATS.items():
        text = str(hv[var]).strip()
        match = pattern.match(text)
        if isinstance(hv[var], bool) or not match or int(match.group(1)) == 0:
            found.append((var, host, f" is {hv[var]!r}: give {what}."))
    found += at_least(
        host,
        hv,
        "celery_app_log_rate_limit_burst",
        1,
        "give at least 1 message per interval (0 lifts the limit of what each service may log; "
        "10000 is the default).",
    )
    found += at_least(
        host,
        hv,
        "celery_app_log_backups",
        0,
        "give how many rotated files to keep, 0 or more (5, the default).",
    )
    return found


# What node_exporter (roles/node_exporter) collects of the app's processes under each manager:
# its collector options, and (supervisor) the socket it reads. The process names are the seam's
# ("worker@<group>", "beat", "flower", "exporter"); the rules of issue 20 read the metrics.
# - systemd: the systemd collector (off by default in node_exporter 1.5) limited to the app's
#   units (node_exporter anchors the pattern: ^(?:...)$), with NRestarts as
#   node_systemd_service_restart_total.
# - supervisor: the supervisord collector over supervisord's unix socket (node_exporter 1.5 reads
#   unix:// URLs, collector/supervisord.go); Debian's supervisord.conf makes that socket root's
#   only (chmod=0700), so the seam's entry point `package_exporter` opens it to the exporter's group
#   (`access`).
# Debian's build of node_exporter (1.5, bookworm) turns the systemd collector on by default (every
# unit of the host; upstream's default is off): a host where systemd runs none of the app's
# processes turns it off.
APP_PROCESSES = ("worker@{group}", "beat", "flower", "exporter")
SYSTEMD_COLLECTOR_OFF = "--no-collector.systemd"
# supervisord's socket, as Debian's supervisord.conf names it (the seam's entry point
# `package_exporter` reads it here: `socket`).
SUPERVISOR_SOCKET = "/run/supervisor.sock"
# A worker group's name (celery_workers_groups; plugin_utils/celery_common.py NAME) in a pattern.
_GROUP_PATTERN = "[a-z][a-z0-9_-]{0,31}"
_RE2_SPECIAL = set(".^$*+?()[]{}|\\")


def _re2_literal(text: str) -> str:
    return "".join("\\" + char if char in _RE2_SPECIAL else char for char in text)


def celery_process_unit_pattern(app: str) -> str:
    """The pattern of the app's units under systemd (the systemd collector's unit-include):
    <app>-worker@<group>.service, <app>-beat.service, <app>-flower.service,
    <app>-exporter.service, nothing else."""
    processes = "|".join(
        _re2_literal(p).replace(_re2_literal("{group}"), _GROUP_PATTERN) for p in APP_PROCESSES
    )
    return f"{_re2_literal(app)}-(?:{processes})\\.service"


def celery_process_node_exporter(manager: str, app: str, runs_app: bool = True) -> dict[str, Any]:
    """node_exporter's settings for the app's processes under `manager` on a host: `args` (its
    command-line options) and `access` (whether the exporter's group must be let in by the seam's
    entry point `package_exporter`). A host that runs no process of the app (a broker only) gets
    neither (and Debian's default systemd collector of every unit is turned off)."""
    celery_process_managers(manager)
    if not runs_app:
        return {"args": [SYSTEMD_COLLECTOR_OFF], "access": False}
    if manager == "systemd":
        return {
            "args": [
                "--collector.systemd",
                f"--collector.systemd.unit-include={celery_process_unit_pattern(app)}",
                "--collector.systemd.enable-restarts-metrics",
                "--collector.systemd.enable-start-time-metrics",
            ],
            "access": False,
        }
    return {
        "args": [
            SYSTEMD_COLLECTOR_OFF,
            "--collector.supervisord",
            f"--collector.supervisord.url=unix://{SUPERVISOR_SOCKET}",
        ],
        "access": True,
        "socket": SUPERVISOR_SOCKET,
    }


def manager_setting_problems(manager: str, truthy_settings: Iterable[str]) -> list[tuple[str, str]]:
    """(variable, why) for each setting that is on but that `manager` (a host's
    celery_process_manager) cannot apply; the pre-deploy rules word them (celery_inventory.py)."""
    problems = []
    for name in truthy_settings:
        owner, what = ONE_MANAGER_SETTINGS.get(name, (manager, ""))
        if owner != manager:
            problems.append(
                (
                    name,
                    f" is true, where celery_process_manager is {manager!r}: it is a {owner} "
                    f"setting ({what}) that {manager} cannot apply; use {owner} on that host, or "
                    "set it to false.",
                )
            )
    return problems


def celery_process_managers(manager: str) -> list[str]:
    """Every supported manager (where the seam looks for what a host runs), after checking that
    `manager` (the host's celery_process_manager) is one of them."""
    if manager not in MANAGERS:
        raise AnsibleFilterError(
            f"celery_process_manager is {manager!r}: set it to one of {', '.join(MANAGERS)}"
        )
    return list(MANAGERS)


def celery_process_node(manager: str) -> str:
    """The node name pattern ("{group}@{host}"...) of a worker group under `manager`."""
    celery_process_managers(manager)
    return MANAGERS[manager]


def celery_process_recorded_manager(recorded: Any, fallback: str | None = None) -> str:
    """The manager a host's record (ansible_local[<app>]) says it runs under; a record without
    one: `fallback` when given, else what every toolkit version before the choice ran."""
    manager = recorded.get("manager") if isinstance(recorded, Mapping) else None
    return str(manager or fallback or RECORDED_BEFORE_MANAGERS)


# systemd's own journal entries about a unit's jobs (sd-messages.h): starting, started,
# stopping, stopped, a restart scheduled, the CPU a run consumed, a clean stop. A unit that
# crash-loops writes up to five of those between two runs, enough to push its own last words out
# of the last lines; "Main process exited" and "Failed with result" say why and stay.
_SYSTEMD_JOB_MESSAGES = frozenset(
    {
        "7d4958e842da4a758f6c1cdc7b36dcc5",  # Starting
        "39f53479d3a045ac8e11786248231fbf",  # Started
        "de5b426a63be47a7b6ac3eaac82e2f6f",  # Stopping
        "9d1aaa27d60140bd96365438aad20286",  # Stopped
        "5eb03494b6584870a536b337290809b3",  # Scheduled restart job
        "ae8f7b866b0347b9af31fe1c80b127c0",  # Consumed ... CPU time
        "7ad2d189f7e94e70a38c781354912448",  # Deactivated successfully
    }
)


def celery_supervisor_program(process: str, app: str) -> str:
    """The supervisord program of a process: <app>-worker-<group>, <app>-beat, <app>-flower."""
    return f"{app}-{process.replace('worker@', 'worker-', 1)}"


def celery_supervisor_status(
    lines: Iterable[str], app: str, processes: Iterable[str]
) -> dict[str, dict[str, str]]:
    """`supervisorctl status <program>...` output -> process -> {process, state, detail}.

    A line is "<program> <STATE> <description>"; a program supervisord does not know is
    "<program>: ERROR (no such process)" (state UNKNOWN here)."""
    seen: dict[str, tuple[str, str]] = {}
    for line in lines:
        fields = line.split(None, 2)
        if len(fields) >= 2 and not fields[0].endswith(":"):
            seen[fields[0]] = (fields[1], fields[2] if len(fields) > 2 else "")
    status = {}
    for process in processes:
        state, detail = seen.get(celery_supervisor_program(process, app), ("UNKNOWN", ""))
        status[process] = {"process": process, "state": state, "detail": detail.strip()}
    return status


def celery_supervisor_pids(status: Mapping[str, Mapping[str, str]]) -> dict[str, str]:
    """process -> pid of a running program (from `celery_supervisor_status`); a restart gives
    a new one. A program without a pid (stopped, starting) maps to ""."""
    return {process: _pid(str(entry.get("detail", ""))) for process, entry in status.items()}


def celery_supervisor_not_restarted(
    status: Mapping[str, Mapping[str, str]], pids_before: Mapping[str, str]
) -> list[str]:
    """The processes whose pid is what it was before (`celery_supervisor_pids`): not restarted
    since (or still not running)."""
    now = celery_supervisor_pids(status)
    return [process for process, pid in now.items() if pid == pids_before.get(process, "")]


def _pid(detail: str) -> str:
    return detail.split(",")[0].removeprefix("pid ").strip() if detail.startswith("pid ") else ""


def celery_supervisor_described(
    checks: Iterable[tuple[Mapping[str, Any], Mapping[str, Any]]],
) -> list[dict[str, Any]]:
    """Pairs of a `celery_supervisor_status` entry and a `tail` of its log -> the neutral shape.
    supervisord counts no restarts: a restart shows as a new pid (`instance`)."""
    described = []
    for status, log in checks:
        detail = str(status.get("detail", ""))
        pid = _pid(detail)
        described.append(
            {
                "process": status.get("process", "?"),
                "manager": "supervisor",
                "state": status.get("state", "?"),
                "detail": detail or "-",
                "restarts": None,  # supervisord counts none
                "instance": pid,
                "running": status.get("state") == "RUNNING",
                "log": list(log.get("stdout_lines", []))[-6:],
            }
        )
    return described


def _journal_lines(lines: Iterable[str], keep: int = 6) -> list[str]:
    """The last `keep` messages of `journalctl -o json` lines, without systemd's job messages;
    a line that is not a journal entry in JSON is kept as it is."""
    messages: list[str] = []
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            entry = None
        if not isinstance(entry, dict):
            messages.append(line)
            continue
        if entry.get("MESSAGE_ID") in _SYSTEMD_JOB_MESSAGES:
            continue
        message = entry.get("MESSAGE", "")
        if isinstance(message, list):  # journald gives bytes that are not UTF-8 as numbers
            message = bytes(b for b in message if isinstance(b, int)).decode("utf-8", "replace")
        messages.extend(str(message).splitlines() or [""])
    return messages[-keep:]


def celery_systemd_described(
    checks: Iterable[tuple[Mapping[str, Any], Mapping[str, Any]]],
) -> list[dict[str, Any]]:
    """Pairs of `systemctl show -p ActiveState -p SubState -p NRestarts` and `journalctl -o json`
    results, looped over process names -> the neutral shape."""
    described: list[dict[str, Any]] = []
    for state, log in checks:
        props = dict(line.split("=", 1) for line in state.get("stdout_lines", []) if "=" in line)
        described.append(
            {
                "process": str(state.get("item", "?")),
                "manager": "systemd",
                "state": props.get("ActiveState", "?"),
                "detail": props.get("SubState", "?"),
                "restarts": props.get("NRestarts", "?"),
                "instance": props.get("NRestarts", "?"),
                "running": props.get("ActiveState") == "active",
                "log": _journal_lines(log.get("stdout_lines", [])),
            }
        )
    return described


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {
            "celery_process_managers": celery_process_managers,
            "celery_process_node_exporter": celery_process_node_exporter,
            "celery_process_unit_pattern": celery_process_unit_pattern,
            "celery_process_node": celery_process_node,
            "celery_process_recorded_manager": celery_process_recorded_manager,
            "celery_supervisor_program": celery_supervisor_program,
            "celery_supervisor_status": celery_supervisor_status,
            "celery_supervisor_described": celery_supervisor_described,
            "celery_supervisor_pids": celery_supervisor_pids,
            "celery_supervisor_not_restarted": celery_supervisor_not_restarted,
            "celery_systemd_described": celery_systemd_described,
        }


# issue 20: prometheus
# What node_exporter says of a process of the app under each manager: the alert rules
# (plugins/filter/celery_alerts.py) record "process P of the app runs on host H" (1/0) and "P's
# restarts over RESTART_WINDOW" from these expressions, and never name a manager themselves.
# systemd: node_exporter 1.5's systemd collector, `node_systemd_unit_state{name=<unit>,state=...}`
# (1 for the unit's current state) and, with --collector.systemd.enable-restarts-metrics,
# `node_systemd_service_restart_total{name=<unit>}` (systemd's NRestarts: automatic restarts).
# supervisor: its supervisord collector, `node_supervisord_up{name=<program>}` (1 while RUNNING,
# STARTING or STOPPING) and `node_supervisord_start_time_seconds` (emitted while running; a restart
# changes it, supervisord counts none).
RESTART_WINDOW = "15m"


def _label(value: str) -> str:
    """A PromQL label value in double quotes."""
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _series(metric: str, host: str, **labels: str) -> str:
    matchers = {"job": "node", "host": host, **labels}
    return metric + "{" + ",".join(f"{k}={_label(v)}" for k, v in matchers.items()) + "}"


def celery_process_up_promql(manager: str, app: str, process: str, host: str) -> str:
    """PromQL, one series labelled `host`: 1 when `process` ("worker@<group>", "beat", "flower",
    "exporter") of `app` runs on `host` under `manager`, 0 when it does not, or when the manager
    does not know it while node_exporter answers; 0 too when node_exporter does not answer."""
    celery_process_managers(manager)
    if manager == "systemd":
        running = _series(
            "node_systemd_unit_state", host, name=f"{app}-{process}.service", state="active"
        )
    else:
        running = _series("node_supervisord_up", host, name=celery_supervisor_program(process, app))
    reachable = _series("up", host)
    return f"max by (host) ({running}) or on (host) (0 * max by (host) ({reachable}))"


def celery_process_restarts_promql(manager: str, app: str, process: str, host: str) -> str:
    """PromQL, one series labelled `host`: how often `process` of `app` restarted on `host` over
    the last RESTART_WINDOW under `manager` (absent while node_exporter does not know it)."""
    celery_process_managers(manager)
    if manager == "systemd":
        counter = _series(
            "node_systemd_service_restart_total", host, name=f"{app}-{process}.service"
        )
        return f"max by (host) (increase({counter}[{RESTART_WINDOW}]))"
    start = _series(
        "node_supervisord_start_time_seconds", host, name=celery_supervisor_program(process, app)
    )
    return f"max by (host) (changes({start}[{RESTART_WINDOW}]))"
