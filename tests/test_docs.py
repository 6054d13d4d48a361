"""The README and docs/ stay true: their tables equal the code, and every variable, option and
exit code they name exists; every page is linked, every link resolves, every diagram parses.

The tables are parsed from the Markdown: a key, command option, variable or exit code added to
the code without its row (or a row left behind after the code dropped it) fails here.
"""

from __future__ import annotations

import contextlib
import io
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from catalog_agent.cli import main
from catalog_agent.config import KEYS, OTHER_ENV
from catalog_agent.errors import EXIT_CODES

ROOT = Path(__file__).parent.parent
README = (ROOT / "README.md").read_text()
DOCS = {path: path.read_text() for path in sorted((ROOT / "docs").glob("*.md"))}
PAGES = {ROOT / "README.md": README, **DOCS}
CONFIGURATION = (ROOT / "docs" / "configuration.md").read_text()
PRODUCT_VARIABLES = {spec.env for spec in KEYS.values()} | OTHER_ENV

# Options of other tools that the pages show in their commands (helm, pip, podman, rclone, ...):
# none may be an option of the agent, and each must still appear in the pages.
FOREIGN_OPTIONS = {
    "--approve": "eksctl", "--cluster": "eksctl", "--cluster-name": "aws eks",
    "--namespace": "aws eks",
    "--service-account": "aws eks", "--set": "helm", "--strict": "helm lint, kubernetes-validate",
    "--build-arg": "podman", "--layers": "podman", "--variant": "debootstrap",
    "--include": "debootstrap", "--no-deps": "pip", "--only-binary": "pip",
    "--require-hashes": "pip", "--checkers": "rclone", "--checksum": "rclone",
    "--transfers": "rclone", "--if-size-differ": "s5cmd", "--gil": "py-spy", "--idle": "py-spy",
}
BENCH = "scripts/bench"  # its options are checked against its own parser


def section(text: str, heading: str) -> str:
    """The body of a ``## heading`` (up to the next heading of the same level or higher)."""
    level = heading.split(" ", 1)[0]
    body = text.split(f"\n{heading}\n", 1)[1]
    return re.split(rf"\n#{{1,{len(level)}}} ", body, maxsplit=1)[0]


def shown_default(default: object) -> str:
    if isinstance(default, bool):
        return "true" if default else "false"
    if isinstance(default, tuple):
        return "(none)"
    return "''" if default == "" else str(default)


def default_cell(name: str) -> str:
    """The table's default column: the default, after the variables read before it."""
    spec = KEYS[name]
    default = "~/.aws/credentials" if name == "aws_credentials_file" else \
        shown_default(spec.default)
    return "".join(f"`{v}`, " for v in spec.fallback_env) + \
        ("else " if spec.fallback_env else "") + f"`{default}`"


# --- tables equal to the code -----------------------------------------------------------------

def test_configuration_table_lists_every_key_with_its_default_variable_and_flag() -> None:
    rows = {m.group(1): m.groups()[1:] for m in re.finditer(
        r"^\| `(\w+)` \| (`[^|]*`) \| [^|]* \| `(\w+)` \| `([^`]+)` \|",
        section(CONFIGURATION, "## Keys"), re.M)}
    assert set(rows) == set(KEYS)
    for name, spec in KEYS.items():
        flag = spec.flag_name if spec.flag else "arguments"
        assert rows[name] == (default_cell(name), spec.env, flag), name
    assert default_cell("region") == "`AWS_REGION`, `AWS_DEFAULT_REGION`, else `eu-west-1`"


def test_other_variables_table_lists_exactly_the_other_variables() -> None:
    rows = re.findall(r"^\| `(CATALOG_AGENT_\w+)` \|", section(CONFIGURATION, "## Other variables"),
                      re.M)
    assert len(rows) == len(set(rows))
    assert set(rows) == OTHER_ENV - {spec.env for spec in KEYS.values()}


def _own_options(command_name: str) -> set[str]:
    """A command's options that are not key flags (nor --config, --help)."""
    command = main.commands[command_name]
    key_flags = {spec.flag_name for spec in KEYS.values() if spec.flag} | \
        {"--no-" + spec.name.replace("_", "-") for spec in KEYS.values() if spec.kind == "bool"}
    options = {opt for param in command.params for opt in param.opts + param.secondary_opts
               if opt.startswith("--")}
    return options - key_flags - {"--config", "--help"}


def test_commands_table_equals_the_cli() -> None:
    rows = dict(re.findall(r"^\| `([\w-]+)` \| (.+) \|$",
                           section(CONFIGURATION, "## Commands and options"), re.M))
    assert set(rows) == set(main.commands)
    for name, text in rows.items():
        assert set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", text)) == _own_options(name), name


def test_exit_code_table_matches_the_code() -> None:
    table = dict(re.findall(r"^\| (\d+) \| ([^|]+?) \|$", section(README, "## Exit codes"), re.M))
    assert {int(code) for code in table} == set(EXIT_CODES)
    for code, text in EXIT_CODES.items():
        assert table[str(code)].replace("`", "") == text


