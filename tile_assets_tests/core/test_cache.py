"""The tile cache writes a file per chunk of tiles, reads a batch's own folder, and batches share few blocks."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from tile_assets.core.batches import plan_batches, plan_scene_batches
from tile_assets.core.cache import TileCache
from tile_assets.core.grid import plan_grid
from tile_assets.core.store import LocalStore
from tile_assets.core.types import Finding, GridSpec, SceneInfo, TileResult, TileWindow

FINGERPRINT = "sha256:feed"
WINDOWS = plan_grid(1000, 1000, GridSpec(256, 0.25))


def ok(window: TileWindow) -> TileResult:
    finding = Finding("mark", 0.5, (window.col_off, window.row_off, window.col_off + 1.0, window.row_off + 1.0))
    return TileResult(window.tile_id, "ok", findings=(finding,), cover={"valid": 1.0}, valid_pixels=7)


def cache(tmp_path: Path, run_group: str = "run-1", model_key: str = "m-1-abc", fingerprint: str = FINGERPRINT) -> TileCache:
    return TileCache(LocalStore(), str(tmp_path / "catalog"), model_key, fingerprint, run_group)


def test_a_chunk_is_one_file_and_failures_are_never_kept(tmp_path: Path) -> None:
    writer = cache(tmp_path)
    failed = TileResult(WINDOWS[2].tile_id, "failed", error_type="ModelError", error_message="boom")
    with writer.writer() as put_chunk:
        put_chunk([(WINDOWS[0], ok(WINDOWS[0])), (WINDOWS[1], ok(WINDOWS[1])), (WINDOWS[2], failed)])
        put_chunk([(WINDOWS[3], ok(WINDOWS[3]))])
    files = sorted((tmp_path / "catalog" / "cache").rglob("*.parquet"))
    assert len(files) == 2

    reader = cache(tmp_path)
    assert [reader.has(w) for w in WINDOWS[:5]] == [True, True, False, True, False]
    hit = reader.get(WINDOWS[1])
    assert hit is not None and hit.findings == ok(WINDOWS[1]).findings and hit.valid_pixels == 7
    assert not hit.from_cache  # written by this run group: its own work
    other_run = cache(tmp_path, run_group="run-2").get(WINDOWS[1])
    assert other_run is not None and other_run.from_cache


def test_another_source_version_or_model_misses(tmp_path: Path) -> None:
    with cache(tmp_path).writer() as put_chunk:
        put_chunk([(WINDOWS[0], ok(WINDOWS[0]))])
    assert cache(tmp_path).has(WINDOWS[0])
    assert not cache(tmp_path, fingerprint="sha256:beef").has(WINDOWS[0])
    assert not cache(tmp_path, model_key="m-2-abc").has(WINDOWS[0])


def test_a_batch_reads_only_its_own_folder_and_the_scene_view_reads_all(tmp_path: Path) -> None:
    first, second = WINDOWS[:4], WINDOWS[4:8]
    with cache(tmp_path).for_batch(first).writer() as put_chunk:
        put_chunk([(w, ok(w)) for w in first])
    assert all(cache(tmp_path).for_batch(first).has(w) for w in first)  # a retry of the batch finds its tiles
    assert not any(cache(tmp_path).for_batch(second).has(w) for w in first)
    with cache(tmp_path).for_batch(second).writer() as put_chunk:
        put_chunk([(w, ok(w)) for w in second])
    scene = cache(tmp_path)
    assert all(scene.has(w) for w in first + second)


def test_an_unreadable_chunk_is_ignored_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with cache(tmp_path).writer() as put_chunk:
        put_chunk([(WINDOWS[0], ok(WINDOWS[0]))])
    broken = Path(cache(tmp_path).prefix) / "broken.parquet"
    broken.write_text("not parquet")
    with caplog.at_level(logging.WARNING):
        assert cache(tmp_path).has(WINDOWS[0])
    assert str(broken) in caplog.text


def blocks(windows: tuple[TileWindow, ...], block: int) -> set[tuple[int, int]]:
    """The (row, col) positions of the source blocks a batch decodes."""
    return {
        (r, c)
        for w in windows
        for r in range(w.row_off // block, (w.row_off + w.height - 1) // block + 1)
        for c in range(w.col_off // block, (w.col_off + w.width - 1) // block + 1)
    }


def test_batches_cut_along_the_read_order_decode_fewer_blocks_twice() -> None:
    """20,000 px wide, 512 px blocks and tiles at 20 % overlap: 2,401 tiles in 10 batches."""
    scene = SceneInfo(
        uri="s.tif", partition_key="s", fingerprint=FINGERPRINT, driver="GTiff", width=20_000, height=20_000,
        count=4, dtype="uint8", size_bytes=0, block_shape=(512, 512),
    )
    windows = plan_grid(20_000, 20_000, GridSpec(512, 0.2))
    by_rows = plan_batches(windows, 8, 256)
    along_reads = plan_scene_batches(scene, windows, 8, 256)
    assert len(by_rows) == len(along_reads) == 10
    assert sorted(w.tile_id for b in along_reads for w in b.windows) == sorted(w.tile_id for w in windows)
    unique = len(blocks(tuple(windows), 512))
    decoded_by_rows = sum(len(blocks(b.windows, 512)) for b in by_rows)
    decoded_along_reads = sum(len(blocks(b.windows, 512)) for b in along_reads)
    # Rows of blocks across the scene shared at every cut, against a few blocks per cut (and the
    # band boundaries a single reader with a bounded cache pays as well).
    assert decoded_by_rows > 1.3 * unique
    assert decoded_along_reads < 1.2 * unique
