"""The toolkit used as a user uses it from a project of their own (issue 19): installed with
`ansible-galaxy collection install` from its git URL into a fresh folder, and a playbook of the
user's, outside the repository, that calls the collection's roles by their full names, run with
--check against this scenario's converged fleet: nothing fails and nothing would change.

The user's project has its own ansible.cfg, inventory (this scenario's hosts and variables) and
playbook; the only collections it sees are the installed one and the `ansible` package's (never
this checkout's collections/ link, roles/ or ansible.cfg). The wheelhouse cache is the role's
default, the user's cache folder ($XDG_CACHE_HOME, here a folder of the test), and nothing is
written into the installed collection. That cache starts empty: building the wheelhouse into it
is a real change (on the controller), made by a first run of the user's wheelhouse play without
--check; the --check run of the whole playbook must then report changed=0 on every host.

The git URL names the checkout's HEAD commit, so the test installs what is committed (a CI clone
is clean); it refuses to run on a work tree whose collection files differ from HEAD, which it
would not be testing. Runs before the other tests (file order), with the host as converge left
it, and changes nothing on it.
"""

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from playbook_runner import ROOT, play_recap

GALAXY = yaml.safe_load((ROOT / "galaxy.yml").read_text())
FQCN = f"{GALAXY['namespace']}.{GALAXY['name']}"

# A user's own playbooks: the roles by their full names, composed as deploy.yml composes them
# (the collection's validate playbook first: it refuses bad input and notes the queues the app
# uses, which the Redis exporter reports; the wheelhouse once on the controller, the broker and
# its exporters, then on each worker host
# the app's checks, staging and switch, its worker groups, Flower and the Celery exporter, then the
# node exporter). The redis role declares the Redis exporter's ACL user only when the role
# redis_exporter runs in its play: a playbook without it would remove that user.
WHEELHOUSE = f"""---
- name: Build the app's wheelhouses on the controller
  hosts: celery_workers
  gather_facts: true
  tasks:
    - name: Build or reuse a wheelhouse for each Python version and architecture
      ansible.builtin.include_role:
        name: {FQCN}.celery_app
        tasks_from: wheelhouse
"""
PLAYBOOK = f"""---
- name: Check the inventory and note the queues the app uses
  ansible.builtin.import_playbook: {FQCN}.validate

- name: Build the app's wheelhouses
  ansible.builtin.import_playbook: wheelhouse.yml

- name: Run the broker and its exporters
  hosts: broker
  become: true
  roles:
    - role: {FQCN}.redis
    - role: {FQCN}.redis_exporter
    - role: {FQCN}.node_exporter
      when: inventory_hostname not in groups['celery_workers']

- name: Run the app, its worker groups and Flower
  hosts: celery_workers
  become: true
  gather_facts: false
  tasks:
    - name: Check the app's variables
      ansible.builtin.include_role:
        name: {FQCN}.celery_app
        tasks_from: preflight
        public: true

    - name: Stage the app's release
      ansible.builtin.include_role:
        name: {FQCN}.celery_app
        tasks_from: stage
        public: true

    - name: Switch to the release
      ansible.builtin.include_role:
        name: {FQCN}.celery_app
        tasks_from: switch
        public: true

    - name: Run the worker groups and beat
      ansible.builtin.include_role:
        name: {FQCN}.celery_workers

    - name: Run Flower
      ansible.builtin.include_role:
        name: {FQCN}.flower
      when: inventory_hostname in groups['flower']

    - name: Run the Celery exporter
      ansible.builtin.include_role:
        name: {FQCN}.celery_exporter

- name: Run the node exporter on the worker hosts
  hosts: celery_workers
  become: true
  gather_facts: false
  roles:
    - role: {FQCN}.node_exporter
"""


def collection_files_changed() -> list[str]:
    """Paths that the collection would hold whose work-tree state differs from HEAD."""
    out = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=all", "--", "."]
        + [f":(exclude){p}" for p in GALAXY["build_ignore"]],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
    ).stdout
    return out.splitlines()


