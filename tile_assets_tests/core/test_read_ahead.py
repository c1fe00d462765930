"""`run_batch` with read-ahead: the next chunk is read while the model predicts, with the same results."""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Sequence
from pathlib import Path

import pytest

from tile_assets.core import inference
from tile_assets.core.batches import BatchPlan, plan_scene_batches
from tile_assets.core.cache import TileCache
from tile_assets.core.grid import plan_grid
from tile_assets.core.image import TileImage
from tile_assets.core.inference import TransientBatchError, run_batch
from tile_assets.core.models.base import TilePrediction
from tile_assets.core.raster import TileReader
from tile_assets.core.types import GridSpec, SceneInfo, TileWindow
from tile_assets.executors import runs_in_process
from tile_assets_tests.fanout.faulty_models import FlakyModel
from tile_assets_tests.models.pipeline import STORE, describe_scene

SPEC = GridSpec(tile_size=64, overlap=0)
NAIP = Path(__file__).resolve().parents[2] / "data" / "inbox" / "naip_2018.tif"


def naip_plan(tiles: int) -> tuple[SceneInfo, BatchPlan]:
    scene = describe_scene(NAIP)
    windows = tuple(plan_grid(scene.width, scene.height, SPEC))[:tiles]
    (plan,) = plan_scene_batches(scene, windows, 1, 1024)
    return scene, plan


@pytest.mark.parametrize("read_ahead", [False, True])
def test_failures_and_cache_are_the_same_with_or_without_read_ahead(tmp_path: Path, read_ahead: bool) -> None:
    """Failure rows, successes in the cache and their findings do not depend on how reads are scheduled."""
    scene, plan = naip_plan(40)
    ids = [w.tile_id for w in plan.windows]
    model = FlakyModel(fail_tiles=ids[3:5] + ids[17:18])
    cache = TileCache(STORE, str(tmp_path / "catalog"), "flaky-1", scene.fingerprint)
    report = run_batch(STORE, scene, plan, SPEC, model, cache, read_ahead=read_ahead)
    failed = [r.tile_id for r in report.results if r.status == "failed"]
    assert [r.tile_id for r in report.results] == ids  # the plan's order, whatever the read order
    assert failed == [*ids[3:5], ids[17]]
    assert all(r.error_type == "ModelError" for r in report.results if r.status == "failed")
    cached = {r.tile_id: len(r.findings) for r in (cache.get(w) for w in plan.windows) if r is not None}
    assert sorted(cached) == sorted(set(ids) - set(failed)) and set(cached.values()) == {1}


@pytest.mark.parametrize("read_ahead", [False, True])
@pytest.mark.parametrize("final_attempt", [False, True])
def test_a_transient_tile_fails_its_chunk_until_the_last_attempt_tries_it_alone(
    tmp_path: Path, read_ahead: bool, final_attempt: bool
) -> None:
    """Before the last attempt, a transient error fails its predict call, the chunk it holds, and
    ends the batch once the other chunks are cached; on the last attempt the chunk's other tiles
    succeed alone and only the tile that fails again is a failure row."""
    scene, plan = naip_plan(24)
    ids = [w.tile_id for w in plan.windows]
    model = FlakyModel(state_dir=str(tmp_path / "state"), transient_tiles={ids[9]: 5})
    cache = TileCache(STORE, str(tmp_path / "catalog"), "flaky-1", scene.fingerprint)
    if final_attempt:
        report = run_batch(STORE, scene, plan, SPEC, model, cache, final_attempt=True, read_ahead=read_ahead)
        failed = [(r.tile_id, r.error_type) for r in report.results if r.status == "failed"]
        assert failed == [(ids[9], "TransientModelError")]
        assert [w.tile_id for w in plan.windows if not cache.has(w)] == [ids[9]]
        return
    with pytest.raises(TransientBatchError, match=ids[9]):
        run_batch(STORE, scene, plan, SPEC, model, cache, final_attempt=False, read_ahead=read_ahead)
    cached = [w.tile_id for w in plan.windows if cache.has(w)]
    assert len(cached) == len(ids) - inference.PREDICT_CHUNK and ids[9] not in cached


