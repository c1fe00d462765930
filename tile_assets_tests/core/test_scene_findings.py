"""From the tile cache to findings.parquet: the merge a tile row at a time writes the whole-scene merge."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tile_assets.core import inference, scene_findings
from tile_assets.core.batches import plan_scene_batches
from tile_assets.core.borders import prefer_whole
from tile_assets.core.cache import CHUNK_METADATA, TileCache
from tile_assets.core.findings_table import table_findings
from tile_assets.core.grid import plan_grid
from tile_assets.core.inference import run_batch
from tile_assets.core.merge import merge_findings
from tile_assets.core.image import TileImage
from tile_assets.core.models.base import TilePrediction
from tile_assets.core.models.classical import ClassicalModel
from tile_assets.core.scene_findings import CachedScene, RowSpool
from tile_assets.core.scene_merge import MergeOptions
from tile_assets.core.types import Finding, GridSpec, TileResult, TileWindow
from tile_assets_tests.core.test_scene_merge import canonical
from tile_assets_tests.fanout.faulty_models import FlakyModel
from tile_assets_tests.models.pipeline import STORE, describe_scene

NAIP = Path(__file__).resolve().parents[2] / "data" / "inbox" / "naip_2018.tif"
SPEC = GridSpec(tile_size=192, overlap=48)


def cached_findings(cache: TileCache, windows: tuple[TileWindow, ...]) -> list[Finding]:
    """What the batches cached, as the model returned it (every tile once)."""
    findings = [f for chunk in cache.scene_chunks(windows) for f in table_findings(chunk.findings)]
    assert len({(f.tile_id, f.box, f.label) for f in findings}) == len(findings)
    return findings


def test_a_cached_scene_is_merged_and_written_as_the_whole_scene_merge(tmp_path: Path) -> None:
    scene = describe_scene(NAIP)
    windows = tuple(plan_grid(scene.width, scene.height, SPEC))
    cache = TileCache(STORE, str(tmp_path / "catalog"), "classical-1", scene.fingerprint, "run-1")
    lost, failed_tile = windows[7], windows[11]
    for plan in plan_scene_batches(scene, [w for w in windows if w not in (lost, failed_tile)], 4, 64):
        run_batch(STORE, scene, plan, SPEC, ClassicalModel(), cache)
    raw = cached_findings(cache, windows)
    failed = {failed_tile.tile_id: TileResult(failed_tile.tile_id, "failed", error_type="ModelError", error_message="boom")}

    uri = str(tmp_path / "findings.parquet")
    reader = TileCache(STORE, cache.catalog, cache.model_key, cache.fingerprint, "run-2")
    with CachedScene(windows, STORE, uri) as gathered:
        gathered.add(reader)
        assert gathered.missing(failed) == (lost,)
        merged = gathered.merge_into(scene, failed, MergeOptions())

    expected = merge_findings(prefer_whole(raw, {w.tile_id: w for w in windows}, scene.width, scene.height))
    written = table_findings(pq.read_table(uri))
    assert len(expected) > 100 and merged.findings == len(written)
    assert canonical(written) == canonical(expected)
    assert merged.findings_before_merge == len(raw) == sum(merged.findings_per_tile.values())
    assert merged.counts_by_label == {
        label: sum(f.label == label for f in expected) for label in {f.label for f in expected}
    }
    by_id = {r.tile_id: r for r in merged.results}
    assert [r.tile_id for r in merged.results] == [w.tile_id for w in windows]
    assert by_id[lost.tile_id].error_type == "NoResult"
    assert by_id[failed_tile.tile_id].error_message == "boom"
    ok = [r for r in merged.results if r.status == "ok"]
    assert len(ok) == len(windows) - 2 and all(r.from_cache and r.valid_pixels > 0 for r in ok)



class FewerFindings(ClassicalModel):
    """The classical model reporting one finding less a tile: the same tiles, other findings."""

    def predict(self, tiles: Sequence[TileImage]) -> list[TilePrediction]:
        return [replace(p, findings=p.findings[:-1]) for p in super().predict(tiles)]


def _chunk_tiles(path: Path) -> str:
    """A cache chunk file's tile entries, as the JSON in its metadata."""
    return pq.read_schema(path).metadata[CHUNK_METADATA].decode()


