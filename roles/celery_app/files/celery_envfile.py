"""Read an environment file as systemd's EnvironmentFile= does: the one reader of the app's
environment files besides systemd (`<app>-run` and the supervisor wrapper import it; no shell
ever reads them, so a value is data whatever it holds).

A port of parse_env_file_internal() in systemd's src/basic/env-file.c (v254 and later; earlier
versions differ only after a comment line that ends in a backslash), followed by what the service
manager does with the result (exec_context_load_environment: invalid names are dropped, the
last of a repeated name wins):

- blank lines and lines whose first non-blank character is `#` or `;` are skipped;
- KEY=VALUE, blanks around the key and before the value ignored; a line without `=` is dropped;
- unquoted: a backslash takes the next character as it is (before a newline: the line goes on),
  trailing blanks are dropped;
- '...': everything up to the next `'` as it is, newlines included;
- "...": a backslash before one of  \\ " ` $  gives that character, before a newline joins the
  lines, before anything else stays a backslash;
- after a closing quote the value goes on (`"a"'b'c` is `abc`);
- a name that is not an environment variable name (e.g. `export NAME`) is ignored (systemd logs
  it); a key or value that is not UTF-8 makes the whole file unreadable (systemd fails the start).

The toolkit writes every value double-quoted (plugins/filter/celery_quote.py,
systemd_env_quote), which this reads back byte for byte.

Usage: python3 celery_envfile.py FILE...  prints the variables FILE... set, as JSON.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable

WHITESPACE = " \t\n\r"
NEWLINE = "\n\r"
COMMENTS = "#;"
SHELL_NEED_ESCAPE = '"\\`$'
Warn = Callable[[str], None]
NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class EnvFileError(ValueError):
    """The file cannot be read as systemd would (it would fail the unit's start)."""


def append_noting_blanks(chars: list[str], blanks_at: int, c: str) -> int:
    """Append `c` to `chars`; return where the run of blanks that ends `chars` begins (-1:
    none), as systemd's `last_key_whitespace` / `last_value_whitespace` track it."""
    chars.append(c)
    if c not in WHITESPACE:
        return -1
    return blanks_at if blanks_at >= 0 else len(chars) - 1


def parse_pairs(text: str) -> list[tuple[str, str]]:
    """Every KEY=VALUE assignment of `text`, in order, names not yet checked."""
    pairs: list[tuple[str, str]] = []
    text = text.split("\0", 1)[0]  # systemd reads the file as a C string
    key: list[str] = []
    value: list[str] = []
    key_ws = value_ws = -1  # where trailing blanks of the key / unquoted value begin
    state = "PRE_KEY"

    def push(strip_value: bool) -> None:
        k = "".join(key[:key_ws] if key_ws >= 0 else key)
        v = "".join(value[:value_ws] if strip_value and value_ws >= 0 else value)
        pairs.append((k, v))

    def end_line(strip_value: bool) -> str:
        """The assignment ends with the line: keep it, start the next key."""
        nonlocal key, value
        push(strip_value)
        key, value = [], []
        return "PRE_KEY"

    for c in text:
        if state == "PRE_KEY":
            if c in COMMENTS:
                state = "COMMENT"
            elif c not in WHITESPACE:
                state, key, key_ws = "KEY", [c], -1
        elif state == "KEY":
            if c in NEWLINE:
                state, key = "PRE_KEY", []
            elif c == "=":
                state, value, value_ws = "PRE_VALUE", [], -1
            else:
                key_ws = append_noting_blanks(key, key_ws, c)
        elif state == "PRE_VALUE":
            if c in NEWLINE:
                state = end_line(strip_value=False)
            elif c == "'":
                state = "SINGLE_QUOTE_VALUE"
            elif c == '"':
                state = "DOUBLE_QUOTE_VALUE"
            elif c == "\\":
                state = "VALUE_ESCAPE"
            elif c not in WHITESPACE:
                state = "VALUE"
                value.append(c)
        elif state == "VALUE":
            if c in NEWLINE:
                state = end_line(strip_value=True)
            elif c == "\\":
                state, value_ws = "VALUE_ESCAPE", -1
            else:
                value_ws = append_noting_blanks(value, value_ws, c)
        elif state == "VALUE_ESCAPE":
            state = "VALUE"
            if c not in NEWLINE:
                value.append(c)
        elif state == "SINGLE_QUOTE_VALUE":
            if c == "'":
                state = "PRE_VALUE"
            else:
                value.append(c)
        elif state == "DOUBLE_QUOTE_VALUE":
            if c == '"':
                state = "PRE_VALUE"
            elif c == "\\":
                state = "DOUBLE_QUOTE_VALUE_ESCAPE"
            else:
                value.append(c)
        elif state == "DOUBLE_QUOTE_VALUE_ESCAPE":
            state = "DOUBLE_QUOTE_VALUE"
            if c in SHELL_NEED_ESCAPE:
                value.append(c)
            elif c != "\n":
                value += ["\\", c]
        elif state == "COMMENT":
            if c == "\\":
                state = "COMMENT_ESCAPE"
            elif c in NEWLINE:
                state = "PRE_KEY"
        elif state == "COMMENT_ESCAPE":
            state = "PRE_KEY" if c in NEWLINE else "COMMENT"
    if state not in ("PRE_KEY", "KEY", "COMMENT", "COMMENT_ESCAPE"):
        push(strip_value=state == "VALUE")
    return pairs


def parse(text: str, source: str = "<text>", warn: Warn | None = None) -> dict[str, str]:
    """The variables `text` sets, as a service started with it as EnvironmentFile= gets them."""
    env: dict[str, str] = {}
    for key, value in parse_pairs(text):
        if any("\udc80" <= ch <= "\udcff" for ch in key + value):
            raise EnvFileError(f"{source}: {key!r} or its value is not UTF-8")
        if not NAME.fullmatch(key):
            if warn:
                warn(f"{source}: ignoring {key!r}, not an environment variable name")
            continue
        env.pop(key, None)
        env[key] = value
    return env


def read_env_file(path: str, warn: Warn | None = None) -> dict[str, str]:
    """The variables the file at `path` sets (see parse)."""
    with open(path, "rb") as f:
        text = f.read().decode("utf-8", "surrogateescape")
    return parse(text, path, warn)


def main(argv: list[str]) -> int:
    env: dict[str, str] = {}
    for path in argv:
        env.update(read_env_file(path, warn=lambda m: print(m, file=sys.stderr)))
    print(json.dumps(env))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
