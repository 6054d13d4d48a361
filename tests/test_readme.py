"""The README stays true: its configuration table and exit codes match the code."""

import re
from pathlib import Path

from catalog_agent.config import KEYS
from catalog_agent.errors import EXIT_CODES

README = (Path(__file__).parent.parent / "README.md").read_text()


def shown_default(default: object) -> str:
    if isinstance(default, bool):
        return "true" if default else "false"
    if isinstance(default, tuple):
        return "(none)"
    return "''" if default == "" else str(default)


def test_configuration_table_lists_every_key_with_its_default_and_variable() -> None:
    rows = {m.group(1): (m.group(2), m.group(3)) for m in re.finditer(
        r"^\| `(\w+)` \| `([^`]*)` \| [^|]* \| `(\w+)` \|", README, re.M)}
    assert set(rows) == set(KEYS)
    for name, spec in KEYS.items():
        default = "~/.aws/credentials" if name == "aws_credentials_file" else \
            shown_default(spec.default)
        assert rows[name] == (default, spec.env), name


def test_exit_code_table_matches_the_code() -> None:
    table = dict(re.findall(r"^\| (\d+) \| ([^|]+?) \|$", README, re.M))
    assert {int(code) for code in table} == set(EXIT_CODES)
    for code, text in EXIT_CODES.items():
        assert table[str(code)].replace("`", "") == text


def test_tests_and_tools_read_no_catalog_agent_variable_of_their_own() -> None:
    """CATALOG_AGENT_* belongs to the product (every such variable not a key is an error):
    tests, benchmarks and scripts name their own settings differently."""
    from catalog_agent.config import OTHER_ENV

    product = {spec.env for spec in KEYS.values()} | OTHER_ENV
    root = Path(__file__).parent.parent
    read = re.compile(r"""environ(?:\.get\(|\[)\s*["'](CATALOG_AGENT_\w+)["']""")
    found = {}
    for folder in ("tests", "bench", "scripts"):
        for path in (root / folder).rglob("*"):
            if path.is_file() and path.suffix in {".py", ".sh", ""}:
                for name in read.findall(path.read_text(errors="replace")):
                    found.setdefault(name, path.relative_to(root))
    assert {n: str(p) for n, p in found.items() if n not in product} == {}