# --- every name the pages use exists ----------------------------------------------------------

def _agent_options() -> set[str]:
    found = {"--help", "-h"}
    for command in [main, *main.commands.values()]:
        for param in command.params:
            found |= set(param.opts) | set(param.secondary_opts)
    return found


def _bench_options() -> set[str]:
    from bench.run import parse

    shown = io.StringIO()
    with contextlib.redirect_stdout(shown), pytest.raises(SystemExit):
        parse(["--help"])
    return set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", shown.getvalue()))


def _documented(pattern: str) -> dict[str, str]:
    """Each match of ``pattern`` in the pages, with the first page it appears on."""
    found: dict[str, str] = {}
    for path, text in PAGES.items():
        for match in re.finditer(pattern, text):
            found.setdefault(match.group(1), path.name)
    return found


def test_every_documented_variable_exists() -> None:
    documented = _documented(r"(?<![\w*])(CATALOG_AGENT_[A-Z0-9_]*[A-Z0-9])")
    assert len(documented) > 20
    assert {name: page for name, page in documented.items()
            if name not in PRODUCT_VARIABLES} == {}


def test_every_documented_option_exists() -> None:
    documented = _documented(r"(?<![\w-])(--[a-z][a-z0-9-]*)")
    agent, bench = _agent_options(), _bench_options()
    assert set(FOREIGN_OPTIONS) & agent == set(), "an option of the agent is listed as foreign"
    assert set(FOREIGN_OPTIONS) <= set(documented), "a foreign option no page uses any more"
    unknown = {option: page for option, page in documented.items()
               if option not in agent and option not in bench and option not in FOREIGN_OPTIONS}
    assert unknown == {}
    # scripts/bench's options, where the pages run it, are its own
    for path, text in PAGES.items():
        for line in re.findall(rf"^\s*{re.escape(BENCH)} (.*)$", text, re.M):
            options = re.findall(r"(?<![\w-])--[a-z][a-z-]*", line.split("#", 1)[0])
            assert set(options) <= bench, f"{path.name}: {line}"


def test_every_documented_exit_code_exists() -> None:
    documented = _documented(r"\b(?:exit|exits|exited|exit code)[ -](\d+)\b")
    assert {"2", "4", "6", "143"} <= set(documented)
    assert {code: page for code, page in documented.items() if int(code) not in EXIT_CODES} == {}


def test_command_lines_in_the_pages_parse_with_the_cli() -> None:
    """Every `catalog-agent COMMAND ...` shown in a code span or block is a valid command line."""
    shown = set()
    for text in PAGES.values():
        shown |= set(re.findall(r"`(catalog-agent (?:get|put|sync|ls|config|install-entrypoint|"
                                r"demo)\b[^`]*)`", text))
        shown |= {line.strip() for line in re.findall(r"^\s{4,}(catalog-agent [a-z].*)$", text,
                                                      re.M)}
    assert len(shown) >= 5
    for line in sorted(shown):
        words = shlex.split(line.split("  #", 1)[0])[1:]
        command = main.commands[words[0]]
        options = {o for p in command.params for o in p.opts + p.secondary_opts}
        # a synopsis writes optional parts as [--x VALUE] and alternatives as a|b
        named = [part for word in words[1:] for part in word.strip("[]").split("|")
                 if part.startswith("--")]
        assert named or len(words) <= 2, line
        assert [o for o in named if o.split("=")[0] not in options] == [], line


# --- the pages as a whole ---------------------------------------------------------------------

def test_pod_identity_commands_use_the_aws_clis_flags() -> None:
    """`aws eks create-pod-identity-association` takes --cluster-name (the pages said --cluster,
    which the AWS CLI refuses); the chart's NOTES.txt prints the same command."""
    notes = (ROOT / "charts" / "catalog-agent" / "templates" / "NOTES.txt").read_text()
    shown = [m.group(1) for text in [*PAGES.values(), notes]
             for m in re.finditer(r"create-pod-identity-association([^`]*?ROLE_ARN)", text)]
    assert len(shown) >= 2
    for command in shown:
        flags = set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", command))
        assert flags == {"--cluster-name", "--namespace", "--service-account", "--role-arn"}, \
            command


def test_every_docs_page_is_linked_from_the_readme() -> None:
    linked = set(re.findall(r"\]\(docs/([\w.-]+\.md)[)#]", README))
    assert linked == {path.name for path in DOCS}


