"""How the tile fan-out is cut into Dagster steps.

One step per tile costs tens of milliseconds to over a second of
orchestration, so tiles are grouped: about `target_steps` batches per scene,
never more than `max_tiles_per_batch` tiles in one, never an empty batch.

Each batch opens the source on its own, so blocks its tiles share with
another batch's are decoded twice. Batches are therefore cut along the
reader's order (`read_order`: bands of tile rows, column by column): a cut
falls between two tile columns of a band, where a few blocks are shared,
not across the scene's width, where two whole rows of blocks would be (a
third more decoding on a 2,401-tile scene cut into ten batches by rows).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from tile_assets.core.raster import GDAL_CACHE_BYTES
from tile_assets.core.read_order import read_order
from tile_assets.core.types import SceneInfo, TileWindow, _JsonMixin


@dataclass(frozen=True)
class BatchPlan(_JsonMixin):
    """One batch: an id that is a valid Dagster mapping key and its tile windows."""

    batch_id: str
    windows: tuple[TileWindow, ...]

    def to_dict(self) -> dict:
        return {"batch_id": self.batch_id, "windows": [w.to_dict() for w in self.windows]}

    @classmethod
    def from_dict(cls, data: dict) -> BatchPlan:
        return cls(
            batch_id=data["batch_id"],
            windows=tuple(TileWindow.from_dict(w) for w in data["windows"]),
        )


def batch_size_for(n_tiles: int, target_steps: int, max_tiles_per_batch: int) -> int:
    """Tiles per batch so that the scene takes about `target_steps` steps."""
    if target_steps < 1 or max_tiles_per_batch < 1:
        raise ValueError("target_steps and max_tiles_per_batch must be at least 1")
    if n_tiles == 0:
        return 1
    return max(1, min(max_tiles_per_batch, math.ceil(n_tiles / target_steps)))


def plan_batches(
    windows: Sequence[TileWindow], target_steps: int = 4, max_tiles_per_batch: int = 1024
) -> list[BatchPlan]:
    """Group tiles, in the order given, into batches of consecutive tiles."""
    size = batch_size_for(len(windows), target_steps, max_tiles_per_batch)
    return [
        BatchPlan(batch_id=f"b{i // size:05d}", windows=tuple(windows[i : i + size]))
        for i in range(0, len(windows), size)
    ]


def plan_scene_batches(
    scene: SceneInfo, windows: Sequence[TileWindow], target_steps: int = 4, max_tiles_per_batch: int = 1024
) -> list[BatchPlan]:
    """Batches of a scene's tiles cut along the reader's order, so batches share few blocks."""
    if scene.block_shape:
        rows, cols = scene.block_shape
        block_bytes = rows * cols * scene.count * np.dtype(scene.dtype).itemsize
        windows = read_order(windows, (rows, cols), block_bytes, GDAL_CACHE_BYTES)
    return plan_batches(windows, target_steps, max_tiles_per_batch)
