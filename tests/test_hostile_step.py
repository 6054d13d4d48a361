"""The step shares the data folder with the agent and may run hostile code: it cannot make the
agent follow a link it planted, ship a file it swapped in, or write outside the folder.

Each race is played at a seam of the agent's own code (between scan and open, after the open,
before a rename), deterministically, in-process against SeaweedFS; the data folder behind a
planted link is played through the CLI inside a private mount namespace, as in a pod where the
folder lives on a mounted volume.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from catalog_agent import commands, local, transfer
from catalog_agent.errors import FileChanged, IntegrityError
from tests.conftest import Ran, log_events
from tests.test_put_integrity import keys, load  # noqa: F401 - the keys fixture

SECRET = b"AWS_SECRET_ACCESS_KEY=the-pods-own-secret\n"


def stored(s3, bucket: str) -> dict[str, bytes]:  # noqa: ANN001
    return {item["Key"]: s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
            for item in s3.list_objects_v2(Bucket=bucket).get("Contents", [])}


def assert_secret_nowhere(s3, bucket: str) -> None:  # noqa: ANN001
    for key, data in stored(s3, bucket).items():
        assert SECRET not in data, key


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    """A file outside the data folder that the step would like to see in the bucket."""
    path = tmp_path / "outside" / "environ"
    path.parent.mkdir()
    path.write_bytes(SECRET)
    return path


def data_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "data"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text("a")
    (folder / "sub" / "b.txt").write_text("b")
    return folder


def run_put(cfg: Any) -> dict[str, Any]:
    return commands.put(cfg, ("**",), record=None, cancel=threading.Event())


# --- put: a file or folder swapped between the scan and the read ---

@pytest.mark.parametrize("swap", ["symlink", "fifo", "folder-symlink"])
def test_put_refuses_what_was_swapped_in_after_the_scan(
        s3_server, bucket: str, s3, tmp_path: Path, secret: Path,  # noqa: ANN001
        monkeypatch: pytest.MonkeyPatch, keys: None, swap: str) -> None:  # noqa: F811
    folder = data_folder(tmp_path)
    real_open = transfer.Folder.open_file

    def swapped_then_opened(self, entry):  # noqa: ANN001, ANN202
        if entry.relative == "sub/b.txt" and not (folder / "sub.orig").exists():
            if swap == "symlink":
                (folder / "sub" / "b.txt").unlink()
                (folder / "sub" / "b.txt").symlink_to(secret)
            elif swap == "fifo":
                (folder / "sub" / "b.txt").unlink()
                os.mkfifo(folder / "sub" / "b.txt")
            else:
                (folder / "sub").rename(folder / "sub.orig")
                shutil.copy(secret, secret.parent / "b.txt")
                (folder / "sub").symlink_to(secret.parent)
        return real_open(self, entry)

    monkeypatch.setattr(transfer.Folder, "open_file", swapped_then_opened)
    cfg = load(s3_server, bucket, folder, CATALOG_AGENT_CONCURRENCY="1")
    done: list[BaseException] = []

    def put_it() -> None:
        try:
            run_put(cfg)
        except BaseException as exc:  # noqa: BLE001 - checked below
            done.append(exc)

    worker = threading.Thread(target=put_it, daemon=True)
    worker.start()
    worker.join(60)
    assert not worker.is_alive(), "the put blocked"
    assert isinstance(done[0], FileChanged), done
    assert "sub/b.txt changed after the scan" in str(done[0])
    assert_secret_nowhere(s3, bucket)
    assert not any(k.endswith("manifests/s.json") for k in stored(s3, bucket))


def test_put_never_reads_a_file_swapped_after_it_was_opened(
        s3_server, bucket: str, s3, tmp_path: Path, secret: Path,  # noqa: ANN001
        monkeypatch: pytest.MonkeyPatch, keys: None) -> None:  # noqa: F811
    """The name is not opened again: the descriptor still reads the file the scan saw, and the
    swap (an unlink) shows as a change, so the put fails without shipping the secret."""
    from catalog_agent.stores.s3 import S3Store

    folder = data_folder(tmp_path)
    original = S3Store.upload_async

    async def swapped_then_uploaded(self, opened, digest, key, **kwargs):  # noqa: ANN001, ANN202
        if opened.relative == "a.txt":
            (folder / "a.txt").unlink()
            (folder / "a.txt").symlink_to(secret)
        return await original(self, opened, digest, key, **kwargs)

    monkeypatch.setattr(S3Store, "upload_async", swapped_then_uploaded)
    cfg = load(s3_server, bucket, folder, CATALOG_AGENT_CONCURRENCY="1")
    with pytest.raises(FileChanged, match="a.txt changed while it was being put"):
        run_put(cfg)
    assert_secret_nowhere(s3, bucket)
    assert stored(s3, bucket).get("r/a.txt", b"a") == b"a"


def test_a_folder_swapped_for_a_symlink_during_the_scan_is_refused(
        tmp_path: Path, secret: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = data_folder(tmp_path)
    real_list = local.Folder._list

    def listed_then_swapped(self, prefix, dir_fd):  # noqa: ANN001, ANN202
        folders = yield from real_list(self, prefix, dir_fd)
        if prefix == "":
            (folder / "sub").rename(folder / "sub.orig")
            (folder / "sub").symlink_to(secret.parent)
        return folders

    monkeypatch.setattr(local.Folder, "_list", listed_then_swapped)
    with local.open_folder(folder, create=False) as opened:
        with pytest.raises(FileChanged, match="sub changed while the data folder was scanned"):
            opened.scan()


# --- get: the folder changed under a file being written ---

def test_get_writes_nothing_outside_when_a_folder_is_swapped_before_the_rename(
        agent, s3_server, bucket: str, tmp_path: Path, secret: Path,  # noqa: ANN001
        monkeypatch: pytest.MonkeyPatch, keys: None) -> None:  # noqa: F811
    out = data_folder(tmp_path)
    assert agent("put", "**", "--run-id", "r", "--step", "s", "--compute-data-folder",
                 str(out)).code == 0
    into = tmp_path / "in"
    real_commit = local.Incoming.commit

    def swapped_then_committed(self, executable):  # noqa: ANN001, ANN202
        if self.relative == "sub/b.txt":
            (into / "sub").rename(into / "moved")
            (into / "sub").symlink_to(secret.parent)
        return real_commit(self, executable)

    monkeypatch.setattr(local.Incoming, "commit", swapped_then_committed)
    cfg = load(s3_server, bucket, into, CATALOG_AGENT_CONCURRENCY="1")
    commands.get(cfg, ("**",), record=None, cancel=threading.Event())
    assert sorted(p.name for p in secret.parent.iterdir()) == ["environ"]  # nothing written
    assert (into / "moved" / "b.txt").read_text() == "b"  # landed in the folder it opened


def test_get_refuses_a_folder_on_the_way_that_became_a_symlink(
        s3_server, bucket: str, tmp_path: Path, secret: Path, agent,  # noqa: ANN001
        monkeypatch: pytest.MonkeyPatch, keys: None) -> None:  # noqa: F811
    out = data_folder(tmp_path)
    assert agent("put", "**", "--run-id", "r", "--step", "s", "--compute-data-folder",
                 str(out)).code == 0
    into = tmp_path / "in"
    real_create = local.Folder.create

    def planted_then_created(self, relative):  # noqa: ANN001, ANN202
        if relative == "sub/b.txt" and not (into / "sub").exists():
            (into / "sub").symlink_to(secret.parent)
        return real_create(self, relative)

    monkeypatch.setattr(local.Folder, "create", planted_then_created)
    cfg = load(s3_server, bucket, into, CATALOG_AGENT_CONCURRENCY="1")
    with pytest.raises(IntegrityError, match="sub is a symlink"):
        commands.get(cfg, ("**",), record=None, cancel=threading.Event())
    assert sorted(p.name for p in secret.parent.iterdir()) == ["environ"]


# --- the data folder itself behind a planted link (CLI, private mount namespace) ---

def in_volume(agent, volume: Path, setup: str, *args: str) -> Ran:  # noqa: ANN001
    """Run the CLI with ``volume`` a freshly mounted tmpfs (as an emptyDir is in a pod), after
    ``setup`` (sh) ran in it; the mount exists only in this namespace."""
    if not shutil.which("unshare"):
        pytest.skip("unshare (util-linux) is not installed")
    volume.mkdir()
    script = f'mount -t tmpfs tmpfs "$1" && cd "$1" && {setup} && shift && exec "$@"'
    command = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh",
               str(volume), sys.executable, "-m", "catalog_agent", *args]
    done = subprocess.run(command, cwd=agent.cwd, env=agent.env, capture_output=True,
                          text=True, timeout=120)
    if "mount:" in done.stderr and done.returncode != 0 and not done.stdout:
        pytest.skip(f"cannot mount a tmpfs in a private namespace here: {done.stderr[:200]}")
    return Ran(done.returncode, done.stdout, done.stderr)


def test_a_data_folder_that_is_a_symlink_inside_its_volume_is_refused(
        agent, s3, bucket: str, tmp_path: Path) -> None:  # noqa: ANN001
    """The README promised a step cannot ship other files through a planted link: with the
    data folder itself a symlink, put '**' --strict-links shipped the link's target."""
    volume = tmp_path / "volume"
    setup = ("mkdir elsewhere && echo secret > elsewhere/token && ln -s elsewhere data && "
             "mkdir real && echo ok > real/ok.txt")
    ran = in_volume(agent, volume, setup, "put", "**", "--strict-links", "--run-id", "r",
                    "--step", "s", "--compute-data-folder", str(volume / "data"))
    assert ran.code == 6, ran.output[-2000:]
    (error,) = [e for e in log_events(ran.stderr) if e["level"] == "error"]
    assert f"{volume}/data is a symlink inside the volume mounted at {volume}" in error["event"]
    assert "Contents" not in s3.list_objects_v2(Bucket=bucket)
    ran = in_volume(agent, tmp_path / "volume2", "mkdir real && ln -s real data",
                    "get", "**", "--allow-missing", "--run-id", "r",
                    "--compute-data-folder", str(tmp_path / "volume2" / "data"))
    assert ran.code == 6, ran.output[-2000:]
    assert "is a symlink inside the volume" in ran.stderr


