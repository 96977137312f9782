"""What the toolkit's rule filters share (plugins/filter/celery_*.py): the one rule for a name
that becomes a user, a folder or a unit, how a refusal names its hosts, control characters,
loopback addresses.

A filter file imports this as
`ansible_collections.celery_toolkit.stack.plugins.plugin_utils.celery_common`, the name Ansible's
collection loader gives it (filter files cannot import each other by their bare names); pytest
finds the same name through collections/ (pyproject.toml's pythonpath).

The rules read each host's settings as the roles see them: the inventory's value, else the
role's default. playbooks/validate.yml hands them over (each host's `__validate_settings`), so no
rule writes a role's default again.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

# THE name rule: celery_app_name, celery_app_user, celery_app_group and every worker group's
# name become a system user, folders, systemd units (<app>-worker@<group>.service) and node names.
NAME = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
NAME_RULE = "lowercase letters, digits, '-' or '_', starting with a letter, at most 32 characters"

LOOPBACK = ("localhost", "localhost.localdomain", "::1")

# How a broker URL carries its password (Jinja's urlencode leaves '/' as it is).
URL_ENCODE = "{{ vault_redis_password | urlencode | replace('/', '%2F') }}"

# Characters no secret and no environment value may hold: the C0 controls (NUL, tab, newline,
# carriage return, ESC...), DEL, the C1 controls and the Unicode line and paragraph separators.
# A newline ends a line of Redis's configuration and of an environment file (systemd's
# EnvironmentFile= and the toolkit's reader), a NUL ends a C string; Python's splitlines() also
# breaks at U+0085, U+2028 and U+2029. Every printable character (space, quotes, '#', '$',
# '\\') is written byte for byte.
CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
CONTROL_NAMES = {"\x00": "a NUL", "\t": "a tab", "\n": "a newline", "\r": "a carriage return"}

# A refusal: (variable, host, problem); `once` words it for every host it is found on.
Refusal = tuple[str, str, str]


def truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in {"1", "true", "yes", "on"}
    return bool(value)


def whole(value: Any) -> int | None:
    """`value` as a whole number, None when it is none: the argument spec names such a value,
    a rule that needs the number skips it (a crash inside the validation is a defect)."""
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def at_least(host: str, hv: Mapping[str, Any], var: str, least: int, why: str) -> list[Refusal]:
    """The host's `var` is a whole number of at least `least`, else one refusal: " is N: why"
    (a value that is no number, or none at all, is the argument spec's to name)."""
    number = whole(hv.get(var))
    return [] if number is None or number >= least else [(var, host, f" is {number}: {why}")]


def is_loopback(address: str) -> bool:
    return address in LOOPBACK or address.startswith("127.")


def control(value: Any) -> str:
    """What the first control character of `value` is ("" when none), never the value itself."""
    found = CONTROL.search(str(value))
    if not found:
        return ""
    char = found.group()
    return CONTROL_NAMES.get(char, f"a control character (U+{ord(char):04X})")


def hosts_phrase(hosts: list[str]) -> str:
    """vm1 / vm1 and vm2 / vm1, vm2 and vm3 / vm1, vm2, vm3 and 7 more hosts."""
    if len(hosts) > 4:
        return f"{', '.join(hosts[:3])} and {len(hosts) - 3} more hosts"
    return " and ".join(filter(None, [", ".join(hosts[:-1]), hosts[-1]]))


def once(found: Iterable[Refusal]) -> list[str]:
    """(variable, host, problem) -> one message per variable and problem, naming every host it
    is found on: a value from group_vars is the same on many hosts and is said once."""
    hosts: dict[tuple[str, str], list[str]] = {}
    for var, host, problem in found:
        where = hosts.setdefault((var, problem), [])
        if host not in where:
            where.append(host)
    return [f"{var} on {hosts_phrase(where)}{problem}" for (var, problem), where in hosts.items()]


def binds(hv: Mapping[str, Any]) -> list[str]:
    """The addresses Redis listens on (redis_bind_addresses, '-' marks an optional one)."""
    return [str(a).lstrip("-") for a in hv["redis_bind_addresses"]]
