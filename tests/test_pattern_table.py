"""Every row of the pattern table (docs/configuration.md), through put, get and ls, in both catalog types.

The page is parsed: a row without an expectation here (or one here without a row) fails, so
the table and the rule cannot drift apart.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Callable

import pytest

from conftest import Agent, Ran

DOCUMENT = (Path(__file__).parent.parent / "docs" / "configuration.md").read_text()
TREE = {"a.csv": b"a\n", "b.txt": b"b\n", "rawish.csv": b"r\n", "solo": b"s\n",
        "x.csv/inner.txt": b"a folder named like a csv\n", "raw/c.csv": b"c\n",
        "raw/deep/d.csv": b"d\n", "raw/deep/e.txt": b"e\n", "other/raw/f.csv": b"f\n"}
RAW = ["raw/c.csv", "raw/deep/d.csv", "raw/deep/e.txt"]
EXPECTED = {
    "*.csv": ["a.csv", "rawish.csv"],
    "*": ["a.csv", "b.txt", "rawish.csv", "solo"],
    "**/*.csv": ["a.csv", "other/raw/f.csv", "raw/c.csv", "raw/deep/d.csv", "rawish.csv"],
    "raw/*": ["raw/c.csv"],
    "raw": RAW,
    "raw/": RAW,
    "raw/**": RAW,
    "**": sorted(TREE),
}


def documented_patterns() -> list[str]:
    section = DOCUMENT.split("\n## Patterns\n", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| (`[^|]+`) \| [^|]+ \|$", section, re.M)
    return [p for row in rows for p in re.findall(r"`([^`]+)`", row)]


def test_every_documented_row_has_an_expectation() -> None:
    assert sorted(documented_patterns()) == sorted(EXPECTED)


@pytest.fixture(params=["s3", "file-system"])
def catalog(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[..., Ran]:
    if request.param == "s3":
        agent: Agent = request.getfixturevalue("agent")
        flags: tuple[str, ...] = ()
    else:
        agent = request.getfixturevalue("offline_agent")
        flags = ("--type", "file-system", "--catalog-location", str(tmp_path / "catalog"))
    return lambda *args: agent(*args, *flags)


def files_under(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


@pytest.mark.parametrize("pattern", sorted(EXPECTED))
def test_pattern_row(catalog: Callable[..., Any], tmp_path: Path, pattern: str) -> None:
    source = tmp_path / "out"
    for name, data in TREE.items():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        (source / name).write_bytes(data)
    expected = EXPECTED[pattern]
    record = tmp_path / "put.json"
    put = catalog("put", pattern, "--run-id", "picked", "--step", "s", "--record", str(record),
                  "--compute-data-folder", str(source))
    assert put.code == 0, put.output
    assert sorted(f["name"] for f in json.loads(record.read_text())["files"]) == expected

    assert catalog("put", "**", "--run-id", "all", "--step", "s",
                   "--compute-data-folder", str(source)).code == 0
    got = catalog("get", pattern, "--run-id", "all", "--compute-data-folder", str(tmp_path / "in"))
    assert got.code == 0, got.output
    assert files_under(tmp_path / "in") == expected
    ls = catalog("ls", pattern, "--json", "--run-id", "all")
    assert [json.loads(line)["path"] for line in ls.stdout.splitlines()] == expected
