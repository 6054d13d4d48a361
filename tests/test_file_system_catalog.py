"""type: file-system: the same layout and semantics in a local folder (a mounted volume)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from test_get_put import NAMES, events, files_under, fill, summary


def fs_agent(offline_agent, tmp_path: Path):  # noqa: ANN201
    catalog = tmp_path / "catalog"

    def run(*args: str):  # noqa: ANN202
        return offline_agent(*args, "--type", "file-system", "--catalog-location", str(catalog),
                             "--prefix", "p")
    return run, catalog


def test_round_trip_manifest_and_skips(offline_agent, tmp_path: Path) -> None:
    run, catalog = fs_agent(offline_agent, tmp_path)
    sent = fill(tmp_path / "out", NAMES)
    put = run("put", "**", "--run-id", "r", "--step", "s",
              "--compute-data-folder", str(tmp_path / "out"))
    assert put.code == 0, put.output
    assert (catalog / "p" / "r" / NAMES[1]).read_bytes() == sent[NAMES[1]]
    manifest = json.loads((catalog / "p/r/.catalog-agent/manifests/s.json").read_text())
    assert {f["name"]: f["data_hash"] for f in manifest["files"]} == {
        n: hashlib.sha256(d).hexdigest() for n, d in sent.items()}
    assert manifest["files"][0]["catalog_handler_location"] == f"{catalog.resolve()}/p"
    got = run("get", "**", "--run-id", "r", "--compute-data-folder", str(tmp_path / "in"))
    assert got.code == 0, got.output
    assert files_under(tmp_path / "in") == sent
    again = summary(run("put", "**", "--run-id", "r", "--step", "s",
                        "--compute-data-folder", str(tmp_path / "out")).stderr, "put")
    assert (again["files"], again["skipped"]) == (0, len(NAMES))
    regot = summary(run("get", "**", "--run-id", "r",
                        "--compute-data-folder", str(tmp_path / "in")).stderr, "get")
    assert (regot["files"], regot["skipped"]) == (0, len(NAMES))


def test_corrupted_catalog_file_is_refused(offline_agent, tmp_path: Path) -> None:
    run, catalog = fs_agent(offline_agent, tmp_path)
    fill(tmp_path / "out", ["a.txt"])
    assert run("put", "a.txt", "--run-id", "r", "--step", "s",
               "--compute-data-folder", str(tmp_path / "out")).code == 0
    (catalog / "p" / "r" / "a.txt").write_bytes(b"A.TXT\n")
    got = run("get", "a.txt", "--run-id", "r", "--compute-data-folder", str(tmp_path / "in"))
    assert got.code == 6 and "hash mismatch" in got.stderr
    assert not (tmp_path / "in" / "a.txt").exists()


def test_sync_and_no_match(offline_agent, tmp_path: Path) -> None:
    run, catalog = fs_agent(offline_agent, tmp_path)
    sent = fill(tmp_path / "out", ["x/y.bin"])
    assert run("put", "x", "--run-id", "r1", "--step", "s",
               "--compute-data-folder", str(tmp_path / "out")).code == 0
    assert run("sync", "--from-run", "r1", "--run-id", "r2").code == 0
    assert files_under(catalog / "p" / "r2") == {
        "x/y.bin": sent["x/y.bin"],
        ".catalog-agent/manifests/s.json": (catalog / "p/r2/.catalog-agent/manifests/s.json")
        .read_bytes()}
    missing = run("get", "nope", "--run-id", "r2", "--compute-data-folder", str(tmp_path / "in"))
    assert missing.code == 3
    assert any(e["level"] == "error" for e in events(missing.stderr))