def test_every_docs_page_starts_with_a_purpose_line() -> None:
    for path, text in DOCS.items():
        lines = [line for line in text.splitlines() if line.strip()]
        assert lines[0].startswith("# "), path.name
        assert re.match(r"[A-Z`*]", lines[1]) and not lines[1].startswith("#"), path.name


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_relative_link_and_anchor_resolves() -> None:
    checked = 0
    for path, text in PAGES.items():
        prose = re.sub(r"```.*?```", "", text, flags=re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", prose):
            if re.match(r"[a-z]+:", target):
                continue
            file, _, anchor = target.partition("#")
            linked = (path.parent / file).resolve() if file else path
            assert linked.exists(), f"{path.name}: {target}"
            if anchor:
                headings = re.findall(r"^#{1,6} (.+)$", linked.read_text(), re.M)
                assert anchor in {_slug(h) for h in headings}, f"{path.name}: {target}"
            checked += 1
    assert checked > 30


def test_the_readme_is_a_short_front_page() -> None:
    assert len(README.encode()) < 15_000
    first_screen = "\n".join(README.splitlines()[:30])
    for words in ("catalog-agent get", "entrypoint --", "catalog-agent put --wait",
                  "(#a-complete-job)"):
        assert words in first_screen, words


def _files_of(folder: str) -> list[Path]:
    """The project's files below ``folder``: not what tools put in hidden folders beside them
    (the benchmark's extracted baseline commit in ``bench/.baseline``, caches)."""
    top = ROOT / folder
    return [p for p in top.rglob("*") if p.is_file()
            and not any(part.startswith(".") for part in p.relative_to(top).parts[:-1])]


def test_no_issue_numbers_or_ownership_notes_in_the_product() -> None:
    """The product says what it is, not how it was built."""
    places = [ROOT / "README.md", ROOT / "Dockerfile", ROOT / "entrypoint", ROOT / "pyproject.toml",
              *(ROOT / "docs").glob("*.md")]
    for folder in ("catalog_agent", "charts", "scripts", "bench", ".ci"):
        places += [p for p in _files_of(folder) if p.suffix in
                   {"", ".py", ".sh", ".bash", ".md", ".yaml", ".tpl", ".txt", ".json"}]
    words = re.compile(r"\bissues? #?\d+|owned by|<!--", re.I)
    found = {str(p.relative_to(ROOT)): m.group() for p in places
             for m in [words.search(p.read_text(errors="replace"))] if m}
    assert found == {}


def test_demo_points_at_what_exists() -> None:
    from catalog_agent.demo import NEXT_STEPS

    for path in re.findall(r"((?:docs|charts)/[\w./-]+)", NEXT_STEPS):
        assert (ROOT / path).exists(), path
    for title in re.findall(r'README\.md "([^"]+)"', NEXT_STEPS):
        assert f"\n## {title}\n" in README or f"\n### {title}\n" in README, title


# --- diagrams ---------------------------------------------------------------------------------

MERMAID = ROOT / ".tools" / "mermaid"


def test_mermaid_diagrams_parse(tmp_path: Path) -> None:
    """With mermaid's own parser (scripts/setup.d/50-mermaid.sh), as GitHub renders them."""
    blocks = [(path.name, block) for path, text in PAGES.items()
              for block in re.findall(r"```mermaid\n(.*?)```", text, re.S)]
    assert [name for name, _ in blocks].count("README.md") == 1
    kubernetes = [b for name, b in blocks if name == "kubernetes.md"]
    assert len(kubernetes) == 3 and all(b.startswith("sequenceDiagram") for b in kubernetes)
    if not (MERMAID / "node_modules" / "mermaid").is_dir():
        pytest.skip("mermaid's parser is missing: run scripts/bootstrap (50-mermaid.sh)")
    files = []
    for index, (name, block) in enumerate(blocks):
        files.append(tmp_path / f"{index}-{name}.mmd")
        files[-1].write_text(block)
    done = subprocess.run(["node", str(ROOT / "tests" / "mermaid" / "check.mjs"), str(MERMAID),
                           *map(str, files)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("\nok ") + done.stdout.startswith("ok ") == len(blocks), done.stdout


def test_the_mermaid_check_refuses_a_broken_diagram(tmp_path: Path) -> None:
    if not (MERMAID / "node_modules" / "mermaid").is_dir():
        pytest.skip("mermaid's parser is missing: run scripts/bootstrap (50-mermaid.sh)")
    broken = tmp_path / "broken.mmd"
    broken.write_text("sequenceDiagram\n    A->>B without a colon\n")
    done = subprocess.run(["node", str(ROOT / "tests" / "mermaid" / "check.mjs"), str(MERMAID),
                           str(broken)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "FAIL" in done.stdout, done.stdout + done.stderr


# --- tests and tools keep out of the product's variables ----------------------------------------

def test_tests_and_tools_read_no_catalog_agent_variable_of_their_own() -> None:
    """CATALOG_AGENT_* belongs to the product (every such variable not a key is an error):
    tests, benchmarks and scripts name their own settings differently."""
    read = re.compile(r"""environ(?:\.get\(|\[)\s*["'](CATALOG_AGENT_\w+)["']""")
    found = {}
    for folder in ("tests", "bench", "scripts"):
        for path in _files_of(folder):
            if path.suffix in {".py", ".sh", ""}:
                for name in read.findall(path.read_text(errors="replace")):
                    found.setdefault(name, path.relative_to(ROOT))
    assert {n: str(p) for n, p in found.items() if n not in PRODUCT_VARIABLES} == {}
