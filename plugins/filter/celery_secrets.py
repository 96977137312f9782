"""Secrets and credentials: every secret a host needs is set, long enough and not a sample
value; passwords, user names and the app's environment hold only what the host's files can carry
(Redis's configuration, environment files, FLOWER_BASIC_AUTH). Never prints a secret.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from ansible_collections.celery_toolkit.stack.plugins.plugin_utils.celery_common import (
    URL_ENCODE,
    Refusal,
    control,
    once,
    truthy,
)

# The shortest value each secret may have.
MINIMUM_LENGTH = {
    "redis_password": 16,
    "celery_app_broker_url": 10,
    "flower_basic_auth_user": 1,
    "flower_basic_auth_password": 12,
    # issue 22: a replicated broker's (plugins/filter/celery_sentinel.py asks for them)
    "redis_sentinel_password": 16,
    "redis_sentinel_node_password": 16,
    "redis_replication_password": 16,
}
# Values that mark a sample secret: inventories/example's placeholders and the sandbox's.
PLACEHOLDERS = ("change-me", "changeme", "not-secret", "sandbox-")
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
    # issue 22: a replicated broker's options (celery_launch.configure reads them)
    "CELERY_TOOLKIT_BROKER_TRANSPORT_OPTIONS": "from the broker group's sentinels",
    "CELERY_TOOLKIT_RESULT_BACKEND_TRANSPORT_OPTIONS": "from the broker group's sentinels",
    "CELERY_TOOLKIT_SETTINGS": "from the broker group's sentinels",
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
# A Redis ACL user name is one word of Redis's configuration and the user part of the broker URL.
ACL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
PRINTABLE_FINE = "any printable character is fine, space, quotes, '#' and '$' included"
REDIS_CONFIG_CUT = "Redis's configuration ends a directive at a newline and the whole file at a NUL"


def secret_errors(host: str, secrets: Mapping[str, Any], sandbox: bool) -> list[Refusal]:
    """The secrets of MINIMUM_LENGTH among `secrets` (name -> value): set, long enough, never
    left at a sample value outside the sandbox."""
    found: list[Refusal] = []
    for name, value in secrets.items():
        minimum = MINIMUM_LENGTH.get(name)
        if minimum is None:
            continue
        text = "" if value is None else str(value)
        if len(text) < minimum:
            found.append(
                (
                    name,
                    host,
                    f" is {'empty' if not text else 'too short'}: set it (at least {minimum} "
                    "characters) in the inventory, encrypted with ansible-vault.",
                )
            )
        elif not sandbox and any(marker in text.lower() for marker in PLACEHOLDERS):
            found.append(
                (
                    name,
                    host,
                    " still holds a sample value: replace it with a real secret (and "
                    "ansible-vault encrypt the file it lives in).",
                )
            )
    return found


def _environment_name_problem(name: str) -> str:
    if not ENV_NAME.match(name):
        fixed = re.sub(r"^(?=[0-9])|[^A-Za-z0-9_]", "_", name)
        return (
            f": {name!r} is not an environment variable name (letters, digits and '_', not "
            "starting with a digit): no environment file can carry it and the app could not "
            f"read it. Rename it, e.g. {fixed!r}."
        )
    if name in TOOLKIT_ENV or name.startswith(TOOLKIT_ENV_PREFIX):
        why = TOOLKIT_ENV.get(name, "<app>-run's own")
        fix = f" and set {why[5:]}" if why.startswith("from ") else ""
        return (
            f" sets {name}, which the toolkit sets itself ({why}): remove it from "
            f"celery_app_environment{fix}."
        )
    return ""


def _environment_value_problem(name: str, value: Any) -> str:
    if value is None or isinstance(value, (Mapping, list, tuple, set)):
        kind = "empty (null)" if value is None else f"a {type(value).__name__}"
        return (
            f": the value of {name} is {kind}: an environment variable holds one string. Write a "
            "string (quoted in YAML, '' for empty), a number or true/false."
        )
    if kind := control(value):
        return (
            f": the value of {name} holds {kind}, which an environment file (systemd's "
            "EnvironmentFile=, the toolkit's reader) cannot carry: remove it. Give a multi-line "
            "value (a key, a certificate) base64-encoded, or as a file the app reads."
        )
    return ""


def environment_errors(host: str, environment: Any) -> list[Refusal]:
    """celery_app_environment: names that are environment variable names and not the toolkit's
    own; values that are one string (or a number, true/false) without a control character.
    Never prints a value (it may be a secret)."""
    if not isinstance(environment, Mapping):
        return []  # the argument spec says it is a dict
    found: list[Refusal] = []
    for name, value in environment.items():
        problem = _environment_name_problem(str(name)) or _environment_value_problem(
            str(name), value
        )
        if problem:
            found.append(("celery_app_environment", host, problem))
    return found


def _previous_password_errors(
    host: str, var: str, what: str, password: Any, previous: Any, current: str
) -> list[Refusal]:
    """A rotation's previous password (README "Rotating the broker password"): only next to a
    new password that differs from it, and carried by Redis's configuration."""
    if previous is None or previous == "":
        return []
    if password is None or password == "":
        problem = (
            f": {what} is set without {current}: a previous password is only accepted next to "
            f"the new one. Set {current}, or remove the previous one."
        )
    elif str(previous) == str(password):
        problem = (
            f": {what} is {current} itself: nothing is rotated. Remove it once the fleet has the "
            'new password (README "Rotating the broker password").'
        )
    elif kind := control(previous):
        problem = f": {what} holds {kind}: {REDIS_CONFIG_CUT}; no control character is accepted."
    else:
        return []
    return [(var, host, problem)]