class TimedModel:
    """Records when each predict call runs; each takes `seconds`."""

    name = "timed"
    version = "1"

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.calls: list[tuple[float, float, str]] = []

    def params(self) -> dict:
        return {}

    def predict(self, tiles: Sequence[TileImage]) -> list[TilePrediction]:
        start = time.monotonic()
        time.sleep(self.seconds)
        self.calls.append((start, time.monotonic(), threading.current_thread().name))
        return [TilePrediction(findings=()) for _ in tiles]


@pytest.mark.parametrize("read_ahead", [False, True])
def test_read_ahead_reads_the_next_chunk_while_the_model_predicts(
    monkeypatch: pytest.MonkeyPatch, read_ahead: bool
) -> None:
    scene, plan = naip_plan(4 * inference.PREDICT_CHUNK)
    reads: list[float] = []
    read = TileReader.read

    def timed_read(reader: TileReader, window: TileWindow, spec: GridSpec) -> TileImage:
        reads.append(time.monotonic())
        return read(reader, window, spec)

    monkeypatch.setattr(TileReader, "read", timed_read)
    model = TimedModel(0.2)
    run_batch(STORE, scene, plan, SPEC, model, read_ahead=read_ahead)
    assert len(model.calls) == 4 and len(reads) == len(plan.windows)
    chunks = [reads[k : k + inference.PREDICT_CHUNK] for k in range(0, len(reads), inference.PREDICT_CHUNK)]
    ends = [end for _, end, _ in model.calls]
    threads = {name for _, _, name in model.calls}
    if read_ahead:  # each chunk after the first is read before the model is done with the previous one
        assert all(max(chunk) < end for chunk, end in zip(chunks[1:], ends, strict=False))
        assert threads == {"predict-timed_0"}
    else:
        assert all(min(chunk) > end for chunk, end in zip(chunks[1:], ends, strict=False))
        assert threads == {threading.current_thread().name}


@pytest.mark.parametrize("read_ahead", [False, True])
def test_a_predicted_chunk_lets_its_pixels_go_before_the_next_is_read(
    monkeypatch: pytest.MonkeyPatch, read_ahead: bool
) -> None:
    """Inline, one chunk's pixels are held at a time; with read-ahead, two (one predicted, one read)."""
    scene, plan = naip_plan(4 * inference.PREDICT_CHUNK)
    tiles: list[weakref.ref[TileImage]] = []
    most = 0
    read = TileReader.read

    def counted_read(reader: TileReader, window: TileWindow, spec: GridSpec) -> TileImage:
        nonlocal most
        most = max(most, sum(tile() is not None for tile in tiles))
        tile = read(reader, window, spec)
        tiles.append(weakref.ref(tile))
        return tile

    monkeypatch.setattr(TileReader, "read", counted_read)
    # Read ahead, the model still predicts the previous chunk while this one is read.
    report = run_batch(STORE, scene, plan, SPEC, TimedModel(0.3 if read_ahead else 0.0), read_ahead=read_ahead)
    assert all(r.status == "ok" for r in report.results)
    # Alive as the last tile of a chunk is read: the rest of that chunk, and the chunk before when read ahead.
    assert most == (2 if read_ahead else 1) * inference.PREDICT_CHUNK - 1


def test_only_runs_that_pick_the_in_process_executor_read_ahead() -> None:
    assert runs_in_process({"execution": {"config": {"in_process": {}}}})
    assert not runs_in_process({"execution": {"config": {"multiprocess": {"max_concurrent": 2}}}})
    assert not runs_in_process({"execution": {"config": {"celery": {}}}})
    assert not runs_in_process({})  # the default executor is multiprocess
