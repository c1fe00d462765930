"""LocalStore on a real filesystem: listing order and resume, atomic writes, fingerprints."""

from __future__ import annotations

import hashlib
import os
import resource
import shutil
import signal
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tile_assets.core.errors import StoreError
from tile_assets.core.store import LocalStore, is_image_name

NOBODY = 65534


@pytest.fixture
def store() -> LocalStore:
    return LocalStore()


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_list_is_sorted_recursive_and_resumes(tmp_path: Path, store: LocalStore) -> None:
    names = ["b.tif", "a b.tif", "ünïcødé.tif", "x,y.tif", "deep/nested/c.tif", "deep-er.tif"]
    for i, name in enumerate(names):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"z" * i)

    listed = list(store.list(str(tmp_path)))

    assert [o.uri for o in listed] == sorted(str(tmp_path / n) for n in names)
    assert {o.uri: o.size for o in listed} == {str(tmp_path / n): i for i, n in enumerate(names)}
    uris = [o.uri for o in listed]
    for i, uri in enumerate(uris):
        assert [o.uri for o in store.list(str(tmp_path), start_after=uri)] == uris[i + 1 :]
    # A file:// cursor resumes at the same place as the plain path.
    via_uri = store.list(f"file://{tmp_path}", start_after=f"file://{uris[2]}")
    assert [o.uri for o in via_uri] == uris[3:]


def test_list_missing_folder_is_a_store_error(tmp_path: Path, store: LocalStore) -> None:
    with pytest.raises(StoreError, match="folder does not exist"):
        list(store.list(str(tmp_path / "missing")))


def test_write_is_atomic_and_leaves_no_temp_file(tmp_path: Path, store: LocalStore) -> None:
    target = tmp_path / "out" / "catalog.json"
    store.write_bytes(str(target), b"one")
    store.write_bytes(f"file://{target}", b"two")

    assert store.read_bytes(str(target)) == b"two"
    with store.open_read(str(target)) as opened:
        opened.seek(1)
        assert opened.read() == b"wo"
    assert leftovers(target.parent) == []
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    info = store.head(str(target))
    assert info.size == 3 and store.exists(str(target))

    store.delete(str(target))
    assert not store.exists(str(target))
    store.delete(str(target))
    for call in (store.read_bytes, store.open_read, store.head):
        with pytest.raises(StoreError, match="no such file"):
            call(str(target))


@pytest.fixture
def readonly_dir() -> Iterator[Path]:
    """A folder holding old.json that only root may write; reachable by every user."""
    base = Path(tempfile.mkdtemp(prefix="tile-assets-ro-"))
    base.chmod(0o755)
    folder = base / "ro"
    folder.mkdir()
    (folder / "old.json").write_bytes(b"old content")
    (folder / "old.json").chmod(0o644)
    folder.chmod(0o555)
    yield folder
    folder.chmod(0o755)
    shutil.rmtree(base)


def write_as_nobody(target: Path, data: bytes) -> str:
    """Run LocalStore.write_bytes in a forked child as uid `nobody`; return what it raised."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never returns into pytest
        outcome = "no error"
        try:
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            LocalStore().write_bytes(str(target), data)
        except StoreError as exc:
            outcome = f"{type(exc).__name__}: {exc.reason.split(':')[0]}"
        except BaseException as exc:  # noqa: BLE001 - the child must report, never raise
            outcome = f"unexpected {type(exc).__name__}: {exc}"
        finally:
            os.write(write_end, outcome.encode())
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as fh:
        outcome = fh.read().decode()
    os.waitpid(pid, 0)
    return outcome


def test_failed_write_to_readonly_folder_keeps_old_content(readonly_dir: Path) -> None:
    target = readonly_dir / "old.json"
    if os.geteuid() == 0:
        # root ignores folder permissions: the write runs in a child that became `nobody`.
        assert write_as_nobody(target, b"new content") == "StoreError: write failed"
    else:
        with pytest.raises(StoreError, match="write failed"):
            LocalStore().write_bytes(str(target), b"new content")

    assert target.read_bytes() == b"old content"
    assert leftovers(readonly_dir) == []


def test_write_failing_midway_removes_temp_and_keeps_old_content(
    tmp_path: Path, store: LocalStore
) -> None:
    target = tmp_path / "scene.json"
    store.write_bytes(str(target), b"old content")
    # A file-size limit makes the kernel fail the write halfway (EFBIG), even for root.
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, hard))
    try:
        with pytest.raises(StoreError, match="write failed"):
            store.write_bytes(str(target), b"n" * 100_000)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)

    assert target.read_bytes() == b"old content"
    assert leftovers(tmp_path) == []


def test_fingerprint_is_sha256_of_content(tmp_path: Path, store: LocalStore) -> None:
    path = tmp_path / "a.tif"
    path.write_bytes(b"first")
    first = store.fingerprint(str(path))
    assert first == "sha256:" + hashlib.sha256(b"first").hexdigest()

    path.write_bytes(b"second")
    assert store.fingerprint(f"file://{path}") == "sha256:" + hashlib.sha256(b"second").hexdigest()
    assert store.fingerprint(str(path)) != first
    with pytest.raises(StoreError):
        store.fingerprint(str(tmp_path / "missing.tif"))


def test_raster_path_and_env_are_plain(tmp_path: Path, store: LocalStore) -> None:
    assert store.raster_path(f"file://{tmp_path}/a b.tif") == f"{tmp_path}/a b.tif"
    with store.raster_env():
        pass


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("scene.tif", True),
        ("s3://b/x/SCENE.TIFF", True),
        ("photo.JPG", True),
        ("a.jpeg", True),
        ("a.png", True),
        ("a.jp2", True),
        ("mosaic.vrt", True),
        ("notes.txt", False),
        ("archive.tif.zip", False),
        (".scene.tif.abc123.tmp", False),
        ("tif", False),
        ("folder/", False),
    ],
)
def test_is_image_name(name: str, expected: bool) -> None:
    assert is_image_name(name) is expected