def test_a_real_data_folder_in_a_volume_works(agent, s3, bucket: str, tmp_path: Path
                                             ) -> None:  # noqa: ANN001
    volume = tmp_path / "volume"
    ran = in_volume(agent, volume, "mkdir -p data/sub && echo ok > data/sub/ok.txt",
                    "put", "**", "--run-id", "r", "--step", "s", "--compute-data-folder",
                    str(volume / "data"))
    assert ran.code == 0, ran.output[-2000:]
    assert s3.get_object(Bucket=bucket, Key="r/sub/ok.txt")["Body"].read() == b"ok\n"


def test_a_data_folder_that_cannot_be_created_is_exit_5_naming_it(
        agent, s3, bucket: str, tmp_path: Path) -> None:  # noqa: ANN001
    """A volume the agent may not write (read-only here; on a cluster, often a volume's root
    owned by another uid): get and a put into a file-system catalog there name the folder
    they could not create, exit 5. Both were an internal error (exit 1)."""
    s3.put_object(Bucket=bucket, Key="r/a.txt", Body=b"a\n")
    volume = tmp_path / "volume"
    ran = in_volume(agent, volume, 'mount -o remount,ro "$1"',
                    "get", "**", "--run-id", "r", "--compute-data-folder",
                    str(volume / "step" / "data"))
    assert ran.code == 5, ran.output[-2000:]
    (error,) = [e for e in log_events(ran.stderr) if e["level"] == "error"]
    assert error["event"] == (f"cannot create data folder {volume}/step/data: "
                              f"{volume}/step: Read-only file system"), error
    out = tmp_path / "out"
    out.mkdir()
    (out / "b.txt").write_text("b\n")
    ran = in_volume(agent, tmp_path / "volume2", 'mount -o remount,ro "$1"',
                    "put", "**", "--run-id", "r", "--step", "s", "--compute-data-folder",
                    str(out), "--type", "file-system", "--catalog-location",
                    str(tmp_path / "volume2" / "catalog"))
    assert ran.code == 5, ran.output[-2000:]
    assert f"cannot create catalog folder {tmp_path}/volume2/catalog" in ran.stderr, ran.stderr


