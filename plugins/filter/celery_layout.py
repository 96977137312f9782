"""Cross-variable rules of a Celery layout, checked before any host is changed.

`celery_layout_errors` returns a list of messages, each naming the queue, group or host at
fault and the fix; an empty list means the layout is sound.
"""

from __future__ import annotations

import json
import posixpath
import re
from collections.abc import Iterable, Mapping
from fnmatch import fnmatchcase
from typing import Any
from urllib.parse import unquote, urlsplit

GROUP_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
POSITIVE = (
    "concurrency",
    "prefetch_multiplier",
    "max_tasks_per_child",
    "max_memory_per_child",
    "stop_timeout",
)
# Values that mark a sample secret: inventories/example's placeholders and the sandbox's.
PLACEHOLDERS = ("change-me", "changeme", "not-secret", "sandbox-")


def _consumers(layout: Mapping[str, Iterable[Mapping[str, Any]]]) -> dict[str, list[str]]:
    """Queue name -> ["host/group", ...] of the groups that consume it."""
    consumers: dict[str, list[str]] = {}
    for host, groups in layout.items():
        for group in groups:
            for queue in group.get("queues") or []:
                consumers.setdefault(queue, []).append(f"{host}/{group.get('name')}")
    return consumers


def layout_errors(
    layout: Mapping[str, Iterable[Mapping[str, Any]]],
    beat_hosts: Iterable[str],
    queues: Iterable[str],
    routes: Mapping[str, str],
) -> list[str]:
    """Check a layout. `layout` maps each worker host to its worker groups; `queues` and `routes`
    are the inventory's (empty when the app's own are read by app_report_errors)."""
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

    for host, groups in layout.items():
        for group in groups:
            name = group.get("name")
            consumed = list(group.get("queues") or [])
            if not consumed:
                continue  # group_errors names it
            unknown = [q for q in consumed if q not in declared]
            if declared and unknown:
                errors.append(
                    f"worker group '{name}' on {host} consumes {', '.join(map(repr, unknown))}, "
                    f"not declared by the app (celery_app_queues: {', '.join(declared)}): fix the "
                    "queue name in celery_workers_groups or declare the queue."
                )

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


def celery_layout_errors(
    worker_hosts: Iterable[str],
    hostvars: Mapping[str, Mapping[str, Any]],
    queues: Iterable[str],
    routes: Mapping[str, str],
    default_groups: Iterable[Mapping[str, Any]],
    default_beat: bool = True,
) -> list[str]:
    """Ansible entry point: read each worker host's layout from hostvars (role defaults apply)."""
    layout: dict[str, list[Mapping[str, Any]]] = {}
    beat_hosts = []
    for host in worker_hosts:
        hv = hostvars[host]
        layout[host] = list(hv.get("celery_workers_groups", default_groups))
        if _truthy(hv.get("celery_workers_beat_enabled", default_beat)):
            beat_hosts.append(host)
    return layout_errors(layout, beat_hosts, queues, routes)


