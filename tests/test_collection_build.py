"""`ansible-galaxy collection build` from the checkout: the artifact a user installs holds the
roles, playbooks, filters and the reference app, and none of the checkout's tooling, caches or
test fleets (galaxy.yml build_ignore). Installing it and running a user's own playbook with it
against a fleet is molecule/app-django/tests/test_collection_install.py."""

import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
GALAXY = yaml.safe_load((ROOT / "galaxy.yml").read_text())


@pytest.fixture(scope="module")
def artifact(tmp_path_factory) -> dict[str, tarfile.TarInfo]:
    out = tmp_path_factory.mktemp("build")
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "ansible-galaxy"), "collection", "build"]
        + ["--output-path", str(out), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    built = out / f"{GALAXY['namespace']}-{GALAXY['name']}-{GALAXY['version']}.tar.gz"
    with tarfile.open(built) as tar:
        return {member.name: member for member in tar.getmembers()}


def test_the_artifact_holds_what_a_user_runs(artifact):
    roles = sorted(p.name for p in (ROOT / "roles").iterdir() if p.is_dir())
    for role in roles:
        for part in ("defaults/main.yml", "meta/argument_specs.yml", "meta/main.yml"):
            assert f"roles/{role}/{part}" in artifact, f"roles/{role}/{part}"
    for path in (ROOT / "plugins/filter").glob("*.py"):
        assert f"plugins/filter/{path.name}" in artifact
    for path in (ROOT / "playbooks").glob("*.yml"):
        assert f"playbooks/{path.name}" in artifact
    # the reference app is the role's default celery_app_source
    assert "app/pyproject.toml" in artifact and "app/constraints.txt" in artifact
    assert "meta/runtime.yml" in artifact and "MANIFEST.json" in artifact


LEFT_OUT = [
    ".venv",
    ".cache",
    ".git",
    ".config",
    "molecule",
    "tests",
    "collections",
    "inventories/sandbox",
]


@pytest.mark.parametrize("folder", LEFT_OUT)
def test_the_artifact_leaves_out_the_checkouts_tooling(artifact, folder):
    inside = [name for name in artifact if name == folder or name.startswith(folder + "/")]
    assert not inside, inside[:5]


def test_the_artifact_holds_no_cache_build_output_or_link(artifact):
    caches = (".pytest_cache", ".ruff_cache", "__pycache__", ".egg-info")
    found = [n for n in artifact if any(part.endswith(caches) for part in n.split("/"))]
    found += [n for n in artifact if n.endswith(".pyc") or n.startswith(("build/", "app/build/"))]
    assert not found, found[:5]
    links = [n for n, member in artifact.items() if member.issym() or member.islnk()]
    assert not links, links