def merge_cached(cache: TileCache, windows: tuple[TileWindow, ...], uri: str, scene, failed: dict) -> scene_findings.MergedScene:  # noqa: ANN001
    with CachedScene(windows, STORE, uri) as gathered:
        gathered.add(cache)
        return gathered.merge_into(scene, failed, MergeOptions(), cache_identity=cache.identity)


def test_a_rerun_updates_the_previous_merge_and_writes_the_whole_scene_merge(tmp_path: Path) -> None:
    """After failed tiles come back, only what they reach is merged again; the file is the whole merge."""
    scene = describe_scene(NAIP)
    windows = tuple(plan_grid(scene.width, scene.height, SPEC))
    cache = TileCache(STORE, str(tmp_path / "catalog"), "classical-1", scene.fingerprint)
    late = windows[3::6]
    for plan in plan_scene_batches(scene, [w for w in windows if w not in late], 4, 64):
        run_batch(STORE, scene, plan, SPEC, ClassicalModel(), cache)
    uri = str(tmp_path / "findings.parquet")
    failed = {w.tile_id: TileResult(w.tile_id, "failed", error_type="ModelError", error_message="boom") for w in late}
    first = merge_cached(cache, windows, uri, scene, failed)
    assert not first.updated

    for plan in plan_scene_batches(scene, late, 2, 64):  # the rerun
        run_batch(STORE, scene, plan, SPEC, ClassicalModel(), cache)
    rerun = merge_cached(cache, windows, uri, scene, {})
    written = table_findings(pq.read_table(uri))

    whole_uri = str(tmp_path / "whole.parquet")
    whole = merge_cached(cache, windows, whole_uri, scene, {})
    assert rerun.updated and not whole.updated
    assert canonical(written) == canonical(table_findings(pq.read_table(whole_uri)))
    assert rerun.findings == whole.findings and rerun.counts_by_label == whole.counts_by_label
    assert merge_cached(cache, windows, uri, scene, {}).updated  # nothing new: the file is kept as it is
    assert canonical(table_findings(pq.read_table(uri))) == canonical(written)

    # Tiles merged before come back with other findings (their cache file lost, a model that does
    # not say the same twice): their previous rows cannot be kept, so the scene is merged whole.
    holder = next(p for p in Path(cache.prefix).rglob("*.parquet") if f'"{windows[0].tile_id}"' in _chunk_tiles(p))
    holder.unlink()
    with CachedScene(windows, STORE, uri) as gathered:
        gathered.add(cache)
        redo = gathered.missing({})
    assert windows[0] in redo
    for plan in plan_scene_batches(scene, redo, 1, 64):
        run_batch(STORE, scene, plan, SPEC, FewerFindings(), cache)
    again = merge_cached(cache, windows, uri, scene, {})
    whole = merge_cached(cache, windows, whole_uri, scene, {})
    assert not again.updated and again.findings < rerun.findings
    assert canonical(table_findings(pq.read_table(uri))) == canonical(table_findings(pq.read_table(whole_uri)))

    other = TileCache(STORE, cache.catalog, "classical-2", scene.fingerprint)  # another model: whole again
    for plan in plan_scene_batches(scene, windows, 2, 64):
        run_batch(STORE, scene, plan, SPEC, ClassicalModel(), other)
    assert not merge_cached(other, windows, uri, scene, {}).updated


