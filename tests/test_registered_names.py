"""A registered result (or a fact set by set_fact) outranks a task's own `vars:` (Ansible's
variable precedence): a task that uses a name as a task variable reads the registered result
instead, once a task of that name ran in the play (move-queues.yml ran stranded.yml after move.yml
registered `__celery_deploy_answers`, and the verdict read the ping's results). No name is both."""

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def tasks(node):
    """Every task of a task list, blocks included."""
    for task in node or []:
        if not isinstance(task, dict):
            continue
        yield task
        for key in ("block", "rescue", "always"):
            yield from tasks(task.get(key))


def names() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    registered: dict[str, set[str]] = {}
    task_vars: dict[str, set[str]] = {}
    files = [*ROOT.glob("roles/*/tasks/**/*.yml"), *ROOT.glob("playbooks/*.yml")]
    for path in files:
        data = yaml.safe_load(path.read_text())
        plays = data if path.parent.name == "playbooks" else [{"tasks": data}]
        for play in plays or []:
            if not isinstance(play, dict):
                continue
            for section in ("pre_tasks", "tasks", "post_tasks", "handlers"):
                for task in tasks(play.get(section)):
                    where = str(path.relative_to(ROOT))
                    if "register" in task:
                        registered.setdefault(task["register"], set()).add(where)
                    # a fact set by set_fact outranks task variables the same way
                    facts = task.get("ansible.builtin.set_fact") or task.get("set_fact") or {}
                    for name in facts if isinstance(facts, dict) else {}:
                        if name != "cacheable":
                            registered.setdefault(name, set()).add(where)
                    for name in task.get("vars") or {}:
                        task_vars.setdefault(name, set()).add(where)
    return registered, task_vars


def test_the_walk_finds_both_kinds():
    registered, task_vars = names()
    assert "__celery_deploy_stranded_counts" in registered
    assert "__celery_deploy_stranded_answers" in task_vars


def test_no_registered_name_is_also_a_task_variable():
    registered, task_vars = names()
    both = {n: sorted(registered[n] | task_vars[n]) for n in set(registered) & set(task_vars)}
    assert not both, both
