"""What a process manager says of the app's processes, in one shape for the layout flow
(roles/celery_workers/tasks/layout.yml): the health gate's refusal and beat's check read
`running`, `restarts` (a count, or "?") and `instance` (changes when the process restarts).

A process is named "worker@<group>", "beat" or "flower"; under systemd it is the unit
"<app>-<process>.service", under supervisor the program `celery_supervisor_program` names.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


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
                "restarts": "?",
                "instance": pid,
                "running": status.get("state") == "RUNNING",
                "log": list(log.get("stdout_lines", []))[-6:],
            }
        )
    return described


def celery_systemd_described(
    checks: Iterable[tuple[Mapping[str, Any], Mapping[str, Any]]],
) -> list[dict[str, Any]]:
    """Pairs of `systemctl show -p ActiveState -p SubState -p NRestarts` and `journalctl -o cat`
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
                "log": list(log.get("stdout_lines", []))[-6:],
            }
        )
    return described


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {
            "celery_supervisor_program": celery_supervisor_program,
            "celery_supervisor_status": celery_supervisor_status,
            "celery_supervisor_described": celery_supervisor_described,
            "celery_supervisor_pids": celery_supervisor_pids,
            "celery_supervisor_not_restarted": celery_supervisor_not_restarted,
            "celery_systemd_described": celery_systemd_described,
        }
