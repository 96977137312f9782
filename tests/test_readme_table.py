"""The README's "Where things are decided" table is true row by row: each row names one file,
which exists and holds every name the row's last column gives (names in parentheses are said to
live elsewhere, and are checked to exist there when they are paths)."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def rows() -> list[tuple[str, str, str]]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("### Where things are decided", 1)[1].split("\n## ", 1)[0]
    found = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        if len(cells) == 3 and cells[1].startswith("`") and not cells[0].startswith("question"):
            found.append((cells[0], cells[1], cells[2]))
    return found


def test_the_table_has_the_rows_a_newcomer_asks_about():
    assert len(rows()) >= 20


@pytest.mark.parametrize("question,file,names", rows(), ids=lambda v: v[:40])
def test_each_row_names_one_file_that_holds_its_names(question, file, names):
    paths = re.findall(r"`([^`]+)`", file)
    assert len(paths) == 1, f"{question}: names {len(paths)} files"
    path = ROOT / paths[0]
    assert path.is_file(), f"{question}: {paths[0]} does not exist"
    text = path.read_text()
    outside = re.sub(r"\([^)]*\)", "", names)
    for name in re.findall(r"`([^`]+)`", outside):
        assert name in text, f"{question}: {paths[0]} does not hold {name}"
    for elsewhere in re.findall(r"`([^`]+/[^`]+)`", names):
        if "<" not in elsewhere:
            assert (ROOT / elsewhere).exists(), f"{question}: {elsewhere} does not exist"