def test_a_record_folder_behind_a_planted_link_is_refused(agent, s3, bucket: str,
                                                          tmp_path: Path) -> None:  # noqa: ANN001
    """--record into the shared volume: a folder link the step planted there must not carry the
    agent's write elsewhere (here to a folder outside the volume)."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    volume = tmp_path / "volume"
    ran = in_volume(agent, volume, f"mkdir -p data && echo ok > data/ok.txt && "
                                   f"ln -s {elsewhere} records",
                    "put", "**", "--run-id", "r", "--step", "s", "--compute-data-folder",
                    str(volume / "data"), "--record", str(volume / "records" / "put.json"))
    assert ran.code == 6, ran.output[-2000:]
    assert f"refusing record folder {volume}/records: {volume}/records is a symlink" in ran.stderr
    assert list(elsewhere.iterdir()) == []


def test_a_symlink_in_the_root_file_system_on_the_way_is_followed(
        agent, s3, bucket: str, tmp_path: Path) -> None:  # noqa: ANN001
    """Links in the image (e.g. /var/run -> /run) are the image's, not the step's."""
    real = tmp_path / "real"
    real.mkdir()
    (real / "x.txt").write_text("x")
    (tmp_path / "link").symlink_to(real)
    assert local._volume_of(os.path.realpath(tmp_path), local._mount_points()) is None
    ran = agent("put", "**", "--run-id", "r", "--step", "s", "--compute-data-folder",
                str(tmp_path / "link"))
    assert ran.code == 0, ran.output[-2000:]


def test_a_planted_link_behind_an_image_link_is_refused(agent, s3, bucket: str,  # noqa: ANN001
                                                       tmp_path: Path, secret: Path) -> None:
    """The image has /data -> /mnt/shared/data and /mnt/shared is a volume the step shares: the
    step replaces /mnt/shared/data with a link to a secret folder. The kernel, resolving the
    image link's whole target, followed the planted link too and put shipped the secret."""
    volume = tmp_path / "volume"
    image_link = tmp_path / "data"
    image_link.symlink_to(volume / "data")
    ran = in_volume(agent, volume, f'ln -s "{secret.parent}" data', "put", "**", "--run-id",
                    "r", "--step", "s", "--compute-data-folder", str(image_link))
    assert ran.code == 6, ran.output[-2000:]
    (error,) = [e for e in log_events(ran.stderr) if e["level"] == "error"]
    assert f"refusing data folder {image_link}: {volume}/data is a symlink inside the volume " \
           f"mounted at {volume}" in error["event"]
    assert "Contents" not in s3.list_objects_v2(Bucket=bucket)
    (tmp_path / "data2").symlink_to(tmp_path / "volume2" / "data")
    ran = in_volume(agent, tmp_path / "volume2", f'ln -s "{secret.parent}" data', "get", "**",
                    "--allow-missing", "--run-id", "r", "--compute-data-folder",
                    str(tmp_path / "data2"))
    assert ran.code == 6, ran.output[-2000:]
    assert f"{tmp_path}/volume2/data is a symlink inside the volume" in ran.stderr
    assert sorted(p.name for p in secret.parent.iterdir()) == ["environ"]