def test_a_moved_catalog_still_updates_its_merge(tmp_path: Path) -> None:
    """The basis names the cache by its place under the catalog root, so a catalog moved (or named
    by another path) is updated, not merged whole, by the rerun that follows."""
    scene = describe_scene(NAIP)
    windows = tuple(plan_grid(scene.width, scene.height, SPEC))
    before = tmp_path / "before"
    cache = TileCache(STORE, str(before / "catalog"), "classical-1", scene.fingerprint)
    late = windows[::4]
    for plan in plan_scene_batches(scene, [w for w in windows if w not in late], 2, 64):
        run_batch(STORE, scene, plan, SPEC, ClassicalModel(), cache)
    assert not merge_cached(cache, windows, str(before / "findings.parquet"), scene, {}).updated

    after = tmp_path / "after"
    before.rename(after)
    moved = TileCache(STORE, str(after / "catalog"), cache.model_key, scene.fingerprint)
    assert moved.identity == cache.identity and moved.prefix != cache.prefix
    for plan in plan_scene_batches(scene, late, 2, 64):
        run_batch(STORE, scene, plan, SPEC, ClassicalModel(), moved)
    assert merge_cached(moved, windows, str(after / "findings.parquet"), scene, {}).updated


@pytest.mark.parametrize("max_update", [1_000_000, 500])
def test_findings_are_held_for_an_update_and_spooled_past_its_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, max_update: int
) -> None:
    """A first merge spools; a rerun holds its findings for the update unless they are too many,
    then spools them all and merges the scene whole: the same file either way."""
    monkeypatch.setattr(scene_findings, "MAX_UPDATE_FINDINGS", max_update)
    monkeypatch.setattr(scene_findings, "MAX_PENDING", 300)  # spooled findings reach the spool's files
    scene = describe_scene(NAIP)
    windows = tuple(plan_grid(scene.width, scene.height, SPEC))
    cache = TileCache(STORE, str(tmp_path / "catalog"), "classical-1", scene.fingerprint)
    late = windows[::5]
    uri = str(tmp_path / "findings.parquet")
    for tiles in ([w for w in windows if w not in late], late):
        for plan in plan_scene_batches(scene, tiles, 2, 64):
            run_batch(STORE, scene, plan, SPEC, ClassicalModel(), cache)
        with CachedScene(windows, STORE, uri) as gathered:
            gathered.add(cache)
            first = tiles is not late
            held = not first and max_update > sum(gathered.per_tile.values())
            assert (gathered.held is not None) == held and bool(gathered.rows.files) != held
            merged = gathered.merge_into(scene, {}, MergeOptions(), cache_identity=cache.identity)
        assert merged.updated == held and merged.findings_before_merge > 500
    whole = merge_findings(prefer_whole(cached_findings(cache, windows), {w.tile_id: w for w in windows}, scene.width, scene.height))
    assert canonical(table_findings(pq.read_table(uri))) == canonical(whole)


@pytest.mark.parametrize(("row_flush", "max_pending"), [(8_192, 32_768), (50, 10_000), (10_000, 300)])
def test_the_spool_gives_back_each_tile_row_top_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, row_flush: int, max_pending: int
) -> None:
    """Whether rows stay buffered, are flushed one by one or all at once, each comes back whole."""
    monkeypatch.setattr(scene_findings, "ROW_FLUSH", row_flush)
    monkeypatch.setattr(scene_findings, "MAX_PENDING", max_pending)
    scene = describe_scene(NAIP)
    windows = tuple(plan_grid(scene.width, scene.height, SPEC))
    cache = TileCache(STORE, str(tmp_path / "catalog"), "classical-1", scene.fingerprint)
    for plan in plan_scene_batches(scene, windows, 2, 64):
        run_batch(STORE, scene, plan, SPEC, ClassicalModel(), cache)
    spool = RowSpool(windows, tmp_path / "spool")
    (tmp_path / "spool").mkdir()
    added = []
    for chunk in cache.scene_chunks(windows):
        spool.add(chunk.findings)
        added.append(chunk.findings.replace_schema_metadata(None))
    if row_flush < 8_192 or max_pending < 32_768:
        assert spool.files  # these thresholds do reach the files
    tops = sorted({w.row_off for w in windows})
    row_of = {w.tile_id: w.row_off for w in windows}
    seen, back = [], []
    for table, frontier in spool.top_first():
        rows = {row_of[t] for t in table.column("tile_id").to_pylist()}
        assert len(rows) == 1
        (top,) = rows
        seen.append(top)
        back.append(table)
        assert frontier == (tops[tops.index(top) + 1] if top != tops[-1] else float("inf"))
    assert seen == tops
    key = [(name, "ascending") for name in ("tile_id", "label", "px_x0", "px_y0", "px_x1", "px_y1", "score")]
    assert pa.concat_tables(back).sort_by(key).equals(pa.concat_tables(added).sort_by(key))
    assert not list((tmp_path / "spool").iterdir())  # scratch files are gone once read


