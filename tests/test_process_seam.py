"""The process-manager seam (roles/celery_process) is the one place that knows systemd from
supervisord: nothing else in roles/, playbooks/ or plugins/ names either in code.

Code and docs are told apart by the file's own grammar, not by guessing at words:
- YAML: comments (a `#` at the start of a line, or after a space outside quotes) are docs, and
  so are the names of tasks, blocks and plays (`name` of a list item that is a task, a block or
  a play), meta/main.yml's galaxy_info and the `description`/`short_description` of an argument
  spec. Every other key and value is code: a module, a path, a condition, a message.
- Python: comments and docstrings are docs; every other token (names, strings) is code.
- Templates (.j2): Jinja comments `{# #}` and the lines that are comments in what they render
  (`#` or `;` first: units, environment files, supervisord's ini, scripts) are docs.
- Markdown files are docs.
"""

from __future__ import annotations

import io
import re
import sys
import tokenize
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
SEAM_ROLE = ROOT / "roles" / "celery_process"
SEAM_FILTER = ROOT / "plugins" / "filter" / "celery_process.py"
WORDS = re.compile(r"systemd|supervisor", re.IGNORECASE)

# What may name a manager outside the seam, each with why. A word here is allowed only in the
# files under its path.
ALLOWED = [
    # Redis runs under Debian's own systemd unit whatever celery_process_manager says: it is
    # the broker, not a process of the app. supervisor stays refused there.
    ("roles/redis/", re.compile(r"systemd", re.IGNORECASE)),
    # The quoting of the environment files' grammar (systemd's EnvironmentFile=, which every
    # manager's processes read through celery_envfile.py), not a choice of manager.
    ("", re.compile(r"systemd_env_quote")),
    ("plugins/filter/celery_quote.py", re.compile(r"_SYSTEMD_ESCAPED")),
    # that grammar named in messages and in <app>-run's docstring
    ("", re.compile(r"systemd's EnvironmentFile=?")),
    ("plugins/filter/celery_secrets.py", re.compile(r"\(systemd's ")),
    # <app>-run's docstring says it also starts the supervisor programs (its --supervised mode)
    ("roles/celery_app/templates/usr/local/sbin/app-run.j2", re.compile(r"supervisord's programs")),
    # Debian's own system accounts, which the app's user must not take: names, not managers
    (
        "plugins/filter/celery_names.py",
        re.compile(r"systemd-(journal|network|resolve|timesync)|\bsystemd\b|\bsupervisor\b"),
    ),
]
# The variable's owner states its default and choices (roles/celery): the one statement the
# seam reads; these key paths are allowed to hold a manager's name.
OWNER_KEYS = {
    "roles/celery/defaults/main.yml": {("celery_process_manager",)},
    "roles/celery/meta/argument_specs.yml": {
        ("argument_specs", "main", "options", "celery_process_manager", "default"),
        ("argument_specs", "main", "options", "celery_process_manager", "choices"),
    },
}
# Files others are moving at the time of the seam (issue 19); each must name a manager no more
# once its part lands, and then goes from this list (a stale entry fails, see below).
PENDING: set[str] = set()

TASK_KEYS = re.compile(r"^(block|hosts|import_playbook|[a-z0-9_]+\.[a-z0-9_]+\.[a-z0-9_]+)$")


def _yaml_comment_free(text: str) -> str:
    """The YAML text without its comments (a `#` at the start or after a blank, outside quotes)."""
    out = []
    for line in text.splitlines():
        quote = ""
        for i, char in enumerate(line):
            if quote:
                if char == quote:
                    quote = ""
            elif char in "'\"":
                quote = char
            elif char == "#" and (i == 0 or line[i - 1].isspace()):
                line = line[:i]
                break
        out.append(line)
    return "\n".join(out)


def _yaml_code(data, path: tuple = ()) -> list[tuple[tuple, str]]:
    """(key path, text) of every key and scalar of a YAML document that is code."""
    found: list[tuple[tuple, str]] = []
    if isinstance(data, dict):
        is_task = any(TASK_KEYS.match(str(key)) for key in data)
        for key, value in data.items():
            if key in ("description", "short_description", "galaxy_info"):
                continue
            if key == "name" and is_task and path and isinstance(path[-1], int):
                continue
            found.append((path + (key,), str(key)))
            found.extend(_yaml_code(value, path + (key,)))
    elif isinstance(data, list):
        for index, value in enumerate(data):
            found.extend(_yaml_code(value, path + (index,)))
    elif data is not None:
        found.append((path, str(data)))
    return found


def _python_code(text: str) -> list[tuple[tuple, str]]:
    """(line, token) of every token of a Python file but its comments and docstrings."""
    found = []
    previous = tokenize.NEWLINE
    for token in tokenize.generate_tokens(io.StringIO(text).readline):
        docstring = token.type == tokenize.STRING and previous in (
            tokenize.NEWLINE,
            tokenize.NL,
            tokenize.INDENT,
            tokenize.DEDENT,
        )
        if token.type not in (tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE) and not docstring:
            found.append(((token.start[0],), token.string))
        if token.type not in (tokenize.COMMENT, tokenize.NL):
            previous = token.type
    return found


