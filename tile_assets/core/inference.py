"""Run a model over one batch of tiles with per-tile failure isolation and the cache.

A batch reads its own windows from the source, skips tiles the cache already
holds, predicts the rest in small chunks (bounded memory), turns a tile that
fails permanently into a failure row and goes on. Transient failures
(including a predict call that outlives its timeout) are either raised at the
end (so the step is retried and the tiles already done stay cached) or, on
the last attempt, recorded as failure rows: then a chunk whose predict call
failed transiently is predicted again tile by tile, so one hung or throttled
tile does not take its chunk with it. Before any result of a chunk is kept,
the source is checked to still be the version the run started on.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, replace
from typing import Any

from tile_assets.core.batches import BatchPlan
from tile_assets.core.cache import TileCache
from tile_assets.core.errors import ModelTimeoutError, TileAssetsError, TransientError
from tile_assets.core.image import TileImage
from tile_assets.core.models.base import TileModel, TilePrediction
from tile_assets.core.raster import TileReader
from tile_assets.core.store import Store, VersionGuard
from tile_assets.core.types import Finding, GridSpec, SceneInfo, TileResult, TileWindow

log = logging.getLogger(__name__)

PREDICT_CHUNK = 8
"""Tiles decoded and predicted together. With `run_batch`'s `read_ahead`, two chunks are held
at once (the one predicted and the next one read): 16 tiles' pixels; predicted inline, one."""
STUCK_AFTER_TIMEOUTS = 2
"""Predict calls of single tiles that time out in a row before the rest of their chunk is failed
without a call: one hanging tile is isolated, a hung backend is not waited on once a tile."""
CACHE_EVERY_S = 1.0
CACHE_EVERY_TILES = 256
CACHE_EVERY_FINDINGS = 8192
"""A batch writes what it has inferred to the cache (one chunk file) once a second, every
256 tiles or every 8,192 findings, whichever comes first, and at its end: a killed step
loses about a second of work, and a fast model writes few files (2,401 trivial tiles: 10
files instead of 38 at 64 tiles or 151 at 16, each a PUT on S3 and a read in the merge; that
merge took 0.17-0.19 s instead of 0.22 s at 64). Until written, findings are Python objects
of ~550 bytes each: the findings bound keeps that under ~5 MB however fast the model is
(the default model finds ~200 a tile: 256 of its tiles would hold ~28 MB)."""

Progress = Callable[[int, int, int], None]
"""Called as (tiles done, tiles failed, tiles in batch) after each chunk."""


@dataclass(frozen=True)
class BatchReport:
    """Everything one batch produced: a result per tile, in the batch's tile order.

    With a cache, successful results carry no findings (they are in the
    cache): a batch of 1,024 tiles would otherwise hold some 200,000
    `Finding`s until it ends.
    """

    batch_id: str
    results: tuple[TileResult, ...]

    @property
    def tiles_from_cache(self) -> int:
        return sum(r.from_cache for r in self.results)

    @property
    def tiles_inferred(self) -> int:
        return sum(r.status == "ok" and not r.from_cache for r in self.results)

    def summary(self) -> dict[str, Any]:
        """Counts and the failure rows: what a step hands on (successes are in the cache)."""
        return {
            "batch_id": self.batch_id,
            "tiles": len(self.results),
            "tiles_inferred": self.tiles_inferred,
            "tiles_from_cache": self.tiles_from_cache,
            "failed": [r.to_dict() for r in self.results if r.status == "failed"],
        }


class TransientBatchError(TransientError):
    """Some tiles of a batch hit transient errors; the rest are done and cached."""


def failure_row(window: TileWindow, exc: BaseException) -> TileResult:
    """A failed tile: its id, the error type and a message naming the reason."""
    message = exc.reason if isinstance(exc, TileAssetsError) else str(exc) or repr(exc)
    return TileResult(
        tile_id=window.tile_id,
        status="failed",
        error_type=type(exc).__name__,
        error_message=message[:500],
    )


def to_scene_result(model: TileModel, tile: TileImage, prediction: TilePrediction) -> TileResult:
    """Offset tile-local findings into scene pixels and stamp them with tile and model."""
    window = tile.window
    dx, dy = float(window.col_off), float(window.row_off)
    # Built directly: `dataclasses.replace` costs twice as much, for ~200 findings a tile.
    findings = tuple(
        Finding(
            f.label,
            f.score,
            (f.box[0] + dx, f.box[1] + dy, f.box[2] + dx, f.box[3] + dy),
            window.tile_id,
            f.area_px,
            model.name,
            model.version,
            f.attributes,
        )
        for f in prediction.findings
    )
    return TileResult(
        tile_id=window.tile_id,
        status="ok",
        findings=findings,
        cover=dict(prediction.cover),
        valid_pixels=tile.valid_pixels,
    )