def app_report_errors(
    report: Mapping[str, Any],
    layout: Mapping[str, Iterable[Mapping[str, Any]]],
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
    if not queues:  # with celery_app_queues set, layout_errors has checked the groups against it
        for host, groups in layout.items():
            for group in groups:
                unknown = [q for q in group.get("queues") or [] if q not in used_queues]
                if unknown:
                    errors.append(
                        f"worker group '{group.get('name')}' on {host} consumes "
                        f"{', '.join(map(repr, unknown))}, not declared by the app (its queues: "
                        f"{', '.join(used_queues)}): fix the queue name in celery_workers_groups."
                    )
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
                errors.append(
                    f"worker group '{group.get('name')}' on {host} has stop_timeout "
                    f"{group.get('stop_timeout')} s, shorter than the time limit of {slowest} "
                    f"({limits[slowest]} s) that it runs: a stop or deploy would kill that task. "
                    f"Set its stop_timeout to at least {limits[slowest]}."
                )
    return errors


def group_errors(host: str, groups: Iterable[Mapping[str, Any]]) -> list[str]:
    """What the argument spec of celery_workers_groups cannot say: a name usable as a systemd
    instance, at least one queue, numbers above 0, no name twice (types, required fields and
    the pool's choices are in roles/celery_workers/meta/argument_specs.yml)."""
    errors: list[str] = []
    names: list[str] = []
    for group in groups:
        name = str(group.get("name", ""))
        names.append(name)
        where = f"worker group '{name}' on {host} (celery_workers_groups)"
        if not GROUP_NAME.match(name):
            errors.append(
                f"{where}: the name must be lowercase letters, digits, '-' or '_', starting "
                "with a letter, at most 32 characters: it names a systemd instance "
                f"(<app>-worker@{name}.service) and the worker's node name."
            )
        if not group.get("queues"):
            errors.append(
                f"worker group '{name}' on {host} consumes no queue: give it queues in "
                "celery_workers_groups or remove the group."
            )
        for key in POSITIVE:
            value = group.get(key)
            try:
                ok = int(value) > 0 and str(int(value)) == str(value).strip()
            except (TypeError, ValueError):
                ok = False
            if not ok:
                errors.append(f"{where}: {key} must be a whole number above 0, not {value!r}.")
    for name in sorted({n for n in names if names.count(n) > 1}):
        errors.append(
            f"worker group '{name}' appears twice on {host}: give each group its own name."
        )
    return errors


def secret_errors(
    host: str, secrets: Mapping[str, tuple[Any, int]], sandbox: bool
) -> list[tuple[str, str, str]]:
    """Secrets (name -> (value, minimum length)) a host needs, never left at a sample value
    outside the sandbox. (variable, host, problem) triples: `_once` words them."""
    errors: list[tuple[str, str, str]] = []
    for name, (value, minimum) in secrets.items():
        text = "" if value is None else str(value)
        if len(text) < minimum:
            errors.append(
                (
                    name,
                    host,
                    f" is {'empty' if not text else 'too short'}: set it (at least {minimum} "
                    "characters) in the inventory, encrypted with ansible-vault.",
                )
            )
        elif not sandbox and any(marker in text.lower() for marker in PLACEHOLDERS):
            errors.append(
                (
                    name,
                    host,
                    " still holds a sample value: replace it with a real secret (and "
                    "ansible-vault encrypt the file it lives in).",
                )
            )
    return errors


def _hosts(hosts: list[str]) -> str:
    """vm1 / vm1 and vm2 / vm1, vm2 and vm3 / vm1, vm2, vm3 and 7 more hosts."""
    if len(hosts) > 4:
        return f"{', '.join(hosts[:3])} and {len(hosts) - 3} more hosts"
    return " and ".join(filter(None, [", ".join(hosts[:-1]), hosts[-1]]))


def _once(found: Iterable[tuple[str, str, str]]) -> list[str]:
    """(variable, host, problem) -> one message per variable and problem, naming every host it
    is found on: a value from group_vars is the same on many hosts and is said once."""
    hosts: dict[tuple[str, str], list[str]] = {}
    for var, host, problem in found:
        where = hosts.setdefault((var, problem), [])
        if host not in where:
            where.append(host)
    return [f"{var} on {_hosts(where)}{problem}" for (var, problem), where in hosts.items()]


# Characters no secret and no environment value may hold: the C0 controls (NUL, tab, newline,
# carriage return, ESC...), DEL, the C1 controls and the Unicode line and paragraph separators.
# A newline ends a line of Redis's configuration and of an environment file (systemd's
# EnvironmentFile= and the toolkit's reader), a NUL ends a C string; Python's splitlines() also
# breaks at U+0085, U+2028 and U+2029. Every printable character (space, quotes, '#', '$',
# '\\') is written byte for byte.
CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
CONTROL_NAMES = {"\x00": "a NUL", "\t": "a tab", "\n": "a newline", "\r": "a carriage return"}


def _control(value: Any) -> str:
    """What the first control character of `value` is ("" when none), never the value itself."""
    found = CONTROL.search(str(value))
    if not found:
        return ""
    char = found.group()
    return CONTROL_NAMES.get(char, f"a control character (U+{ord(char):04X})")


ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Names the toolkit sets itself (roles/celery_app/templates/etc/app.env.j2,
# roles/flower/templates/etc/app/flower.env.j2, the units' and programs' environment, app-run):
# given again in celery_app_environment, which one a process sees would depend on the order of
# the files and on the process manager. Value: where the toolkit's value comes from.
TOOLKIT_ENV = {
    "CELERY_APP": "from celery_app_module",
    "CELERY_BROKER_URL": "from celery_app_broker_url",
    "CELERY_RESULT_BACKEND": "from celery_app_result_backend",
    "CELERY_APP_RELEASE": "the restart mark of beat and Flower",
    "FLOWER_ADDRESS": "from flower_address",
    "FLOWER_PORT": "from flower_port",
    "FLOWER_BASIC_AUTH": "from flower_basic_auth_user and flower_basic_auth_password",
    "FLOWER_PERSISTENT": "from flower_persistent",
    "FLOWER_DB": "in Flower's state folder",
    "FLOWER_MAX_TASKS": "from flower_max_tasks",
    "FLOWER_PURGE_OFFLINE_WORKERS": "600 s",
    "PATH": "<app>-run puts the release's virtualenv first",
    "HOME": "the app user's, from the process manager",
    "USER": "the app user's, from the process manager",
    "LOGNAME": "the app user's, from the process manager",
}
TOOLKIT_ENV_PREFIX = "CELERY_TOOLKIT_"  # <app>-run's own (CELERY_TOOLKIT_ENV_FILE, ..._APP_DIR)


def environment_errors(host: str, environment: Any) -> list[tuple[str, str, str]]:
    """celery_app_environment: names that are environment variable names and not the toolkit's
    own; values that are one string (or a number, true/false) without a control character.
    Never prints a value (it may be a secret)."""
    if not isinstance(environment, Mapping):
        return []  # the argument spec says it is a dict
    var = "celery_app_environment"
    errors: list[tuple[str, str, str]] = []
    for name, value in environment.items():
        name = str(name)
        if not ENV_NAME.match(name):
            fixed = re.sub(r"^(?=[0-9])|[^A-Za-z0-9_]", "_", name)
            errors.append(
                (
                    var,
                    host,
                    f": {name!r} is not an environment variable name (letters, digits and '_', "
                    "not starting with a digit): no environment file can carry it and the app "
                    f"could not read it. Rename it, e.g. {fixed!r}.",
                )
            )
            continue
        if name in TOOLKIT_ENV or name.startswith(TOOLKIT_ENV_PREFIX):
            why = TOOLKIT_ENV.get(name, "<app>-run's own")
            fix = f" and set {why[5:]}" if why.startswith("from ") else ""
            errors.append(
                (
                    var,
                    host,
                    f" sets {name}, which the toolkit sets itself ({why}): remove it from "
                    f"celery_app_environment{fix}.",
                )
            )
            continue
        if value is None or isinstance(value, (Mapping, list, tuple, set)):
            kind = "empty (null)" if value is None else f"a {type(value).__name__}"
            errors.append(
                (
                    var,
                    host,
                    f": the value of {name} is {kind}: an environment variable holds one string. "
                    "Write a string (quoted in YAML, '' for empty), a number or true/false.",
                )
            )
        elif kind := _control(value):
            errors.append(
                (
                    var,
                    host,
                    f": the value of {name} holds {kind}, which an environment file (systemd's "
                    "EnvironmentFile=, the toolkit's reader) cannot carry: remove it. Give a "
                    "multi-line value (a key, a certificate) base64-encoded, or as a file the app "
                    "reads.",
                )
            )
    return errors


# A Redis ACL user name is one word of Redis's configuration and the user part of the broker URL.
ACL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
PRINTABLE_FINE = "any printable character is fine, space, quotes, '#' and '$' included"


def credential_errors(
    host: str, hv: Mapping[str, Any], names: Iterable[str]
) -> list[tuple[str, str, str]]:
    """The characters of the credentials `names` (of redis_password, redis_acl_users,
    flower_basic_auth_user, flower_basic_auth_password) that the host's files cannot carry. The
    toolkit writes Redis's passwords quoted, so only control characters are refused there;
    Flower's FLOWER_BASIC_AUTH is a comma-separated list of user:password. Never prints a
    secret."""
    errors: list[tuple[str, str, str]] = []
    names = list(names)
    if "redis_password" in names and (kind := _control(hv.get("redis_password") or "")):
        errors.append(
            (
                "redis_password",
                host,
                f" holds {kind}: Redis's configuration ends a directive at a newline and the "
                "whole file at a NUL, so the password would be cut short or add a configuration "
                "line of its own; no control character is accepted. Choose a password without one "
                f"({PRINTABLE_FINE}).",
            )
        )
    users = hv.get("redis_acl_users") if "redis_acl_users" in names else None
    for user in users if isinstance(users, list) else []:
        if not isinstance(user, Mapping):
            continue  # the argument spec says each is a dict
        name = str(user.get("name", ""))
        if not ACL_NAME.match(name):
            errors.append(
                (
                    "redis_acl_users",
                    host,
                    f": the user name {name!r} is not a plain word: use letters, digits, '.', "
                    "'_' and '-' (it is a word of Redis's configuration and the user part of "
                    "celery_app_broker_url).",
                )
            )
        if kind := _control(user.get("password") or ""):
            errors.append(
                (
                    "redis_acl_users",
                    host,
                    f": the password of user {name!r} holds {kind}: Redis's configuration ends a "
                    "directive at a newline and the whole file at a NUL; no control character is "
                    f"accepted. Choose a password without one ({PRINTABLE_FINE}).",
                )
            )
    for var in ("flower_basic_auth_user", "flower_basic_auth_password"):
        if var not in names:
            continue
        text = str(hv.get(var) or "")
        what = "user" if var.endswith("user") else "password"
        if kind := _control(text):
            errors.append(
                (
                    var,
                    host,
                    f" holds {kind}, which Flower's environment file cannot carry: choose a "
                    f"{what} without control characters.",
                )
            )
        if "," in text:
            errors.append(
                (
                    var,
                    host,
                    " holds ',': Flower reads FLOWER_BASIC_AUTH as a comma-separated list of "
                    f"user:password pairs, so the {what} would be split into two credentials, one "
                    f"of them a fragment. Choose a {what} without ','.",
                )
            )
        if what == "user" and ":" in text:
            errors.append(
                (
                    var,
                    host,
                    " holds ':', which HTTP Basic auth (RFC 7617) does not allow in a user: "
                    "clients split user:password at the first ':'. Choose a user without ':'.",
                )
            )
        if what == "user" and " " in text:
            errors.append((var, host, " holds a space: choose a user name without spaces."))
    return errors


def celery_credential_errors(hv: Mapping[str, Any], host: str) -> list[str]:
    """Ansible entry point of credential_errors for a role used outside the toolkit's playbooks
    (roles/flower): checks the credentials `hv` holds."""
    names = ("redis_password", "redis_acl_users")
    names += ("flower_basic_auth_user", "flower_basic_auth_password")
    return _once(credential_errors(host, hv, [n for n in names if n in hv]))


def celery_environment_errors(environment: Any, host: str = "the first worker") -> list[str]:
    """Ansible entry point of environment_errors (validate.yml imports the app on the controller
    only with an environment that passes)."""
    return _once(environment_errors(host, environment))


def batch_errors(value: Any) -> list[str]:
    """celery_deploy_batch becomes the rolling play's `serial`: hosts (>= 1) or a percentage, or
    a list of those (growing batches). A bad value would fail only when that play starts, after
    the broker play has run."""
    for item in value if isinstance(value, list) and value else [value]:
        text = str(item).strip()
        if isinstance(item, bool) or not re.fullmatch(r"[0-9]+%?", text):
            break
        number = int(text.rstrip("%"))
        if number < 1 or (text.endswith("%") and number > 100):
            break
    else:
        return []
    return [
        f"celery_deploy_batch must be a number of hosts (1 or more), a percentage from '1%' to "
        f"'100%', or a list of those; got {value!r}: set it in group_vars/all (1 = one host at "
        "a time, the safest rolling restart)"
    ]


PROCESS_MANAGERS = ("systemd", "supervisor")
# Variables an earlier version of the toolkit read, and the ones that replaced them: an
# inventory that still sets one would silently lose its effect.
RENAMED = {
    "celery_workers_memory_deny_write_execute": "celery_app_memory_deny_write_execute (it now "
    "hardens every service of the app, Flower too)",
}


def renamed_errors(host: str, hv: Mapping[str, Any]) -> list[str]:
    return [
        f"{old} is set on {host} but the toolkit no longer reads it: set {new}"
        for old, new in RENAMED.items()
        if old in hv
    ]


def process_manager_errors(host: str, hv: Mapping[str, Any]) -> list[str]:
    """celery_process_manager names what runs the host's Celery processes; settings that only
    systemd applies cannot be asked of supervisor."""
    manager = hv.get("celery_process_manager", "systemd")
    if manager not in PROCESS_MANAGERS:
        return [
            f"celery_process_manager is {manager!r} on {host}: set it to 'systemd' (units, the "
            "default) or 'supervisor' (supervisord programs)"
        ]
    if manager == "supervisor" and _truthy(hv.get("celery_app_memory_deny_write_execute", False)):
        return [
            f"celery_app_memory_deny_write_execute is true on {host}, where celery_process_manager "
            "is 'supervisor': it is a systemd setting (MemoryDenyWriteExecute=) that supervisord "
            "cannot apply; use systemd on that host, or set it to false"
        ]
    return []


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


# Accounts a Debian host already has (or that the toolkit's other services use): the app must
# run as its own unprivileged user, and its folders and units must not take over theirs.
RESERVED_ACCOUNTS = _words(
    "root daemon bin sys sync games man lp mail news uucp proxy www-data backup list irc "
    "gnats nobody nogroup adm sudo staff users disk shadow utmp tty kmem dialout cdrom floppy "
    "audio video plugdev netdev operator src voice tape input sgx kvm render crontab "
    "messagebus sshd _apt systemd-journal systemd-network systemd-resolve systemd-timesync "
    "redis docker"
)
# systemd applies the app's hardening drop-in (<name>-.service.d/) to every unit whose name
# starts with "<name>-": these names would harden (and break) units of the system.
SYSTEM_UNIT_PREFIXES = _words(
    "systemd user getty serial-getty console-getty container-getty apt dpkg dbus ssh cron "
    "e2scrub fstrim logrotate man-db polkit network networking ifup wpa rsyslog supervisor "
    "redis docker containerd emergency rescue kmod modprobe initrd quotaon rc sys dev run "
    "user-runtime-dir setvtrgb keyboard console"
)
# Folders the system owns: the toolkit makes its base and config folders its own (owner, mode)
# and deletes old releases in the base folder.
SYSTEM_FOLDERS = _words(
    "/bin /boot /dev /etc /home /lib /lib64 /media /mnt /opt /proc /root /run /sbin /srv /sys "
    "/tmp /usr /var /usr/bin /usr/include /usr/lib /usr/lib64 /usr/libexec /usr/local "
    "/usr/local/bin /usr/local/lib /usr/local/sbin /usr/local/share /usr/sbin /usr/share "
    "/usr/src /var/backups /var/cache /var/lib /var/local /var/log /var/mail /var/opt "
    "/var/spool /var/tmp /var/www /etc/apt /etc/default /etc/init.d /etc/pam.d /etc/redis "
    "/etc/security /etc/ssh /etc/ssl /etc/sudoers.d /etc/systemd /etc/cron.d /etc/logrotate.d"
)
VOLATILE_FOLDERS = ("/dev", "/proc", "/run", "/sys", "/tmp", "/var/tmp")
SAFE_PATH = re.compile(r"^(/[A-Za-z0-9._-]+)+$")
LOOPBACK = ("localhost", "localhost.localdomain", "::1")


def app_name_errors(host: str, hv: Mapping[str, Any]) -> list[str]:
    """celery_app_name (and the user and group it defaults) become a system user, folders and
    systemd unit names; the base and config folders become the app's own."""
    errors: list[str] = []
    name = str(hv.get("celery_app_name", "refapp"))
    for var, value in (
        ("celery_app_name", name),
        ("celery_app_user", str(hv.get("celery_app_user", name))),
        ("celery_app_group", str(hv.get("celery_app_group", name))),
    ):
        if var != "celery_app_name" and value == name:
            continue  # the default: reported once, for celery_app_name
        if not GROUP_NAME.match(value):
            errors.append(
                f"{var} on {host} is {value!r}: it names "
                + (
                    "the app's system user, /opt/<name>, /etc/<name> and its systemd units "
                    "(<name>-worker@.service)"
                    if var == "celery_app_name"
                    else f"a system {var.rsplit('_', 1)[1]}"
                )
                + ", so it must be lowercase letters, digits, '-' or '_', starting with a "
                "letter, at most 32 characters (e.g. 'shop')."
            )
        elif value in RESERVED_ACCOUNTS:
            errors.append(
                f"{var} on {host} is {value!r}, an account the system (or the broker) already "
                "has: the app runs as its own unprivileged user. Choose another "
                f"{'name' if var == 'celery_app_name' else var.rsplit('_', 1)[1]} (e.g. 'shop')."
            )
        elif var == "celery_app_name" and value in SYSTEM_UNIT_PREFIXES:
            errors.append(
                f"celery_app_name on {host} is {value!r}: the app's hardening drop-in "
                f"({value}-.service.d) applies to every unit whose name starts with '{value}-', "
                "and units of the system do. Choose a name of the app's own (e.g. 'shop')."
            )
    dirs = {
        "celery_app_base_dir": str(hv.get("celery_app_base_dir", f"/opt/{name}")),
        "celery_app_config_dir": str(hv.get("celery_app_config_dir", f"/etc/{name}")),
    }
    name_ok = not errors or not errors[0].startswith("celery_app_name ")
    for var, path in dirs.items():
        if var not in hv and not name_ok:
            continue  # derived from the name, which is already refused
        example = "/opt/<app>" if var == "celery_app_base_dir" else "/etc/<app>"
        if not SAFE_PATH.match(path) or posixpath.normpath(path) != path or "/../" in path + "/":
            errors.append(
                f"{var} on {host} is {path!r}: it must be an absolute path of letters, digits, "
                f"'.', '_' and '-' (no spaces, no '..', no trailing '/'), e.g. {example}."
            )
        elif path in SYSTEM_FOLDERS:
            errors.append(
                f"{var} on {host} is {path}, a folder the system owns: the toolkit makes it the "
                f"app's own (owner, mode{', old releases deleted' if 'base' in var else ''}). "
                f"Use a folder of the app's own, e.g. {example}."
            )
        elif path.startswith(tuple(f + "/" for f in VOLATILE_FOLDERS)):
            errors.append(
                f"{var} on {host} is {path}, on a file system that is emptied at boot or "
                f"belongs to the kernel: use a persistent folder, e.g. {example}."
            )
    base, config = dirs.values()
    if base == config or base.startswith(config + "/") or config.startswith(base + "/"):
        errors.append(
            f"celery_app_base_dir ({base}) and celery_app_config_dir ({config}) on {host} must be "
            "two separate folders, neither inside the other: releases are replaced and deleted "
            "in the first, the secrets live in the second."
        )
    return errors


def _binds(hv: Mapping[str, Any]) -> list[str]:
    return [str(a).lstrip("-") for a in hv.get("redis_bind_addresses", ["127.0.0.1", "-::1"])]


def _is_loopback(address: str) -> bool:
    return address in LOOPBACK or address.startswith("127.")


# Characters that end or split a broker URL's parts when a password holds them as they are
# (kombu splits the URL on ';' into failover brokers); '%' starts an escape that kombu decodes.
URL_RESERVED = "/?#@; "
URL_ENCODE = "{{ vault_redis_password | urlencode | replace('/', '%2F') }}"


def _passwords(brokers: Iterable[str], hostvars: Mapping[str, Mapping[str, Any]]) -> set[str]:
    """Every password the inventory gives the brokers' Redis users (default and ACL users)."""
    found = set()
    for broker in brokers:
        hv = hostvars[broker]
        users = hv.get("redis_acl_users")
        found |= {str(u.get("password")) for u in users or [] if isinstance(u, Mapping)}
        found.add(str(hv.get("redis_password") or ""))
    return found - {"", "None"}


def _unencoded_password(url: str, passwords: set[str]) -> str:
    """Why the broker URL cannot carry its password as written ("" when it can): a control
    character anywhere, or a password not URL-encoded. The password as written is what lies
    between the first ':' after '//' and the last '@' (kombu and urlsplit split there too)."""
    if kind := _control(url):
        return (
            f" holds {kind}: no URL and no environment file carries one. Remove it (a password "
            f"goes into the URL percent-encoded: {URL_ENCODE})."
        )
    userinfo, at, _ = url.partition("://")[2].rpartition("@")
    written = userinfo.partition(":")[2] if at else ""
    if (
        any(char in written for char in URL_RESERVED)
        or re.search(r"%(?![0-9A-Fa-f]{2})", written)
        or (written in passwords and unquote(written) != written)
    ):
        return (
            " carries its password without URL-encoding: written as it is, a password ends "
            "the URL's parts at '/', '?', '#', '@', ';' or a space, and its '%' starts an "
            f"escape. Write redis://:{URL_ENCODE}@HOST:PORT/DB (or USER:... for an ACL user; "
            "Jinja's urlencode leaves '/' as it is)."
        )
    return ""


def broker_url_errors(
    workers: Iterable[str], brokers: Iterable[str], hostvars: Mapping[str, Mapping[str, Any]]
) -> list[str]:
    """celery_app_broker_url must reach a broker host of the inventory where its Redis listens
    (address, port, database) and authenticate as a user that Redis will have: `default` with
    redis_password, or one of redis_acl_users. Never prints a secret."""
    refused: list[tuple[str, str, str]] = []
    brokers = list(brokers)
    form = "redis://:PASSWORD@HOST:PORT/DB (or redis://USER:PASSWORD@HOST:PORT/DB)"
    listening = "; ".join(f"{b}: {', '.join(_binds(hostvars[b]))}" for b in brokers)
    passwords = _passwords(brokers, hostvars)

    def refuse(worker: str, problem: str) -> None:
        refused.append(("celery_app_broker_url", worker, problem))

    for worker in workers:
        url = hostvars[worker].get("celery_app_broker_url")
        if not url:
            continue  # secret_errors names it
        if problem := _unencoded_password(str(url), passwords):
            refuse(worker, problem)
            continue
        try:
            parts = urlsplit(str(url))
            port = parts.port or 6379
        except ValueError:
            refuse(worker, f" is not a URL the broker client can read: write it as {form}.")
            continue
        if parts.scheme not in ("redis", "rediss"):  # rediss: TLS, checked by celery_tls.py
            scheme = parts.scheme or "(none)"
            refuse(
                worker,
                f" uses the scheme {scheme!r}: the toolkit's broker is the Redis it "
                f"deploys on the broker group, reached as {form}.",
            )
            continue
        if not brokers:
            continue  # a broker the inventory does not manage
        address = parts.hostname or "localhost"
        if _is_loopback(address):
            if worker not in brokers:
                refuse(
                    worker,
                    f" points at {address}, but {worker} runs no Redis (it is not in the broker "
                    f"group): use an address a broker host listens on ({listening}).",
                )
                continue
            target = worker
        else:
            found = [
                b
                for b in brokers
                if address in _binds(hostvars[b])
                or (
                    address in (b, str(hostvars[b].get("ansible_host", b)))
                    and any(a in ("0.0.0.0", "*", "::") for a in _binds(hostvars[b]))
                )
            ]
            if not found:
                refuse(
                    worker,
                    f" points at {address}, where no broker host listens (redis_bind_addresses: "
                    f"{listening}): put one of those addresses in the URL, or add {address} to "
                    "the broker's redis_bind_addresses.",
                )
                continue
            target = found[0]
        hv = hostvars[target]
        redis_port = int(hv.get("redis_port", 6379))
        if port != redis_port:
            refuse(
                worker,
                f" uses port {port}, but Redis on {target} listens on redis_port "
                f"{redis_port}: use {redis_port} in the URL.",
            )
        databases = int(hv.get("redis_databases", 16))
        db = parts.path.strip("/") or "0"
        if not db.isdigit() or int(db) >= databases:
            refuse(
                worker,
                f" names the database {db!r}, but Redis on {target} has databases 0 to "
                f"{databases - 1} (redis_databases): end the URL with /0 (or another of those).",
            )
        if parts.username and parts.password is None:
            refuse(
                worker,
                " has a secret before '@' but no ':' in front of it, so Redis would read it as a "
                "user name (and print it in errors): write redis://:SECRET@HOST:PORT/DB.",
            )
            continue
        user = unquote(parts.username or "") or "default"
        password = unquote(parts.password or "")
        if user == "default":
            if not _truthy(hv.get("redis_default_user_enabled", False)):
                refuse(
                    worker,
                    f" logs in as Redis's default user, which is off on {target} "
                    "(redis_default_user_enabled: false; redis_password is the admin user's): "
                    "log in as the app's own user of redis_acl_users, "
                    "redis://USER:PASSWORD@HOST:PORT/DB (the password URL-encoded), or set "
                    "redis_default_user_enabled: true for the broker.",
                )
                continue
            expected = hv.get("redis_password")
            if expected and password != str(expected):
                refuse(
                    worker,
                    " authenticates as Redis's default user with a password that is not "
                    f"redis_password of {target}: write the URL as "
                    f"redis://:{URL_ENCODE}@HOST:PORT/DB, or as a user of redis_acl_users.",
                )
            continue
        users = {
            str(u.get("name")): u for u in hv.get("redis_acl_users") or [] if isinstance(u, Mapping)
        }
        if user not in users:
            known = ", ".join(sorted(users)) or "none"
            refuse(
                worker,
                f" authenticates as the Redis user {user!r}, which is not in "
                f"redis_acl_users of {target} (users: {known}): add it there, or use "
                "redis://:PASSWORD@... with redis_password for the default user.",
            )
        elif password != str(users[user].get("password", "")):
            refuse(
                worker,
                f" authenticates as the Redis user {user!r} with a password that is not "
                f"the one redis_acl_users gives {user!r} on {target}: use that password "
                "(URL-encoded) in the URL.",
            )
    return _once(refused)


def celery_inventory_errors(
    groups: Mapping[str, Iterable[str]],
    hostvars: Mapping[str, Mapping[str, Any]],
    default_groups: Iterable[Mapping[str, Any]],
) -> list[str]:
    """Ansible entry point: worker groups' fields and every host's secrets.

    `groups` is Ansible's groups (broker, celery_workers, flower)."""
    errors: list[str] = []
    default_groups = list(default_groups)
    workers = list(groups.get("celery_workers", []))
    if workers and "celery_deploy_batch" in hostvars[workers[0]]:
        errors += batch_errors(hostvars[workers[0]]["celery_deploy_batch"])
    for host in workers:
        errors += app_name_errors(host, hostvars[host])
        errors += process_manager_errors(host, hostvars[host])
        errors += renamed_errors(host, hostvars[host])
        errors += group_errors(host, hostvars[host].get("celery_workers_groups", default_groups))
    errors += broker_url_errors(workers, groups.get("broker", []), hostvars)
    needs: dict[str, dict[str, int]] = {}
    for host in groups.get("broker", []):
        needs.setdefault(host, {})["redis_password"] = 16
    for host in groups.get("celery_workers", []):
        needs.setdefault(host, {})["celery_app_broker_url"] = 10
    for host in groups.get("flower", []):
        needs.setdefault(host, {}).update(flower_basic_auth_user=1, flower_basic_auth_password=12)
    found: list[tuple[str, str, str]] = []
    for host, names in needs.items():
        hv = hostvars[host]
        sandbox = _truthy(hv.get("celery_toolkit_sandbox", False))
        found += secret_errors(host, {n: (hv.get(n), m) for n, m in names.items()}, sandbox)
    for host in groups.get("broker", []):
        found += credential_errors(host, hostvars[host], ["redis_password", "redis_acl_users"])
    for host in groups.get("flower", []):
        names = ["flower_basic_auth_user", "flower_basic_auth_password"]
        found += credential_errors(host, hostvars[host], names)
    for host in workers:
        found += environment_errors(host, hostvars[host].get("celery_app_environment", {}))
        if kind := _control(hostvars[host].get("celery_app_result_backend") or ""):
            found.append(
                (
                    "celery_app_result_backend",
                    host,
                    f" holds {kind}: no URL and no environment file carries one. Remove it (a "
                    f"password goes into the URL percent-encoded: {URL_ENCODE}).",
                )
            )
    return errors + _once(found)


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


def celery_app_report_errors(
    report: Mapping[str, Any],
    worker_hosts: Iterable[str],
    hostvars: Mapping[str, Mapping[str, Any]],
    default_groups: Iterable[Mapping[str, Any]],
    queues: Iterable[str] | None = None,
    longest_countdown: int = 0,
    routes: Mapping[str, str] | None = None,
) -> list[str]:
    """Ansible entry point of app_report_errors: the layout is read from hostvars."""
    layout = {
        h: list(hostvars[h].get("celery_workers_groups", default_groups)) for h in worker_hosts
    }
    return app_report_errors(report, layout, queues, longest_countdown, routes)


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
        restarts = process.get("restarts", "?")
        lines.append(
            f"{failure}: {process.get('manager', '?')} says {process.get('state', '?')} "
            f"({process.get('detail', '?')})"
            + (f", restarted {restarts} times" if process.get("manager") == "systemd" else "")
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


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in {"1", "true", "yes", "on"}
    return bool(value)


def celery_group_errors(groups: Iterable[Mapping[str, Any]], host: str) -> list[str]:
    """Ansible entry point of group_errors (roles/celery_workers preflight)."""
    return group_errors(host, groups)


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {
            "celery_layout_errors": celery_layout_errors,
            "celery_route_queue": celery_route_queue,
            "celery_single_layout": celery_single_layout,
            "celery_app_report_errors": celery_app_report_errors,
            "celery_inventory_errors": celery_inventory_errors,
            "celery_private_addresses": celery_private_addresses,
            "celery_health_report": celery_health_report,
            "celery_group_errors": celery_group_errors,
            "celery_credential_errors": celery_credential_errors,
            "celery_environment_errors": celery_environment_errors,
            "celery_status_lines": celery_status_lines,
            "celery_status_ok": celery_status_ok,
        }
