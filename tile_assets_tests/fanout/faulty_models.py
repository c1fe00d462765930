"""Test models for the fan-out: a trivial deterministic finding per tile, plus injected faults.

Loaded by import path (`tile_assets_tests.fanout.faulty_models:FlakyModel`)
through the `tile_model` resource, so a run picks its faults in run config.
Attempts and predict calls are written to files under `state_dir`, so they
survive step retries, step processes and killed runs, and tests can read
them afterwards.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from tile_assets.core.errors import ModelError, TransientModelError
from tile_assets.core.image import TileImage
from tile_assets.core.models.base import TilePrediction
from tile_assets.core.models.classical import ClassicalModel
from tile_assets.core.types import Finding

MARK_LABEL = "mark"


def mark_prediction(tile: TileImage, side: int) -> TilePrediction:
    """One `side`-pixel square finding at the tile centre: tiles' marks never overlap, so none merge."""
    window = tile.window
    x0 = window.width // 2 - side // 2
    y0 = window.height // 2 - side // 2
    finding = Finding(
        label=MARK_LABEL,
        score=1.0,
        box=(float(x0), float(y0), float(x0 + side), float(y0 + side)),
        area_px=float(side * side),
    )
    valid = float(tile.valid.mean()) if tile.valid.size else 0.0
    return TilePrediction(findings=(finding,), cover={"valid": round(valid, 6)})


@dataclass(frozen=True)
class StateDir:
    """Per-tile attempt counters and per-call records, as files (append-only, process-safe)."""

    root: Path

    def record_attempt(self, tile_id: str) -> int:
        """Count one more attempt at `tile_id` and return how many there have been."""
        path = self.root / "attempts" / tile_id
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as f:
            f.write(f"{os.getpid()}\n")
        return len(path.read_text().splitlines())

    def attempts(self) -> dict[str, int]:
        """Attempts per tile id so far (tiles never attempted are absent)."""
        folder = self.root / "attempts"
        if not folder.is_dir():
            return {}
        return {p.name: len(p.read_text().splitlines()) for p in folder.iterdir()}

    def record_call(self, tile_ids: Sequence[str], start: float, end: float) -> None:
        """One predict call: which process, which tiles, when (time.monotonic, system-wide on Linux)."""
        folder = self.root / "calls"
        folder.mkdir(parents=True, exist_ok=True)
        payload = {"pid": os.getpid(), "tiles": list(tile_ids), "start": start, "end": end}
        (folder / f"{os.getpid()}-{time.monotonic_ns()}.json").write_text(json.dumps(payload))

    def calls(self) -> list[dict[str, Any]]:
        folder = self.root / "calls"
        if not folder.is_dir():
            return []
        return [json.loads(p.read_text()) for p in sorted(folder.iterdir())]

    @contextmanager
    def running(self) -> Iterator[None]:
        """Mark one predict call as running (a file) while the block runs."""
        folder = self.root / "running"
        folder.mkdir(parents=True, exist_ok=True)
        marker = folder / f"{os.getpid()}-{time.monotonic_ns()}"
        marker.touch()
        try:
            yield
        finally:
            marker.unlink()

    def await_running(self, count: int, timeout_s: float) -> None:
        """Hold until `count` calls are running at once, or `timeout_s` has passed."""
        deadline = time.monotonic() + timeout_s
        while len(list((self.root / "running").iterdir())) < count and time.monotonic() < deadline:
            time.sleep(0.05)


@dataclass(frozen=True)
class FlakyModel:
    """Marks every tile's centre; fails the tiles it is told to, permanently or N times transiently.

    `fail_tiles` raise `ModelError` on every attempt; `transient_tiles` maps a
    tile id to how many attempts raise `TransientModelError` before it
    succeeds; `delay_s` sleeps per tile (a slow backend); `await_peers` makes
    each predict call hold until that many calls run at once (in any process)
    or `await_timeout_s` passes, so concurrency, when allowed, is certain to
    show. Only `mark_side` changes successful output, so only it is a param
    (enters the cache key): fixing a fault must not invalidate the tiles that
    already succeeded.
    """

    name: ClassVar[str] = "flaky"
    version: ClassVar[str] = "1"

    state_dir: str = ""
    fail_tiles: Sequence[str] = ()
    transient_tiles: dict[str, int] = field(default_factory=dict)
    delay_s: float = 0.0
    await_peers: int = 0
    await_timeout_s: float = 10.0
    mark_side: int = 2

    def __post_init__(self) -> None:
        if (self.transient_tiles or self.await_peers) and not self.state_dir:
            raise ModelError(self.name, "transient_tiles and await_peers need a state_dir")

    def params(self) -> dict[str, Any]:
        return {"mark_side": self.mark_side}

    def predict(self, tiles: Sequence[TileImage]) -> list[TilePrediction]:
        state = StateDir(Path(self.state_dir)) if self.state_dir else None
        start = time.monotonic()
        try:
            if state and self.await_peers:
                with state.running():
                    state.await_running(self.await_peers, self.await_timeout_s)
                    return [self._predict_tile(tile, state) for tile in tiles]
            return [self._predict_tile(tile, state) for tile in tiles]
        finally:
            if state:
                state.record_call([t.window.tile_id for t in tiles], start, time.monotonic())

    def _predict_tile(self, tile: TileImage, state: StateDir | None) -> TilePrediction:
        tile_id = tile.window.tile_id
        attempt = state.record_attempt(tile_id) if state else 1
        if self.delay_s:
            time.sleep(self.delay_s)
        if tile_id in self.fail_tiles:
            raise ModelError(tile_id, "injected permanent fault")
        failures = self.transient_tiles.get(tile_id, 0)
        if attempt <= failures:
            raise TransientModelError(tile_id, f"injected transient fault {attempt}/{failures}")
        return mark_prediction(tile, self.mark_side)


@dataclass(frozen=True)
class FlakyModelV2(FlakyModel):
    """The same model under a new version: every cached tile of version 1 must miss."""

    version: ClassVar[str] = "2"


@dataclass(frozen=True)
class FailingClassicalModel:
    """The project's default model (default params), failing the tiles it is told to on every attempt.

    `fail_tiles` is no param of the cache key: fixing the fault keeps the
    tiles that succeeded cached, as for `FlakyModel`.
    """

    name: ClassVar[str] = "classical-failing"
    version: ClassVar[str] = ClassicalModel.version
    fail_tiles: Sequence[str] = ()

    def params(self) -> dict[str, Any]:
        return ClassicalModel().params()

    def predict(self, tiles: Sequence[TileImage]) -> list[TilePrediction]:
        failing = [t.window.tile_id for t in tiles if t.window.tile_id in self.fail_tiles]
        if failing:
            raise ModelError(failing[0], "injected permanent fault")
        return ClassicalModel().predict(tiles)
