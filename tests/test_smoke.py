"""The shortest round trip through the real CLI and a real S3 server."""

from pathlib import Path


def test_put_then_get_round_trips_bytes(agent, tmp_path: Path) -> None:
    out = tmp_path / "out"
    (out / "sub").mkdir(parents=True)
    (out / "sub" / "a.txt").write_bytes(b"hello\n")
    put = agent("put", "sub", "--run-id", "r1", "--step", "s1",
                "--compute-data-folder", str(out))
    assert put.code == 0, put.output
    got = agent("get", "**", "--run-id", "r1", "--compute-data-folder", str(tmp_path / "in"))
    assert got.code == 0, got.output
    assert (tmp_path / "in" / "sub" / "a.txt").read_bytes() == b"hello\n"
