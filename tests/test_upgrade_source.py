"""The rollback scenario deploys the previous release from this clone's history, by commit id.

A submission or a CI checkout of main carries the commits but not the tags (a CI run failed on
`tag v0.19.0 is missing from this clone`): converge.yml names the release's commit, which must be
an ancestor of this tree and, where the tag is present, the commit it names.
"""

import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _git(*args):
    return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True)


def _release():
    play = yaml.safe_load((ROOT / "molecule/rollback/converge.yml").read_text())[0]
    return play["vars"]["__upgrade_from"], play["vars"]["__upgrade_commit"]


def test_the_previous_release_is_an_ancestor_of_this_tree():
    tag, commit = _release()
    assert len(commit) == 40, commit
    assert _git("merge-base", "--is-ancestor", commit, "HEAD").returncode == 0, (
        f"{commit} ({tag}) is not in this clone's history"
    )


def test_the_commit_is_the_one_the_tag_names_where_the_tag_is_here():
    tag, commit = _release()
    named = _git("rev-parse", "--verify", "--quiet", f"{tag}^{{commit}}")
    if named.returncode != 0:
        pytest.skip(f"no tag {tag} in this clone (CI's checkout has none); the commit: above")
    assert named.stdout.strip() == commit


def test_the_changelog_names_the_release_the_scenario_upgrades_from():
    tag, _ = _release()
    assert f"## {tag[1:]}" in (ROOT / "CHANGELOG.md").read_text()
