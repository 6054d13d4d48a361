"""Files the agent writes beside the step, outside the data folder's descriptors: the --record
file and the installed entrypoint wrapper. A link or file the step plants at a name the agent
is about to use must not take the write or the chmod."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from catalog_agent import lifecycle, local
from catalog_agent.errors import TransferError
from catalog_agent.manifest import entry
from catalog_agent.record import write_record

VICTIM = b"the step's target: must stay as it is\n"


def victim(tmp_path: Path) -> Path:
    path = tmp_path / "elsewhere" / "victim"
    path.parent.mkdir()
    path.write_bytes(VICTIM)
    path.chmod(0o600)
    return path


def entries() -> list:
    return [entry("a.txt", "1" * 64, 3, run_id="r", location="s3://b", stage="put",
                  executable=False)]


def test_the_record_never_writes_through_a_link_at_a_temporary_name(tmp_path: Path) -> None:
    """It wrote <path>.catalog-agent.part, following a link planted there."""
    target = victim(tmp_path)
    folder = tmp_path / "shared"
    folder.mkdir()
    record = folder / "put.json"
    (folder / "put.json.catalog-agent.part").symlink_to(target)  # the old, predictable name
    write_record(str(record), entries(), command="put", run_id="r", step="s")
    assert target.read_bytes() == VICTIM
    written = json.loads(record.read_bytes())
    assert written["run_id"] == "r" and [f["name"] for f in written["files"]] == ["a.txt"]
    assert not record.is_symlink()
    assert sorted(p.name for p in folder.iterdir()) == ["put.json", "put.json.catalog-agent.part"]


def test_a_record_that_fails_half_way_leaves_nothing(tmp_path: Path) -> None:
    def broken():  # noqa: ANN202
        yield from entries()
        raise RuntimeError("stopped half way")

    with pytest.raises(RuntimeError):
        write_record(str(tmp_path / "get.json"), broken(), command="get", run_id="r", step="")
    assert list(tmp_path.iterdir()) == []


def test_a_record_in_a_missing_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(TransferError, match="cannot write the record .*its folder does not exist"):
        write_record(str(tmp_path / "nowhere" / "put.json"), entries(), command="put",
                     run_id="r", step="s")
    assert list(tmp_path.iterdir()) == []


def test_install_entrypoint_sets_the_mode_of_the_file_it_wrote(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """It chmodded the temporary file by name: swapped for a link meanwhile, the link's target
    became 0755. Played at the seam: the swap happens while the wrapper is being written."""
    target = victim(tmp_path)
    folder = tmp_path / "status"
    folder.mkdir()
    real = lifecycle.packaged_entrypoint

    def swapped_while_written() -> bytes:
        (temporary,) = [p for p in folder.iterdir() if p.name != "entrypoint"]
        temporary.rename(tmp_path / "moved")
        temporary.symlink_to(target)
        return real()

    monkeypatch.setattr(lifecycle, "packaged_entrypoint", swapped_while_written)
    lifecycle.install_entrypoint(str(folder))
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert target.read_bytes() == VICTIM
    written = tmp_path / "moved"
    assert written.read_bytes() == real() and stat.S_IMODE(written.stat().st_mode) == 0o755


def test_install_entrypoint_makes_an_executable_wrapper_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        installed = lifecycle.install_entrypoint(str(tmp_path / "status"))
    finally:
        os.umask(old)
    assert stat.S_IMODE(installed.stat().st_mode) == 0o755
    assert installed.read_bytes() == lifecycle.packaged_entrypoint()
    assert [p.name for p in installed.parent.iterdir()] == ["entrypoint"]
    assert not [p for p in installed.parent.iterdir() if p.name.endswith(local.PART_SUFFIX)]
