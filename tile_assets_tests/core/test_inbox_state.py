"""The sensor's scan state: kept in content-named files beside the catalog, the cursor only names one."""

from __future__ import annotations

import base64
import json
import os
import time
import zlib
from pathlib import Path

import pytest

from tile_assets.core.inbox import STATE_KEEP_S, InboxState, state_folder
from tile_assets.core.store import LocalStore


def _state(scenes: int, seen: int) -> InboxState:
    known = {f"scene_{i:06d}-{i:08x}": [f"{i:032x}", f"{i * 7:016x}"] for i in range(scenes)}
    return InboxState(after=f"/inbox/scene_{seen:06d}.tif", known=known, seen=list(known)[:seen])


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_the_cursor_stays_small_however_many_scenes_are_known(tmp_path: Path) -> None:
    """Dagster stores the cursor with every tick: 10,000 scenes took ~500 KB in it, now a file does."""
    store, folder = LocalStore(), str(tmp_path / "state")
    state = _state(10_000, 4_000)
    cursor = state.save(store, folder)
    assert len(cursor) < 200, cursor
    (file,) = (tmp_path / "state").iterdir()
    assert file.stat().st_size > 100_000  # the known versions went to the file
    assert InboxState.load(store, folder, cursor) == state


def test_an_unchanged_state_is_not_written_again(tmp_path: Path) -> None:
    store, folder = LocalStore(), str(tmp_path / "state")
    first = _state(3, 3).save(store, folder)
    mtime = next((tmp_path / "state").iterdir()).stat().st_mtime_ns
    again = _state(3, 3).save(store, folder, first)
    assert again == first
    assert next((tmp_path / "state").iterdir()).stat().st_mtime_ns == mtime


def test_old_files_go_but_the_cursor_s_own_and_recent_ones_stay(tmp_path: Path) -> None:
    """A tick whose result Dagster does not store leaves the cursor on the file before: it must survive."""
    store, folder = LocalStore(), str(tmp_path / "state")
    stored = _state(3, 1).save(store, folder)
    unstored = _state(3, 2).save(store, folder, stored)  # a "test sensor" evaluation, never stored
    assert len(_files(tmp_path / "state")) == 2
    old = time.time() - STATE_KEEP_S - 60
    for path in (tmp_path / "state").iterdir():
        os.utime(path, (old, old))
    newest = _state(3, 3).save(store, folder, stored)
    names = {json.loads(c)["state"] for c in (stored, newest)}
    assert set(_files(tmp_path / "state")) == names  # the unstored evaluation's old file is gone
    assert json.loads(unstored)["state"] not in names
    assert InboxState.load(store, folder, stored) == _state(3, 1)


def test_a_missing_state_file_asks_for_a_new_pass(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store, folder = LocalStore(), str(tmp_path / "state")
    cursor = _state(3, 3).save(store, folder)
    for path in (tmp_path / "state").iterdir():
        path.unlink()
    assert InboxState.load(store, folder, cursor) is None
    assert "sensor state unreadable" in caplog.text and json.loads(cursor)["state"] in caplog.text


def test_a_corrupt_state_file_asks_for_a_new_pass(tmp_path: Path) -> None:
    store, folder = LocalStore(), str(tmp_path / "state")
    cursor = _state(3, 3).save(store, folder)
    next((tmp_path / "state").iterdir()).write_bytes(b"not gzip")
    assert InboxState.load(store, folder, cursor) is None


def test_a_cursor_that_holds_the_state_itself_still_loads(tmp_path: Path) -> None:
    """Sensors running before the state moved to files have such a cursor."""
    state = _state(3, 2)
    raw = json.dumps({"after": state.after, "known": state.known, "seen": state.seen}).encode()
    cursor = base64.b64encode(zlib.compress(raw, 9)).decode()
    assert InboxState.load(LocalStore(), str(tmp_path / "state"), cursor) == state
    assert InboxState.load(LocalStore(), str(tmp_path / "state"), None) == InboxState()


def test_each_inbox_has_its_own_folder_under_the_catalog() -> None:
    first, second = state_folder("s3://b/catalog", "s3://b/inbox"), state_folder("s3://b/catalog", "s3://b/inbox2")
    assert first != second
    assert first.startswith("s3://b/catalog/_sensor/") and second.startswith("s3://b/catalog/_sensor/")
