"""layout: magnus, the keys magnus writes (<prefix>/<run_id>/<compute_data_folder>/<path>).

Pure mapping and configuration tests, then put, get, skip-unchanged, manifests, ls, --record
and sync through the real CLI against SeaweedFS and a file-system catalog.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Callable

import pytest

from catalog_agent import config as config_module
from catalog_agent.errors import ConfigError
from catalog_agent.layout import Layout, for_run, magnus_folder
from conftest import Agent, Ran, log_events


# --- the mapping (pure) ------------------------------------------------------------------------

@pytest.mark.parametrize("given, folder", [
    ("data", "data"), ("data/", "data"), ("./data", "data"), ("data//raw/./x", "data/raw/x"),
    (".", ""), ("./", ""), ("work/data", "work/data"), ("~/d", "~/d"),
])
def test_the_data_folder_is_named_as_magnus_pathlib_put_names_it(given: str, folder: str) -> None:
    assert magnus_folder(given) == folder


@pytest.mark.parametrize("given, words", [
    ("/data", "absolute"), ("/", "absolute"), ("a/../b", "'..'"), ("..", "'..'"),
    ("a\\b", "backslash"),
])
def test_folders_that_cannot_be_in_a_key_are_refused(given: str, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        magnus_folder(given)


def test_keys_and_paths_map_both_ways() -> None:
    magnus = for_run("magnus", "./data/", "p/r1/")
    assert magnus == Layout("p/r1/", "data")
    assert magnus.key("raw/a.csv") == "p/r1/data/raw/a.csv"
    assert magnus.in_run("raw/a.csv") == "data/raw/a.csv"
    assert magnus.relative("data/raw/a.csv") == "raw/a.csv"
    assert magnus.relative("data2/a.csv") is None and magnus.relative("data") is None
    assert magnus.relative("data/") is None and magnus.relative("make") is None
    run = for_run("run", "/abs/data", "p/r1/")
    assert run.key("raw/a.csv") == "p/r1/raw/a.csv" and run.relative("x/y") == "x/y"
    assert for_run("magnus", ".", "r1/").key("a") == "r1/a"


# --- the key, like every other ------------------------------------------------------------------

def test_layout_is_a_key_of_file_environment_and_flag(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("catalog:\n  type: file-system\n  config:\n    layout: magnus\n"
                    "    compute_data_folder: data\n")
    loaded = config_module.load(config_path=str(path), environ={})
    assert (loaded.layout, loaded.sources["layout"]) == ("magnus", f"file {path}, "
                                                                   "catalog.config")
    assert loaded.key_layout.folder == "data"
    env = config_module.load(config_path=str(path), environ={"CATALOG_AGENT_LAYOUT": "run"})
    assert (env.layout, env.key_layout.folder) == ("run", "")
    flag = config_module.load(config_path=str(path), environ={"CATALOG_AGENT_LAYOUT": "run"},
                              flags={"layout": "magnus"})
    assert flag.sources["layout"] == "flag --layout"
    assert config_module.load(environ={"CATALOG_AGENT_TYPE": "file-system"}).layout == "run"


def test_an_absolute_data_folder_under_layout_magnus_exits_2_saying_why(offline_agent: Agent
                                                                         ) -> None:
    ran = offline_agent("get", "**", "--run-id", "r", "--type", "file-system", "--layout",
                        "magnus", "--compute-data-folder", "/data")
    assert ran.code == 2, ran.output
    errors = [e for e in log_events(ran.stderr) if e["level"] == "error"]
    assert len(errors) == 1 and "absolute" in errors[0]["event"]
    assert "relative" in errors[0]["event"] and "--compute-data-folder" in errors[0]["event"]
    assert "Traceback" not in ran.output
    bad = offline_agent("get", "**", "--run-id", "r", "--type", "file-system", "--layout", "magnu")
    assert bad.code == 2 and "did you mean 'magnus'" in bad.stderr


# --- put, get, ls, --record, sync in both layouts, both catalogs -------------------------------

@pytest.fixture(params=["s3", "file-system"])
def catalog(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[..., Any]:
    """(run the agent in a working directory, list the keys under a prefix) for one catalog."""
    if request.param == "s3":
        agent: Agent = request.getfixturevalue("agent")
        s3, bucket = request.getfixturevalue("s3"), request.getfixturevalue("bucket")

        def keys(prefix: str) -> list[str]:
            listed = s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
            return sorted(o["Key"] for o in listed)
        flags: tuple[str, ...] = ()
    else:
        agent = request.getfixturevalue("offline_agent")
        root = tmp_path / "catalog"

        def keys(prefix: str) -> list[str]:
            return sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                          if p.is_file() and p.relative_to(root).as_posix().startswith(prefix))
        flags = ("--type", "file-system", "--catalog-location", str(root))

    def run(*args: str, cwd: Path) -> Ran:
        cwd.mkdir(parents=True, exist_ok=True)
        return Agent(agent.env, cwd)(*args, *flags, "--prefix", "p", "--layout", "magnus")
    run.keys = keys  # type: ignore[attr-defined]
    return run


def fill(folder: Path, contents: dict[str, bytes]) -> None:
    for name, data in contents.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)


def done(ran: Ran, command: str) -> dict[str, Any]:
    assert ran.code == 0, ran.output
    return next(e for e in log_events(ran.stderr) if e["event"] == f"{command}.done")


def test_magnus_layout_round_trip(catalog: Callable[..., Any], tmp_path: Path) -> None:
    sent = {"top.txt": b"top\n", "raw/a.csv": b"a,1\n", "raw/deep/b.bin": b"\x00\x01"}
    pod1, pod2 = tmp_path / "pod1", tmp_path / "pod2"
    fill(pod1 / "data", sent)
    put = done(catalog("put", "**", "--run-id", "r1", "--step", "prep", "--record", "put.json",
                       "--compute-data-folder", "./data/", cwd=pod1), "put")
    assert put["files"] == 3
    assert catalog.keys("p/r1/") == sorted(
        [f"p/r1/data/{n}" for n in sent] + ["p/r1/.catalog-agent/manifests/prep.json"])
    record = json.loads((pod1 / "put.json").read_text())
    assert sorted(f["catalog_relative_path"] for f in record["files"]) == sorted(
        f"r1/data/{n}" for n in sent)
    assert {f["name"] for f in record["files"]} == set(sent)
    again = done(catalog("put", "**", "--run-id", "r1", "--step", "prep",
                         "--compute-data-folder", "data", cwd=pod1), "put")
    assert (again["files"], again["skipped"]) == (0, 3)

    got = done(catalog("get", "raw", "--run-id", "r1", "--compute-data-folder", "data",
                       "--record", "get.json", cwd=pod2), "get")
    assert (got["files"], got["unverified"]) == (2, 0)
    assert {p.relative_to(pod2 / "data").as_posix(): p.read_bytes()
            for p in (pod2 / "data").rglob("*") if p.is_file()} == {
        n: d for n, d in sent.items() if n.startswith("raw/")}
    listed = catalog("ls", "--json", "--run-id", "r1", "--compute-data-folder", "data", cwd=pod2)
    assert listed.code == 0, listed.output
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [(r["path"], r["sha256"], r["step"]) for r in rows] == [
        (n, hashlib.sha256(sent[n]).hexdigest(), "prep") for n in sorted(sent)]

    # another data folder of the same run sees nothing of data/ (as magnus's get)
    other = catalog("get", "**", "--run-id", "r1", "--compute-data-folder", "other", cwd=pod2)
    assert other.code == 3, other.output

    synced = done(catalog("sync", "--from-run", "r1", "--run-id", "r2", cwd=pod2), "sync")
    assert synced["files"] == 3
    assert sorted(k.replace("p/r2/", "") for k in catalog.keys("p/r2/")) == sorted(
        [f"data/{n}" for n in sent] + [".catalog-agent/manifests/prep.json"])
    pod3 = tmp_path / "pod3"
    regot = done(catalog("get", "**", "--run-id", "r2", "--compute-data-folder", "data",
                         cwd=pod3), "get")
    assert (regot["files"], regot["unverified"]) == (3, 0)  # verified from the synced manifest


def test_steps_with_different_data_folders_keep_their_own_records(catalog: Callable[..., Any],
                                                                   tmp_path: Path) -> None:
    """Manifest records are keyed by their place in the run: two steps' x.txt never mix."""
    pod = tmp_path / "pod"
    fill(pod / "a", {"x.txt": b"from a\n"})
    fill(pod / "b", {"x.txt": b"from b, longer\n"})
    for step, folder in (("sa", "a"), ("sb", "b")):
        assert catalog("put", "x.txt", "--run-id", "r", "--step", step,
                       "--compute-data-folder", folder, cwd=pod).code == 0
    assert catalog.keys("p/r/a/") == ["p/r/a/x.txt"] and catalog.keys("p/r/b/") == ["p/r/b/x.txt"]
    for folder in ("a", "b"):
        into = tmp_path / f"in-{folder}"
        got = done(catalog("get", "x.txt", "--run-id", "r", "--compute-data-folder", folder,
                           cwd=into), "get")
        assert (got["files"], got["unverified"]) == (1, 0)
        assert (into / folder / "x.txt").read_bytes() == (pod / folder / "x.txt").read_bytes()


def test_the_data_folder_dot_is_the_runs_root(catalog: Callable[..., Any], tmp_path: Path
                                              ) -> None:
    """compute_data_folder '.': keys straight under <prefix>/<run_id>/ (as magnus names them),
    the agent's own records under .catalog-agent/ never taken for data."""
    sent = {"top.txt": b"top\n", "raw/a.csv": b"a,1\n"}
    pod1, pod2 = tmp_path / "pod1", tmp_path / "pod2"
    fill(pod1, sent)
    put = done(catalog("put", "**", "--run-id", "r1", "--step", "s",
                       "--compute-data-folder", ".", cwd=pod1), "put")
    assert put["files"] == 2
    assert catalog.keys("p/r1/") == sorted(
        [f"p/r1/{n}" for n in sent] + ["p/r1/.catalog-agent/manifests/s.json"])
    got = done(catalog("get", "**", "--run-id", "r1", "--compute-data-folder", ".",
                       cwd=pod2), "get")
    assert (got["files"], got["unverified"]) == (2, 0)
    assert {p.relative_to(pod2).as_posix(): p.read_bytes()
            for p in pod2.rglob("*") if p.is_file()} == sent