def predict_within(model: TileModel, tiles: list[TileImage], timeout_s: float | None) -> list[TilePrediction]:
    """`model.predict(tiles)`, given up on with `ModelTimeoutError` after `timeout_s` (None: no limit).

    The call runs in a daemon thread. Python cannot stop a thread, so a call
    that hangs keeps its thread (and what it holds) until the process ends:
    with the multiprocess or Celery executor, when the step's process ends.
    """
    if timeout_s is None:
        return model.predict(tiles)
    outcome: list[list[TilePrediction] | BaseException] = []

    def call() -> None:
        try:
            outcome.append(model.predict(tiles))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
            outcome.append(exc)

    thread = threading.Thread(target=call, name=f"predict-{model.name}", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if not outcome:
        ids = ", ".join(t.window.tile_id for t in tiles[:5])
        raise ModelTimeoutError(
            model.name, f"predict on {len(tiles)} tile(s) ({ids}) did not return within {timeout_s:g} s"
        )
    result = outcome[0]
    if isinstance(result, BaseException):
        raise result
    return result


def _predict_isolated(
    model: TileModel, tiles: list[TileImage], timeout_s: float | None, final_attempt: bool
) -> list[TileResult | BaseException]:
    """Predict a chunk at once; if that raises, tile by tile so one bad tile fails alone.

    A transient error of the chunk's call is raised as it is (the step's
    retry redoes the chunk later, with backoff) unless this is the last
    attempt, where isolating is the only way left to keep the chunk's good
    tiles. One by one, a tile that hangs costs one timeout; after
    `STUCK_AFTER_TIMEOUTS` in a row the backend is taken as stuck and the
    chunk's remaining tiles fail without a call, so a stuck backend costs
    a few timeouts a chunk, not one a tile.
    """
    try:
        predictions = predict_within(model, tiles, timeout_s)
        return [to_scene_result(model, t, p) for t, p in zip(tiles, predictions, strict=True)]
    except TransientError as exc:
        if not final_attempt or len(tiles) == 1:
            raise
        log.info("chunk prediction failed transiently on the last attempt (%s); %d tiles one by one", exc, len(tiles))
    except Exception:  # noqa: BLE001 - isolate below, per tile
        log.info("chunk prediction failed; retrying %d tiles one by one", len(tiles))
    out: list[TileResult | BaseException] = []
    timeouts = 0  # in a row
    for tile in tiles:
        if timeouts >= STUCK_AFTER_TIMEOUTS:
            reason = f"not predicted alone: the {timeouts} predict calls before it on this chunk timed out"
            out.append(ModelTimeoutError(model.name, reason))
            continue
        try:
            (prediction,) = predict_within(model, [tile], timeout_s)
            out.append(to_scene_result(model, tile, prediction))
            timeouts = 0
        except Exception as exc:  # noqa: BLE001 - a tile's failure becomes its row
            timeouts = timeouts + 1 if isinstance(exc, ModelTimeoutError) else 0
            out.append(exc)
    return out


class _InlinePredictor:
    """Runs each prediction as it is submitted, in the caller's thread: `run_batch` without read-ahead."""

    def submit(
        self, predict: Callable[..., list[TileResult | BaseException]], *args: Any
    ) -> Future[list[TileResult | BaseException]]:
        done: Future[list[TileResult | BaseException]] = Future()
        try:
            done.set_result(predict(*args))
        except Exception as exc:  # noqa: BLE001 - raised again where the chunk is settled
            done.set_exception(exc)
        return done


def _forget(done: Sequence[tuple[TileWindow, TileResult]]) -> None:
    """Without a cache there is nothing to remember."""


def run_batch(
    store: Store,
    scene: SceneInfo,
    plan: BatchPlan,
    spec: GridSpec,
    model: TileModel,
    cache: TileCache | None = None,
    *,
    final_attempt: bool = True,
    on_progress: Progress | None = None,
    predict_timeout_s: float | None = None,
    read_ahead: bool = False,
) -> BatchReport:
    """Infer every tile of `plan` not already cached, isolating failures per tile.

    With `final_attempt=False`, transient failures raise `TransientBatchError`
    after all other tiles are done and cached, so a retry redoes only them.
    A predict call (one chunk of up to `PREDICT_CHUNK` tiles) running longer
    than `predict_timeout_s` is a transient failure of its tiles (on the last
    attempt, of those that fail again when predicted one by one). Raises
    `SourceChangedError` when the source is no longer the version `scene`
    describes: checked before reading and after each chunk's reads, before
    any of the chunk's results is cached. With `read_ahead`, the model
    predicts a chunk in a thread while the next chunk is read and decoded
    (GDAL and most models release the GIL): worth it when a core would
    otherwise idle, as in a run whose steps run one at a time in process,
    not when other steps' processes keep every core busy.
    """
    cache = cache.for_batch(plan.windows) if cache else None
    results: dict[str, TileResult] = {}
    transient: list[tuple[TileWindow, BaseException]] = []
    todo: list[TileWindow] = []
    for window in plan.windows:
        hit = cache.get(window, findings=False) if cache else None
        if hit is not None:
            results[window.tile_id] = hit
        else:
            todo.append(window)

    def report_progress() -> None:
        if on_progress:
            failed = sum(r.status == "failed" for r in results.values())
            on_progress(len(results), failed, len(plan.windows))

    report_progress()

    def read_chunk(reader: TileReader, windows: Sequence[TileWindow]) -> list[TileImage]:
        tiles: list[TileImage] = []
        for window in windows:
            try:
                tiles.append(reader.read(window, spec))
            except TransientError as exc:
                transient.append((window, exc))
            except Exception as exc:  # noqa: BLE001 - a tile's failure becomes its row
                results[window.tile_id] = failure_row(window, exc)
        return tiles

    unsaved: list[tuple[TileWindow, TileResult]] = []
    saved_at = time.monotonic()

    def settle(windows: list[TileWindow], predicted: Future[list[TileResult | BaseException]], save: Callable) -> None:
        """Take a chunk's predictions as results or failure rows; cache what is due."""
        nonlocal unsaved, saved_at
        try:
            outcomes = predicted.result()
        except TransientError as exc:
            transient.extend((w, exc) for w in windows)
            outcomes = []
        for window, outcome in zip(windows, outcomes, strict=False):
            if isinstance(outcome, TransientError):
                transient.append((window, outcome))
            elif isinstance(outcome, BaseException):
                results[window.tile_id] = failure_row(window, outcome)
            else:
                results[window.tile_id] = replace(outcome, findings=()) if cache else outcome
                unsaved.append((window, outcome))
        if (
            len(unsaved) >= CACHE_EVERY_TILES
            or sum(len(r.findings) for _, r in unsaved) >= CACHE_EVERY_FINDINGS
            or time.monotonic() - saved_at >= CACHE_EVERY_S
        ):
            save(unsaved)
            unsaved, saved_at = [], time.monotonic()
        report_progress()

    if todo:
        source = VersionGuard(store, scene.uri, scene.source_version, scene.fingerprint)
        source.check()
        with (
            TileReader(store, scene.uri) as reader,
            (cache.writer() if cache else nullcontext(_forget)) as put_chunk,
            (
                ThreadPoolExecutor(1, thread_name_prefix=f"predict-{model.name}")
                if read_ahead
                else nullcontext(_InlinePredictor())
            ) as predictor,
        ):
            todo = reader.in_read_order(todo)  # results still come back in the plan's order
            in_flight: tuple[list[TileWindow], Future[list[TileResult | BaseException]]] | None = None
            # A chunk's results are settled after the next chunk's reads. Only its windows are kept
            # for that: predicted inline, its pixels are let go before the next chunk is read.
            for start in range(0, len(todo), PREDICT_CHUNK):
                tiles = read_chunk(reader, todo[start : start + PREDICT_CHUNK])
                source.check()
                if in_flight is not None:
                    settle(*in_flight, put_chunk)
                if not tiles:
                    report_progress()  # every read of the chunk failed: nothing to predict
                in_flight = (
                    (
                        [t.window for t in tiles],
                        predictor.submit(_predict_isolated, model, tiles, predict_timeout_s, final_attempt),
                    )
                    if tiles
                    else None
                )
                del tiles
            if in_flight is not None:
                settle(*in_flight, put_chunk)
            if unsaved:
                put_chunk(unsaved)

    if transient and not final_attempt:
        ids = ", ".join(w.tile_id for w, _ in transient[:10])
        raise TransientBatchError(
            f"batch {plan.batch_id}",
            f"{len(transient)} tile(s) hit transient errors ({ids}); first: {transient[0][1]}",
        )
    for window, exc in transient:
        results[window.tile_id] = failure_row(window, exc)
    if transient:
        report_progress()
    return BatchReport(
        batch_id=plan.batch_id,
        results=tuple(results[w.tile_id] for w in plan.windows),
    )