def user_env(project: Path) -> dict[str, str]:
    """The environment of a user's shell: no Molecule, no Ansible settings of this repository."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("ANSIBLE_", "MOLECULE_")) and k not in ("PYTHONPATH",)
    }
    env.update(
        ANSIBLE_CONFIG=str(project / "ansible.cfg"),
        ANSIBLE_NOCOLOR="1",
        NO_COLOR="1",
        XDG_CACHE_HOME=str(project / "cache"),
    )
    return env


def run(argv: list[str], project: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run(
        argv, capture_output=True, text=True, cwd=project, env=user_env(project), timeout=timeout
    )


def changed_tasks(stdout: str) -> list[str]:
    """The tasks that reported a change, each with its first `changed:` line."""
    found, task = [], ""
    for line in stdout.splitlines():
        if line.startswith("TASK ["):
            task = line
        elif line.startswith("changed:") and task:
            found.append(f"{task.rstrip(' *')} {line}")
            task = ""
    return found


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in folder.rglob("*")
    }


@pytest.fixture(scope="module")
def project(tmp_path_factory, host):
    """The user's project: ansible.cfg, an inventory of this scenario's hosts with its
    variables, the collection installed from the git URL into collections/."""
    changed = collection_files_changed()
    assert not changed, (
        "commit first: the collection is installed from the git URL at HEAD, and these files "
        f"of it differ from HEAD: {changed[:10]}"
    )
    project = tmp_path_factory.mktemp("user-project")
    assert not project.is_relative_to(ROOT)
    collections = project / "collections"
    (project / "ansible.cfg").write_text(
        "[defaults]\n"
        f"inventory = {project / 'inventory'}\n"
        f"collections_path = {collections}\n"
        "interpreter_python = auto_silent\n"
        "retry_files_enabled = false\n"
        "[connection]\npipelining = true\n"
    )
    # this scenario's inventory as a user writes it: its hosts and their variables (without
    # Molecule's own, and without the wheelhouse folder the repository's scenarios share)
    scenario = Path(os.environ["MOLECULE_INVENTORY_FILE"]).parent
    hosts = yaml.safe_load((scenario / "ansible_inventory.yml").read_text())
    variables = yaml.safe_load((scenario / "group_vars/all").read_text())
    variables.pop("celery_app_wheelhouse_cache")
    inventory = {
        group: {
            "hosts": {
                name: {"ansible_connection": "community.docker.docker"} for name in spec["hosts"]
            }
        }
        for group, spec in hosts.items()
        if group != "all" and spec.get("hosts")
    }
    (project / "inventory/group_vars").mkdir(parents=True)
    (project / "inventory/hosts.yml").write_text(yaml.safe_dump(inventory))
    (project / "inventory/group_vars/all.yml").write_text(yaml.safe_dump(variables))
    (project / "wheelhouse.yml").write_text(WHEELHOUSE)
    (project / "deploy.yml").write_text(PLAYBOOK)

    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=ROOT, check=True
    ).stdout.strip()
    proc = run(
        ["ansible-galaxy", "collection", "install", "--offline", "-p", str(collections)]
        + [f"git+file://{ROOT},{commit}"],
        project,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return project


def test_the_user_sees_the_installed_collection_only(project):
    proc = run(["ansible-galaxy", "collection", "list", FQCN, "--format", "json"], project)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    places = {path for path, found in json.loads(proc.stdout).items() if FQCN in found}
    assert places == {str(project / "collections/ansible_collections")}, places
    installed = project / "collections/ansible_collections" / FQCN.replace(".", "/")
    assert (installed / "roles/celery_app/defaults/main.yml").is_file()
    assert (installed / "app/pyproject.toml").is_file()
    assert not (installed / "molecule").exists() and not (installed / ".cache").exists()


def test_the_wheelhouse_is_built_into_the_users_cache_not_into_the_collection(project):
    """The user's controller has never built this app: its cache ($XDG_CACHE_HOME) is empty.
    The build is a real change, on the controller (the wheelhouse entry point reports it), so it
    runs here for real, as a user's first deploy would; the --check run below then meets the
    wheelhouse in the cache, as every later deploy of the same app does."""
    installed = project / "collections/ansible_collections" / FQCN.replace(".", "/")
    before = snapshot(installed)
    proc = run(["ansible-playbook", "wheelhouse.yml"], project)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    assert [t.split(" changed:")[0] for t in changed_tasks(proc.stdout)] == [
        f"TASK [{FQCN}.celery_app : Ensure a wheelhouse exists for each Python version and "
        "architecture of the hosts]"
    ], proc.stdout[-3000:]
    assert list((project / "cache/celery-toolkit/wheelhouse").glob("py*.tar"))
    assert snapshot(installed) == before


def test_the_users_playbook_with_the_collections_roles_changes_nothing_on_a_converged_fleet(
    project,
):
    installed = project / "collections/ansible_collections" / FQCN.replace(".", "/")
    before = snapshot(installed)
    proc = run(["ansible-playbook", "deploy.yml", "--check", "--diff"], project)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    # the roles ran from the installed collection
    assert f"TASK [{FQCN}.celery_workers : " in proc.stdout, proc.stdout[-3000:]
    recap = play_recap(proc.stdout)
    assert recap, proc.stdout[-3000:]
    for name, c in recap.items():
        assert (c["changed"], c["unreachable"], c["failed"]) == (0, 0, 0), (
            name,
            changed_tasks(proc.stdout),
            proc.stdout[-4000:],
        )
    assert snapshot(installed) == before