def _template_code(text: str) -> list[tuple[tuple, str]]:
    """(line, text) of a template's lines but Jinja comments and the rendered file's comments."""
    text = re.sub(r"\{#.*?#\}", lambda m: "\n" * m.group(0).count("\n"), text, flags=re.S)
    return [
        ((number,), line)
        for number, line in enumerate(text.splitlines(), 1)
        if not line.lstrip().startswith(("#", ";"))
    ]


def code_of(path: Path) -> list[tuple[tuple, str]]:
    text = path.read_text()
    if path.suffix in (".yml", ".yaml"):
        return [
            item
            for document in yaml.safe_load_all(_yaml_comment_free(text))
            for item in _yaml_code(document)
        ]
    if path.suffix == ".py":
        return _python_code(text)
    if path.suffix == ".j2":
        return _template_code(text)
    if path.suffix == ".md":
        return []
    return [((number,), line) for number, line in enumerate(text.splitlines(), 1)]


def manager_words(root: Path) -> dict[str, list[str]]:
    """File -> the places where its code names a process manager, outside the seam."""
    seen: dict[str, list[str]] = {}
    for top in ("roles", "playbooks", "plugins"):
        for path in sorted((root / top).rglob("*")):
            rel = path.relative_to(root).as_posix()
            if (
                not path.is_file()
                or "__pycache__" in path.parts
                or path.is_relative_to(root / SEAM_ROLE.relative_to(ROOT))
                or rel == SEAM_FILTER.relative_to(ROOT).as_posix()
            ):
                continue
            for where, text in code_of(path):
                if any(where[: len(key)] == key for key in OWNER_KEYS.get(rel, set())):
                    continue
                for prefix, allowed in ALLOWED:
                    if rel.startswith(prefix):
                        text = allowed.sub("", text)
                if WORDS.search(text):
                    seen.setdefault(rel, []).append(f"{'/'.join(map(str, where))}: {text.strip()}")
    return seen


def test_nothing_outside_the_seam_names_a_process_manager():
    found = {path: places for path, places in manager_words(ROOT).items() if path not in PENDING}
    assert not found, (
        "outside roles/celery_process, code names a process manager (call the seam's entry "
        "points or filters instead):\n"
        + "\n".join(f"{path}: {place}" for path, places in found.items() for place in places)
    )


def test_every_pending_file_still_names_a_manager():
    """A file that no longer names a manager leaves PENDING (so that it cannot start again)."""
    found = manager_words(ROOT)
    stale = sorted(path for path in PENDING if path not in found)
    assert not stale, f"remove from PENDING, they no longer name a manager: {stale}"


def test_the_check_fails_on_a_caller_that_branches(tmp_path: Path):
    """The check sees a manager's name in a task, a template and a filter, not in comments,
    task names or docstrings."""
    tasks = tmp_path / "roles" / "some_role" / "tasks"
    tasks.mkdir(parents=True)
    (tasks / "main.yml").write_text(
        "---\n# systemd in a comment\n- name: Restart under supervisor\n"
        "  ansible.builtin.include_tasks: \"{{ 'systemd' if x else 'y' }}.yml\"  # supervisor\n"
        "- name: Show\n  ansible.builtin.debug:\n    msg: 'a # supervisorctl'\n"
    )
    (tmp_path / "roles" / "some_role" / "templates").mkdir()
    (tmp_path / "roles" / "some_role" / "templates" / "a.j2").write_text(
        "# systemd unit\n{# supervisor #}\nExecStart=/usr/bin/supervisorctl\n"
    )
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "f.py").write_text(
        '"""systemd docs."""\n# supervisor\nMANAGERS = ("systemd",)\n'
    )
    (tmp_path / "playbooks").mkdir()
    found = manager_words(tmp_path)
    assert sorted(found) == [
        "plugins/f.py",
        "roles/some_role/tasks/main.yml",
        "roles/some_role/templates/a.j2",
    ]
    assert len(found["roles/some_role/tasks/main.yml"]) == 2, found
    assert found["roles/some_role/templates/a.j2"] == ["3: ExecStart=/usr/bin/supervisorctl"]
    assert found["plugins/f.py"] == ['3: "systemd"']


sys.path.insert(0, str(ROOT / "plugins" / "filter"))


def test_managers_are_stated_once_with_their_node_names():
    from celery_process import (
        celery_process_managers,
        celery_process_node,
        celery_process_recorded_manager,
    )

    assert celery_process_managers("supervisor") == ["systemd", "supervisor"]
    assert celery_process_node("systemd") == "{group}@{host}"
    assert celery_process_node("supervisor") == "{group}@supervisor.{host}"
    with pytest.raises(Exception, match="celery_process_manager is 'runit'"):
        celery_process_managers("runit")
    # a record of a toolkit version before the choice ran under systemd; rollback.yml falls
    # back to the inventory's manager instead
    assert celery_process_recorded_manager({"manager": "supervisor"}) == "supervisor"
    assert celery_process_recorded_manager({"layout": "split"}) == "systemd"
    assert celery_process_recorded_manager({}, "supervisor") == "supervisor"
    assert celery_process_recorded_manager({}, None) == "systemd"
