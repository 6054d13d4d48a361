"""The one pattern rule for get and put (pure, milliseconds)."""

import pytest

from catalog_agent.errors import ConfigError
from catalog_agent.patterns import Pattern, parse

PATHS = ["a.csv", "b.txt", "raw/c.csv", "raw/deep/d.csv", "raw/deep/e.txt", "model/w.bin",
         ".catalog-agent/manifests/s.json", "rawish.csv", "x/raw/y.csv", "x.csv/inner.txt",
         "solo"]
EVERYTHING = [p for p in PATHS if not p.startswith(".catalog-agent")]


def matched(text: str) -> list[str]:
    pattern = Pattern(text)
    return [p for p in PATHS if pattern.matches(p)]


@pytest.mark.parametrize("text, expected", [
    ("*.csv", ["a.csv", "rawish.csv"]),
    ("**/*.csv", ["a.csv", "raw/c.csv", "raw/deep/d.csv", "rawish.csv", "x/raw/y.csv"]),
    ("raw", ["raw/c.csv", "raw/deep/d.csv", "raw/deep/e.txt"]),
    ("raw/", ["raw/c.csv", "raw/deep/d.csv", "raw/deep/e.txt"]),
    ("raw/*", ["raw/c.csv"]),  # a wildcard takes files: never the folder raw/deep
    ("raw/**", ["raw/c.csv", "raw/deep/d.csv", "raw/deep/e.txt"]),
    ("**/raw", ["raw/c.csv", "raw/deep/d.csv", "raw/deep/e.txt", "x/raw/y.csv"]),
    ("*", ["a.csv", "b.txt", "rawish.csv", "solo"]),  # the top-level files only
    ("*/*.csv", ["raw/c.csv"]),
    ("solo", ["solo"]),
    ("solo/", []),  # the slash says folder: the file solo is not one
    ("raw/*.csv", ["raw/c.csv"]),
    ("raw/**/*.txt", ["raw/deep/e.txt"]),
    ("?.csv", ["a.csv"]),
    ("**", EVERYTHING),
    ("**/**/**/**", EVERYTHING),
    ("./model/w.bin", ["model/w.bin"]),
    ("a.csv", ["a.csv"]),
])
def test_pattern_rule(text: str, expected: list[str]) -> None:
    assert matched(text) == expected


def test_reserved_folder_never_matches() -> None:
    assert matched(".catalog-agent") == []
    assert matched(".catalog-agent/**") == []
    assert not Pattern("**/*.json").matches(".catalog-agent/manifests/s.json")


def test_special_characters_are_literal() -> None:
    assert Pattern("a+b[1].csv").matches("a+b[1].csv")
    assert not Pattern("a+b[1].csv").matches("aab1.csv")
    assert Pattern("r%20 #?.txt").matches("r%20 #x.txt")


@pytest.mark.parametrize("bad", ["", "  ", "../x", "a/../b", "a\\b", "a\x00b", "x" * 2000, "*/",
                                 "raw/*.d/"])
def test_bad_patterns_are_usage_errors(bad: str) -> None:
    with pytest.raises(ConfigError):
        parse([bad])


def test_a_wildcard_never_takes_a_folders_contents() -> None:
    """The README: `*.csv` is .csv files at the top level only, even beside a folder x.csv."""
    assert not Pattern("*.csv").matches("x.csv/inner.txt")
    assert not Pattern("*").matches("raw/c.csv")
    assert not Pattern("x.c?v").matches("x.csv/inner.txt")
    assert Pattern("x.csv").matches("x.csv/inner.txt")  # named: the folder whole


def test_a_wildcard_ending_in_a_slash_says_how_to_write_it() -> None:
    with pytest.raises(ConfigError, match=r"'\*/\*\*'"):
        parse(["*/"])


def test_pattern_bomb_stays_linear() -> None:
    # Without collapsing, nested ** and * groups backtrack exponentially on a non-match.
    pattern = Pattern("**/" * 30 + "*a*a*a*a*a*a*a*a*a*a*a*b")
    assert not pattern.matches("/".join(["a" * 40] * 30))