def test_image_links_to_a_real_folder_in_a_volume_are_walked(agent, s3, bucket: str,  # noqa: ANN001
                                                             tmp_path: Path) -> None:
    """Absolute, relative and chained image links, '..' included, each name checked."""
    volume = tmp_path / "volume"
    (tmp_path / "links").mkdir()
    (tmp_path / "links" / "data").symlink_to("../volume/real")  # relative, with '..'
    (tmp_path / "chained").symlink_to("links/data")  # a link to a link
    (tmp_path / "absolute").symlink_to(volume / "real" / "sub" / ".." / "sub")
    setup = "mkdir -p real/sub && echo ok > real/sub/ok.txt"
    for run, folder, key in (("r1", "chained", "r1/sub/ok.txt"),
                             ("r2", "absolute", "r2/ok.txt")):
        ran = in_volume(agent, volume, setup, "put", "**", "--run-id", run, "--step", "s",
                        "--compute-data-folder", str(tmp_path / folder))
        assert ran.code == 0, ran.output[-2000:]
        assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == b"ok\n"
        shutil.rmtree(volume)


def test_a_loop_of_image_links_is_refused_after_40_hops(tmp_path: Path) -> None:
    (tmp_path / "a").symlink_to("b")
    (tmp_path / "b").symlink_to("a")
    with pytest.raises(IntegrityError, match="more than 40 symlinks on the way to it"):
        local.open_folder(tmp_path / "a", create=False)
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "x.txt").write_text("x")
    previous = "real"
    for hop in range(40):  # 40 links in a chain: as many as the kernel follows
        (tmp_path / f"l{hop}").symlink_to(previous)
        previous = f"l{hop}"
    with local.open_folder(tmp_path / previous, create=False) as opened:
        assert [e.relative for e in opened.scan()] == ["x.txt"]
    (tmp_path / "l40").symlink_to(previous)
    with pytest.raises(IntegrityError, match="more than 40 symlinks"):
        local.open_folder(tmp_path / "l40", create=False)


