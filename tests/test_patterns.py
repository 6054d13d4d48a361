"""The one pattern rule for get and put (pure, milliseconds)."""

import pytest

from catalog_agent.errors import ConfigError
from catalog_agent.patterns import Pattern, parse

PATHS = ["a.csv", "b.txt", "raw/c.csv", "raw/deep/d.csv", "raw/deep/e.txt", "model/w.bin",
         ".catalog-agent/manifests/s.json", "rawish.csv", "x/raw/y.csv"]


def matched(text: str) -> list[str]:
    pattern = Pattern(text)
    return [p for p in PATHS if pattern.matches(p)]


@pytest.mark.parametrize("text, expected", [
    ("*.csv", ["a.csv", "rawish.csv"]),
    ("**/*.csv", ["a.csv", "raw/c.csv", "raw/deep/d.csv", "rawish.csv", "x/raw/y.csv"]),
    ("raw", ["raw/c.csv", "raw/deep/d.csv", "raw/deep/e.txt"]),
    ("raw/", ["raw/c.csv", "raw/deep/d.csv", "raw/deep/e.txt"]),
    ("raw/*", ["raw/c.csv", "raw/deep/d.csv", "raw/deep/e.txt"]),  # raw/deep is a folder match
    ("raw/*.csv", ["raw/c.csv"]),
    ("raw/**/*.txt", ["raw/deep/e.txt"]),
    ("?.csv", ["a.csv"]),
    ("**", [p for p in PATHS if not p.startswith(".catalog-agent")]),
    ("**/**/**/**", [p for p in PATHS if not p.startswith(".catalog-agent")]),
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


@pytest.mark.parametrize("bad", ["", "  ", "../x", "a/../b", "a\\b", "a\x00b", "x" * 2000])
def test_bad_patterns_are_usage_errors(bad: str) -> None:
    with pytest.raises(ConfigError):
        parse([bad])


def test_pattern_bomb_stays_linear() -> None:
    # Without collapsing, nested ** and * groups backtrack exponentially on a non-match.
    pattern = Pattern("**/" * 30 + "*a*a*a*a*a*a*a*a*a*a*a*b")
    assert not pattern.matches("/".join(["a" * 40] * 30))
