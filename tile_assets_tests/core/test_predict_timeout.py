"""`run_batch` with `predict_timeout_s`: a hanging tile fails alone, a stuck backend is not waited on per tile."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from tile_assets.core import inference
from tile_assets.core.batches import BatchPlan, plan_scene_batches
from tile_assets.core.grid import plan_grid
from tile_assets.core.image import TileImage
from tile_assets.core.inference import TransientBatchError, run_batch
from tile_assets.core.models.base import TilePrediction
from tile_assets.core.types import GridSpec, SceneInfo
from tile_assets_tests.models.pipeline import STORE, describe_scene

SPEC = GridSpec(tile_size=64, overlap=0)
NAIP = Path(__file__).resolve().parents[2] / "data" / "inbox" / "naip_2018.tif"
TIMEOUT_S = 0.2
HANG_S = 1.5


class HangingModel:
    """Hangs (sleeps `HANG_S`) on any call holding one of `hang_tiles`, or on every call with `hang_all`."""

    name = "hanging"
    version = "1"

    def __init__(self, hang_tiles: Sequence[str] = (), hang_all: bool = False) -> None:
        self.hang_tiles = set(hang_tiles)
        self.hang_all = hang_all
        self.calls: list[int] = []
        self._lock = threading.Lock()

    def params(self) -> dict:
        return {}

    def predict(self, tiles: Sequence[TileImage]) -> list[TilePrediction]:
        with self._lock:
            self.calls.append(len(tiles))
        if self.hang_all or any(t.window.tile_id in self.hang_tiles for t in tiles):
            time.sleep(HANG_S)
        return [TilePrediction(findings=()) for _ in tiles]


def one_chunk() -> tuple[SceneInfo, BatchPlan]:
    """The first `PREDICT_CHUNK` tiles of the NAIP sample, one batch."""
    scene = describe_scene(NAIP)
    windows = tuple(plan_grid(scene.width, scene.height, SPEC))[: inference.PREDICT_CHUNK]
    (plan,) = plan_scene_batches(scene, windows, 1, 1024)
    return scene, plan


def test_on_the_last_attempt_only_the_hanging_tile_fails() -> None:
    scene, plan = one_chunk()
    hung = plan.windows[2].tile_id
    model = HangingModel(hang_tiles=[hung])
    report = run_batch(STORE, scene, plan, SPEC, model, predict_timeout_s=TIMEOUT_S)
    failed = [(r.tile_id, r.error_type) for r in report.results if r.status == "failed"]
    assert failed == [(hung, "ModelTimeoutError")]
    assert model.calls == [inference.PREDICT_CHUNK] + [1] * inference.PREDICT_CHUNK  # the chunk, then each tile


def test_before_the_last_attempt_a_timed_out_chunk_is_left_to_the_retry() -> None:
    scene, plan = one_chunk()
    model = HangingModel(hang_tiles=[plan.windows[2].tile_id])
    with pytest.raises(TransientBatchError, match="did not return within 0.2 s"):
        run_batch(STORE, scene, plan, SPEC, model, final_attempt=False, predict_timeout_s=TIMEOUT_S)
    assert model.calls == [inference.PREDICT_CHUNK]


def test_a_stuck_backend_is_given_up_on_after_two_tiles_time_out_in_a_row() -> None:
    scene, plan = one_chunk()
    model = HangingModel(hang_all=True)
    report = run_batch(STORE, scene, plan, SPEC, model, predict_timeout_s=TIMEOUT_S)
    assert model.calls == [inference.PREDICT_CHUNK, 1, 1]
    assert {r.error_type for r in report.results} == {"ModelTimeoutError"}
    messages = [r.error_message for r in report.results]
    skipped = "not predicted alone: the 2 predict calls before it on this chunk timed out"
    assert sum("did not return within 0.2 s" in m for m in messages) == 2
    assert sum(skipped in m for m in messages) == inference.PREDICT_CHUNK - 2