# --- every name put accepts, get can write ---

NAMES = {
    "one-byte": "a" * 255,
    "two-byte": "é" * 127,  # 254 bytes
    "four-byte": "😀" * 63,  # 252 bytes
    "mixed": "é" * 120 + "a" * 15,  # 255 bytes
}


def nested(root_fd: int, parts: list[str], data: bytes) -> None:
    """Create root/parts... through descriptors: the whole path may exceed PATH_MAX."""
    fd = os.dup(root_fd)
    try:
        for part in parts[:-1]:
            try:
                os.mkdir(part, dir_fd=fd)
            except FileExistsError:
                pass
            child = os.open(part, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = child
        out = os.open(parts[-1], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644, dir_fd=fd)
        os.write(out, data)
        os.close(out)
    finally:
        os.close(fd)


def read_nested(root: Path, parts: list[str]) -> bytes:
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for part in parts[:-1]:
            child = os.open(part, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = child
        handle = os.open(parts[-1], os.O_RDONLY, dir_fd=fd)
        try:
            return os.read(handle, 1 << 20)
        finally:
            os.close(handle)
    finally:
        os.close(fd)


@pytest.mark.parametrize("catalog", ["s3", "file-system"])
def test_names_of_255_bytes_round_trip(agent, tmp_path: Path, catalog: str) -> None:
    out = tmp_path / "out"
    out.mkdir()
    for label, name in NAMES.items():
        assert len(name.encode()) in (252, 254, 255)
        (out / label).mkdir()
        (out / label / name).write_text(label)
    env = {} if catalog == "s3" else {"CATALOG_AGENT_TYPE": "file-system",
                                      "CATALOG_AGENT_CATALOG_LOCATION": str(tmp_path / "cat")}
    ran = agent("put", "**", "--run-id", "n", "--step", "s", "--compute-data-folder",
                str(out), env=env)
    assert ran.code == 0, ran.output[-2000:]
    ran = agent("get", "**", "--run-id", "n", "--compute-data-folder", str(tmp_path / "in"),
                env=env)
    assert ran.code == 0, ran.output[-2000:]
    for label, name in NAMES.items():
        assert (tmp_path / "in" / label / name).read_text() == label
    assert not [p for p in (tmp_path / "in").rglob("*") if p.name.endswith(local.PART_SUFFIX)]


@pytest.mark.parametrize("catalog", ["s3", "file-system"])
def test_paths_near_the_limits_round_trip_or_are_refused_by_name(agent, s3, bucket: str,  # noqa: ANN001
                                                                 tmp_path: Path, catalog: str
                                                                 ) -> None:
    """A path of about 1,000 bytes (S3 keys hold 1,024) round-trips through both catalogs; one
    near PATH_MAX (4,096) round-trips through a folder catalog, and S3 put refuses it by name
    before sending anything (skipped with a warning and exit 0, the catalog silently lacked
    it)."""
    out = tmp_path / "out"
    out.mkdir()
    near_s3 = ["é" * 100] * 4 + ["f.txt"]  # 4 x 201 + 5 = 809 bytes, plus the run's prefix
    near_path_max = ["d" * 250] * 16 + ["g.txt"]  # 16 x 251 + 5 = 4,021 bytes
    root = os.open(out, os.O_RDONLY | os.O_DIRECTORY)
    try:
        nested(root, near_s3, b"near the key limit")
        nested(root, near_path_max, b"near PATH_MAX")
    finally:
        os.close(root)
    env = {} if catalog == "s3" else {"CATALOG_AGENT_TYPE": "file-system",
                                      "CATALOG_AGENT_CATALOG_LOCATION": str(tmp_path / "cat")}
    ran = agent("put", "**", "--run-id", "n", "--step", "s", "--compute-data-folder",
                str(out), env=env)
    if catalog == "s3":
        assert ran.code == 6, ran.output[-2000:]
        (error,) = [e for e in log_events(ran.stderr) if e["level"] == "error"]
        assert error["event"].startswith(f"refusing to put '{'/'.join(near_path_max)}': its key "
                                         f"would be 4023 bytes, more than the 1024 bytes")
        assert "nothing was sent" in error["event"]
        assert "Contents" not in s3.list_objects_v2(Bucket=bucket)
        shutil.rmtree(out / near_path_max[0])  # put again without it: the rest round-trips
        ran = agent("put", "**", "--run-id", "n", "--step", "s", "--compute-data-folder",
                    str(out), env=env)
    assert ran.code == 0, ran.output[-2000:]
    assert not [e for e in log_events(ran.stderr) if e["event"] == "skipped"]
    ran = agent("get", "**", "--run-id", "n", "--compute-data-folder", str(tmp_path / "in"),
                env=env)
    assert ran.code == 0, ran.output[-2000:]
    assert read_nested(tmp_path / "in", near_s3) == b"near the key limit"
    if catalog == "file-system":
        assert read_nested(tmp_path / "in", near_path_max) == b"near PATH_MAX"


# --- strict_verify ---

def test_strict_verify_refuses_an_object_no_one_recorded(agent, s3, bucket: str,
                                                         tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "recorded.txt").write_text("recorded")
    assert agent("put", "**", "--run-id", "v", "--step", "s", "--compute-data-folder",
                 str(out)).code == 0
    s3.put_object(Bucket=bucket, Key="v/planted.txt", Body=b"written by someone else")
    s3.put_object(Bucket=bucket, Key="v/sub/also.txt", Body=b"and this")
    into = tmp_path / "in"
    ran = agent("get", "**", "--run-id", "v", "--strict-verify", "--compute-data-folder",
                str(into))
    assert ran.code == 6, ran.output[-2000:]
    assert "'v/planted.txt'" in ran.stderr and "strict_verify" in ran.stderr
    assert "(and 1 more)" in ran.stderr
    assert not into.exists() or list(into.rglob("*")) == []
    dry = agent("get", "**", "--run-id", "v", "--strict-verify", "--dry-run",
                "--compute-data-folder", str(into))  # shows every object it would refuse
    assert dry.code == 6, dry.output[-2000:]
    refused = {e["path"]: e["reason"] for e in log_events(dry.stderr)
               if e.get("action") == "refuse"}
    assert sorted(refused) == ["v/planted.txt", "v/sub/also.txt"], dry.stderr
    assert all("strict_verify" in reason for reason in refused.values())
    assert not into.exists() or list(into.rglob("*")) == []
    ran = agent("get", "**", "--run-id", "v", "--compute-data-folder", str(into))
    assert ran.code == 0
    assert sorted(e["path"] for e in log_events(ran.stderr) if e["event"] == "unverified") == [
        "planted.txt", "sub/also.txt"]
