"""inventories/example lists every variable a user sets (the README says so): each variable of
a role's defaults is set there or named in one of its comments."""

import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "inventories/example"
FILES = sorted(EXAMPLE.rglob("*.yml"))


def role_variables() -> list[tuple[str, str]]:
    return [
        (defaults.parts[-3], name)
        for defaults in sorted((ROOT / "roles").glob("*/defaults/main.yml"))
        for name in yaml.safe_load(defaults.read_text()) or {}
    ]


def set_variables() -> set[str]:
    """The keys the example's group_vars and host_vars set, and the hosts file's vars."""
    names = set()
    for path in FILES:
        data = yaml.safe_load(path.read_text()) or {}
        if path.name == "hosts.yml":
            stack = [data]
            while stack:
                group = stack.pop()
                for spec in (group or {}).values():
                    names.update((spec or {}).get("vars") or {})
                    stack.append((spec or {}).get("children"))
        else:
            names.update(data)
    return names


def comments() -> str:
    """The text of every comment: from a `#` at the start of a line or after a space."""
    return "\n".join(
        match.group(1)
        for path in FILES
        for line in path.read_text().splitlines()
        if (match := re.search(r"(?:^|\s)#(.*)$", line))
    )


def test_the_example_has_files_and_the_roles_have_variables():
    assert FILES and len(role_variables()) > 50


@pytest.mark.parametrize("role,name", role_variables(), ids=lambda v: v)
def test_every_role_variable_is_set_or_mentioned(role, name):
    assert name in set_variables() or re.search(rf"\b{name}\b", comments()), (
        f"{name} (roles/{role}/defaults/main.yml) is neither set nor mentioned in a comment of "
        "inventories/example/: add it, set or in a comment with its default"
    )


def test_the_check_can_fail():
    """A variable named nowhere in the example is found missing."""
    assert "celery_no_such_variable" not in set_variables()
    assert not re.search(r"\bcelery_no_such_variable\b", comments())
