"""How the toolkit writes a value from the inventory into a file another program parses, so that
the program reads exactly the inventory's bytes:

- systemd_env_quote: a value of an environment file (the app's, a worker group's, Flower's),
  read by systemd's EnvironmentFile= and by roles/celery_app/files/celery_envfile.py (which
  `<app>-run` and the supervisor wrapper use; no shell reads these files);
- redis_config_quote: one argument of a Redis configuration line (sdssplitargs in Redis's
  sds.c), e.g. `requirepass` or an ACL user's `>password`;
- redis_acl_user: what follows an ACL user's name in auth.conf's `user` line and in ACL SETUSER
  (the same parser reads both): on or off, its passwords quoted, its rules.

Control characters (a newline, a tab, NUL...) cannot be carried by both (Redis ends a directive
at a newline); the inventory's validation refuses them, naming the variable; these filters
refuse them too, without printing the value (it is usually a secret).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping
from typing import Any

from ansible.errors import AnsibleFilterError

# the characters a backslash must protect inside a double-quoted systemd env-file value
# (SHELL_NEED_ESCAPE in systemd's src/basic/escape.h): there the backslash is removed
_SYSTEMD_ESCAPED = {"\\": "\\\\", '"': '\\"', "`": "\\`", "$": "\\$"}


def _text(value: Any, what: str) -> str:
    """The value as text (a number or a boolean as Jinja prints it), with no control character."""
    text = value if isinstance(value, str) else str(value)
    for position, char in enumerate(text):
        if unicodedata.category(char) in ("Cc", "Cs"):
            raise AnsibleFilterError(
                f"{what}: the value holds the control character U+{ord(char):04X} at position "
                f"{position + 1}, which the file cannot carry; remove it from the inventory "
                "(the validation play names the variable)"
            )
    return text


def systemd_env_quote(value: Any) -> str:
    """A double-quoted env-file value: `\\`, `"`, backtick and `$` backslash-escaped, everything
    else (spaces, quotes, `#`, `(`, Unicode) as it is. systemd's EnvironmentFile= and
    celery_envfile.py read back exactly `value`."""
    text = _text(value, "systemd_env_quote")
    return '"' + "".join(_SYSTEMD_ESCAPED.get(char, char) for char in text) + '"'


def redis_config_quote(value: Any) -> str:
    """One double-quoted argument of a Redis configuration line: `\\` and `"` backslash-escaped,
    printable ASCII as it is, every other byte (of the UTF-8 encoding) as \\xHH."""
    text = _text(value, "redis_config_quote")
    out = []
    for byte in text.encode("utf-8"):
        char = chr(byte)
        if char in '\\"':
            out.append("\\" + char)
        elif 0x20 <= byte <= 0x7E:
            out.append(char)
        else:
            out.append(f"\\x{byte:02x}")
    return '"' + "".join(out) + '"'


def redis_acl_user(user: Mapping[str, Any], profiles: Mapping[str, str]) -> str:
    """`reset`, then `on` with the user's passwords (">password", and ">previous_password" while a
    rotation rolls the clients over: Redis accepts both) or `off` without any when `enabled` is
    false, then its rules: `rules`, else its profile's (celery by default) and `extra_rules`.
    `reset` first: what the inventory no longer says (an old password, a rule) is dropped."""
    if "rules" in user and user["rules"] is not None:
        rules = str(user["rules"])
    else:
        rules = f"{profiles[user.get('profile') or 'celery']} {user.get('extra_rules') or ''}"
    if not user.get("enabled", True):
        return f"reset off {rules.strip()}"
    passwords = [user.get("password"), user.get("previous_password")]
    quoted = [redis_config_quote(">" + str(p)) for p in passwords if p]
    return " ".join(["reset", "on", *quoted, rules.strip()])


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {
            "systemd_env_quote": systemd_env_quote,
            "redis_config_quote": redis_config_quote,
            "redis_acl_user": redis_acl_user,
        }
