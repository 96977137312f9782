"""Every role's meta/argument_specs.yml mirrors its defaults/main.yml exactly, and its README
lists every variable."""

import re
from pathlib import Path

import pytest
import yaml

ROLES = sorted(p for p in (Path(__file__).parent.parent / "roles").iterdir() if p.is_dir())


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text()) or {}


def test_there_are_roles():
    assert ROLES, "no roles found under roles/"


@pytest.mark.parametrize("role", ROLES, ids=lambda p: p.name)
def test_specs_mirror_defaults(role: Path):
    defaults = load(role / "defaults" / "main.yml")
    options = load(role / "meta" / "argument_specs.yml")["argument_specs"]["main"]["options"]
    assert set(options) == set(defaults), "options and defaults name different variables"
    for name, spec in options.items():
        assert name.startswith(prefix(role)), f"{name} is not prefixed {prefix(role)}"
        assert spec.get("description"), f"{name} has no description"
        assert "type" in spec, f"{name} has no type"
        assert spec.get("default") == defaults[name], f"{name}: spec default differs from defaults"
        if "choices" in spec:
            assert defaults[name] in spec["choices"], f"{name}: default is not one of its choices"


# The one role whose variables every other role shares (the app's name, user, folders, process
# manager): its variables carry the toolkit's prefix, and the roles that use them depend on it.
COMMON = "celery"
USERS_OF_COMMON = {
    "celery_app",
    "celery_deploy",
    "celery_exporter",
    "celery_process",
    "celery_workers",
    "flower",
}


def prefix(role: Path) -> str:
    return role.name + "_"


@pytest.mark.parametrize("role", ROLES, ids=lambda p: p.name)
def test_role_has_no_hidden_dependencies(role: Path):
    """A role depends on nothing but the shared variables' role, and says so in meta/main.yml."""
    wanted = [{"role": f"celery_toolkit.stack.{COMMON}"}] if role.name in USERS_OF_COMMON else []
    assert load(role / "meta" / "main.yml").get("dependencies") == wanted


def test_no_role_restates_a_shared_variable():
    """The shared variables are defined in celery alone: no other role's defaults or
    argument spec names one of them."""
    shared = set(load(ROLES[0].parent / COMMON / "defaults" / "main.yml"))
    for role in ROLES:
        if role.name == COMMON:
            continue
        specs = load(role / "meta" / "argument_specs.yml")["argument_specs"]
        named = set(load(role / "defaults" / "main.yml")).union(
            *(set(spec.get("options") or {}) for spec in specs.values())
        )
        assert not named & shared, f"roles/{role.name} restates {sorted(named & shared)}"


@pytest.mark.parametrize("role", ROLES, ids=lambda p: p.name)
def test_readme_has_a_row_for_every_variable(role: Path):
    """Each public variable has a row in the role README's variables table."""
    readme = (role / "README.md").read_text()
    rows = set(re.findall(r"^\| `([a-z_]+)` \|", readme, flags=re.M))
    missing = sorted(set(load(role / "defaults" / "main.yml")) - rows)
    assert not missing, f"roles/{role.name}/README.md has no row for {', '.join(missing)}"


@pytest.mark.parametrize("role", ROLES, ids=lambda p: p.name)
def test_entry_points_agree_with_main(role: Path):
    """An entry point (include_role tasks_from) other than main describes a variable of main
    exactly as main does; a variable of its own is prefixed and has a README row."""
    specs = load(role / "meta" / "argument_specs.yml")["argument_specs"]
    main = specs["main"]["options"]
    readme = (role / "README.md").read_text()
    for entry, spec in specs.items():
        for name, option in (spec.get("options") or {}).items():
            if name in main:
                assert option == main[name], f"{entry}: {name} differs from main's"
            else:
                assert name.startswith(prefix(role)), f"{entry}: {name} is not prefixed"
                assert option.get("description") and "type" in option, f"{entry}: {name}"
                assert f"| `{name}` |" in readme, f"{entry}: README has no row for {name}"
        assert (role / "tasks" / f"{entry}.yml").exists(), f"{entry} has no tasks/{entry}.yml"