@pytest.mark.parametrize("strategy", ["nms", "none"])
def test_other_strategies_go_through_the_same_path(tmp_path: Path, strategy: str) -> None:
    scene = describe_scene(NAIP)
    windows = tuple(plan_grid(scene.width, scene.height, SPEC))[:20]
    cache = TileCache(STORE, str(tmp_path / "catalog"), "classical-1", scene.fingerprint)
    (plan,) = plan_scene_batches(scene, windows, 1, 64)
    report = run_batch(STORE, scene, plan, SPEC, ClassicalModel(), cache)
    assert all(r.status == "ok" and not r.findings for r in report.results)  # they are in the cache
    raw = cached_findings(cache, windows)
    uri = str(tmp_path / "findings.parquet")
    options = MergeOptions(strategy=strategy, border_aware=False)  # type: ignore[arg-type]
    with CachedScene(windows, STORE, uri) as gathered:
        gathered.add(cache)
        gathered.merge_into(scene, {}, options)
    expected = merge_findings(raw, strategy)  # type: ignore[arg-type]
    assert canonical(table_findings(pq.read_table(uri))) == canonical(expected)


@pytest.mark.parametrize(
    ("every_s", "every_findings", "per_file"),
    [(3600.0, 10_000, 64), (0.0, 10_000, inference.PREDICT_CHUNK), (3600.0, 20, 3 * inference.PREDICT_CHUNK)],
)
def test_a_batch_caches_a_file_per_n_tiles_per_n_findings_or_per_second(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, every_s: float, every_findings: int, per_file: int
) -> None:
    """A fast model's batch writes a chunk file per `CACHE_EVERY_TILES` (64 here, for a small scene);
    once a second has passed, one per predict chunk; with many findings a tile, once the predict
    chunks since the last file hold `CACHE_EVERY_FINDINGS` (one finding a tile here: 20 findings
    are reached at the third chunk of 8 tiles)."""
    monkeypatch.setattr(inference, "CACHE_EVERY_S", every_s)
    monkeypatch.setattr(inference, "CACHE_EVERY_TILES", 64)
    monkeypatch.setattr(inference, "CACHE_EVERY_FINDINGS", every_findings)
    scene = describe_scene(NAIP)
    spec = GridSpec(tile_size=64, overlap=0)
    windows = tuple(plan_grid(scene.width, scene.height, spec))[:150]
    cache = TileCache(STORE, str(tmp_path / "catalog"), "flaky-1", scene.fingerprint)
    (plan,) = plan_scene_batches(scene, windows, 1, 1024)
    report = run_batch(STORE, scene, plan, spec, FlakyModel(), cache)
    assert len(windows) == 150 and report.tiles_inferred == 150
    chunks = list(cache.scene_chunks(windows))
    expected = [per_file] * (150 // per_file) + [150 % per_file]
    assert sorted((len(c.results) for c in chunks), reverse=True) == expected
    assert sorted(r.tile_id for c in chunks for r in c.results) == sorted(w.tile_id for w in windows)