def _acl_user_errors(host: str, users: Any, admin: Any) -> list[Refusal]:
    found: list[Refusal] = []
    for user in users if isinstance(users, list) else []:
        if not isinstance(user, Mapping):
            continue  # the argument spec says each is a dict
        name = str(user.get("name", ""))
        if name in ("default", admin):
            found.append(
                (
                    "redis_acl_users",
                    host,
                    f" names the user {name!r}: `default` is set by redis_default_user_enabled "
                    f"and {admin} (redis_admin_user) by redis_password. Give the app and Flower "
                    "users of their own.",
                )
            )
        elif not ACL_NAME.match(name):
            found.append(
                (
                    "redis_acl_users",
                    host,
                    f": the user name {name!r} is not a plain word: use letters, digits, '.', "
                    "'_' and '-' (it is a word of Redis's configuration and the user part of "
                    "celery_app_broker_url).",
                )
            )
        found += _previous_password_errors(
            host,
            "redis_acl_users",
            f"the previous_password of user {name!r}",
            user.get("password"),
            user.get("previous_password"),
            "its password",
        )
        if kind := control(user.get("password") or ""):
            found.append(
                (
                    "redis_acl_users",
                    host,
                    f": the password of user {name!r} holds {kind}: {REDIS_CONFIG_CUT}; no "
                    f"control character is accepted. Choose a password without one "
                    f"({PRINTABLE_FINE}).",
                )
            )
    return found


def _flower_credential_errors(host: str, var: str, text: str) -> list[Refusal]:
    """FLOWER_BASIC_AUTH is a comma-separated list of user:password pairs (RFC 7617 for each)."""
    what = "user" if var.endswith("user") else "password"
    problems = []
    if kind := control(text):
        problems.append(
            f" holds {kind}, which Flower's environment file cannot carry: choose a {what} "
            "without control characters."
        )
    if "," in text:
        problems.append(
            " holds ',': Flower reads FLOWER_BASIC_AUTH as a comma-separated list of "
            f"user:password pairs, so the {what} would be split into two credentials, one of "
            f"them a fragment. Choose a {what} without ','."
        )
    if what == "user" and ":" in text:
        problems.append(
            " holds ':', which HTTP Basic auth (RFC 7617) does not allow in a user: clients "
            "split user:password at the first ':'. Choose a user without ':'."
        )
    if what == "user" and " " in text:
        problems.append(" holds a space: choose a user name without spaces.")
    return [(var, host, p) for p in problems]


def credential_errors(host: str, hv: Mapping[str, Any], names: Iterable[str]) -> list[Refusal]:
    """The characters of the credentials `names` (of redis_password, redis_acl_users,
    flower_basic_auth_user, flower_basic_auth_password) that the host's files cannot carry. The
    toolkit writes Redis's passwords quoted, so only control characters are refused there."""
    found: list[Refusal] = []
    names = list(names)
    if "redis_password" in names and (kind := control(hv.get("redis_password") or "")):
        found.append(
            (
                "redis_password",
                host,
                f" holds {kind}: {REDIS_CONFIG_CUT}, so the password would be cut short or add a "
                "configuration line of its own; no control character is accepted. Choose a "
                f"password without one ({PRINTABLE_FINE}).",
            )
        )
    if "redis_password" in names:
        found += _previous_password_errors(
            host,
            "redis_password_previous",
            "it",
            hv.get("redis_password"),
            hv.get("redis_password_previous"),
            "redis_password",
        )
    if "redis_acl_users" in names:
        found += _acl_user_errors(host, hv.get("redis_acl_users"), hv.get("redis_admin_user"))
    admin = str(hv.get("redis_admin_user"))
    if "redis_admin_user" in names and (admin == "default" or not ACL_NAME.match(admin)):
        found.append(
            (
                "redis_admin_user",
                host,
                f" is {admin!r}: the administrator is a Redis user of its own, a plain word "
                "(letters, digits, '.', '_' and '-'; not `default`), e.g. admin.",
            )
        )
    for var in ("flower_basic_auth_user", "flower_basic_auth_password"):
        if var in names:
            found += _flower_credential_errors(host, var, str(hv.get(var) or ""))
    return found


def result_backend_errors(host: str, url: Any) -> list[Refusal]:
    if kind := control(url or ""):
        return [
            (
                "celery_app_result_backend",
                host,
                f" holds {kind}: no URL and no environment file carries one. Remove it (a "
                f"password goes into the URL percent-encoded: {URL_ENCODE}).",
            )
        ]
    return []


def celery_credential_errors(hv: Mapping[str, Any], host: str) -> list[str]:
    """Ansible entry point for a role's preflight (redis, flower): the secrets and credentials
    `hv` holds, set and long enough (not a sample value unless celery_toolkit_sandbox) and
    carried by the host's files."""
    names = [n for n in (*MINIMUM_LENGTH, "redis_acl_users", "redis_admin_user") if n in hv]
    sandbox = truthy(hv.get("celery_toolkit_sandbox", False))
    secrets = {n: hv[n] for n in names}
    return once(secret_errors(host, secrets, sandbox) + credential_errors(host, hv, names))


def celery_environment_errors(environment: Any, host: str = "the first worker") -> list[str]:
    """Ansible entry point of environment_errors (validate.yml imports the app on the controller
    only with an environment that passes; roles/celery_app's preflight)."""
    return once(environment_errors(host, environment))


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {f.__name__: f for f in (celery_credential_errors, celery_environment_errors)}
