"""`tile_findings`: the batched, durable fan-out of the per-tile model over a scene.

plan_batches ─DynamicOutput per batch─▶ infer_batch (pool `tile_inference`,
RetryPolicy) ─collect─▶ merge_findings. Every batch reads its own windows from
the source; only windows, reports and paths cross steps.
"""


import time
from typing import Literal

import dagster as dg
import pyarrow as pa

from tile_assets.assets import CODE_VERSION, GROUP
from tile_assets.assets.failures import scene_failure
from tile_assets.core.batches import BatchPlan, plan_scene_batches
from tile_assets.core.cache import TileCache
from tile_assets.core.catalog import read_parquet, write_parquet
from tile_assets.core.errors import TileAssetsError
from tile_assets.core.findings_table import findings_table
from tile_assets.core.inference import run_batch
from tile_assets.core.keys import model_key
from tile_assets.core.models.base import TileModel
from tile_assets.core.overview_pass import full_image_findings
from tile_assets.core.scene_findings import CachedScene
from tile_assets.core.scene_merge import MergeOptions
from tile_assets.core.tables import tile_results_frame
from tile_assets.core.tiling import manifest_windows
from tile_assets.core.types import GridSpec, SceneInfo, TileResult, TileWindow
from tile_assets.executors import runs_in_process
from tile_assets.partitions import scenes
from tile_assets.resources import ImageryStore, TileModelResource

_PIXEL_BOX = "of the merged box, in scene pixels"
_LONLAT = "of the box in WGS84 degrees (empty when the scene has no georeferencing)"
FINDINGS_SCHEMA = dg.TableSchema(
    columns=[
        dg.TableColumn("scene_key", "string", "partition key of the scene"),
        dg.TableColumn("tile_id", "string", "tile the finding came from (after merge: the kept one)"),
        dg.TableColumn("label", "string", "what was found, e.g. bright_object, vegetation_patch"),
        dg.TableColumn("score", "float", "model confidence, 0 to 1"),
        dg.TableColumn("px_x0", "float", f"left edge {_PIXEL_BOX}"),
        dg.TableColumn("px_y0", "float", f"top edge {_PIXEL_BOX}"),
        dg.TableColumn("px_x1", "float", f"right edge {_PIXEL_BOX}"),
        dg.TableColumn("px_y1", "float", f"bottom edge {_PIXEL_BOX}"),
        dg.TableColumn("area_px", "float", "object area in pixels"),
        dg.TableColumn("model", "string", "tile model name"),
        dg.TableColumn("model_version", "string", "tile model version"),
        dg.TableColumn("attributes", "string", "model-specific attributes, as JSON"),
        dg.TableColumn("coord_space", "string", "'crs' when geometry is in the scene CRS, 'pixel' otherwise"),
        dg.TableColumn("lon_min", "float", f"west bound {_LONLAT}"),
        dg.TableColumn("lat_min", "float", f"south bound {_LONLAT}"),
        dg.TableColumn("lon_max", "float", f"east bound {_LONLAT}"),
        dg.TableColumn("lat_max", "float", f"north bound {_LONLAT}"),
        dg.TableColumn("geometry", "geometry", "the box as a polygon (WKB, GeoParquet)"),
    ]
)
"""Columns of `findings.parquet` (GeoParquet), shown on the asset page."""

INFERENCE_POOL = "tile_inference"
PROGRESS_INTERVAL_S = 2.0
"""A batch logs its progress at most this often while it runs, and at its end: each line
is an event-log write (several ms on SQLite), and the step's start is an event already."""
MAX_RETRIES = 3
INFERENCE_RETRY = dg.RetryPolicy(
    max_retries=MAX_RETRIES, delay=1.0, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS
)


class BatchingConfig(dg.Config):
    """About `target_steps` inference steps per scene, at most `max_tiles_per_batch` tiles each.

    The default of 4 is twice the default `tile_inference` pool limit (2 in
    dagster.yaml): each step costs a process launch and decodes the blocks it
    shares with its neighbours, and a killed batch loses at most one cache
    chunk of work whatever its size. Raise it with the pool limit.
    """

    target_steps: int = 4
    max_tiles_per_batch: int = 1024


class MergeConfig(dg.Config):
    """How duplicates in tile overlaps are merged (SAHI's postprocess options), and the full-image pass.

    `border_aware`: a finding cut by its tile's edge gives way to the whole
    view an overlapping tile has of the same object. `full_image_pass`: the
    model also sees the whole scene, downsampled to at most
    `full_image_max_side` pixels a side, and those findings are merged in
    (objects larger than a tile).
    """

    strategy: Literal["nms", "greedy_nmm", "none"] = "greedy_nmm"
    metric: Literal["iou", "ios"] = "ios"
    threshold: float = 0.5
    class_agnostic: bool = False
    border_aware: bool = True
    full_image_pass: bool = False
    full_image_max_side: int = 1024


def scene_cache(context: dg.OpExecutionContext, imagery: ImageryStore, model: TileModel, scene: SceneInfo) -> TileCache:
    """The tile cache of this source version and model identity, for this run group."""
    return TileCache(
        imagery.catalog_store(),
        imagery.catalog,
        model_key(model.name, model.version, model.params()),
        scene.fingerprint,
        run_group=context.run.root_run_id or context.run_id,
    )


@dg.op(out=dg.DynamicOut(dict))
def plan_batches(
    context: dg.OpExecutionContext,
    config: BatchingConfig,
    imagery: ImageryStore,
    tile_model: TileModelResource,
    source_images: dict,
    tiles: dict,
):
    """Cut the tiles the cache lacks into batches, one dynamic output (and step) per batch.

    Tiles already cached for this source version and model get no step (a
    rerun after a few failures runs a batch or two, not the whole scene):
    the merge takes them from the cache. Each batch carries the scene's
    description and grid spec, so its step has one input to load.
    """
    windows = manifest_windows(read_parquet(imagery.catalog_store(), tiles["uri"]))
    scene = SceneInfo.from_dict(source_images)
    cache = scene_cache(context, imagery, tile_model.load(), scene)
    todo = [w for w in windows if not cache.has(w)]
    plans = plan_scene_batches(scene, todo, config.target_steps, config.max_tiles_per_batch)
    context.log.info(
        f"{len(windows)} tiles: {len(windows) - len(todo)} already cached, {len(todo)} to infer in {len(plans)} batches"
    )
    for plan in plans:
        batch = {"plan": plan.to_dict(), "scene": source_images, "spec": tiles["spec"]}
        yield dg.DynamicOutput(batch, mapping_key=plan.batch_id)


@dg.op(pool=INFERENCE_POOL, retry_policy=INFERENCE_RETRY)
def infer_batch(
    context: dg.OpExecutionContext,
    imagery: ImageryStore,
    tile_model: TileModelResource,
    batch: dict,
) -> dict:
    """Run the tile model over one batch, reading only its windows; failed tiles become rows.

    Fails the scene (recorded in status.json, not retried) when the source
    changed since `source_images` described it; transient failures are
    retried by the policy and fail the scene once retries are exhausted.
    """
    scene = SceneInfo.from_dict(batch["scene"])
    spec = GridSpec.from_dict(batch["spec"])
    last = context.retry_number >= MAX_RETRIES
    try:
        return infer_plan(context, imagery, tile_model, scene, spec, BatchPlan.from_dict(batch["plan"]), last)
    except TileAssetsError as exc:
        raise scene_failure(imagery, scene.partition_key, "tile_findings", exc, retries_left=not last) from exc


def infer_plan(
    context: dg.OpExecutionContext,
    imagery: ImageryStore,
    tile_model: TileModelResource,
    scene: SceneInfo,
    spec: GridSpec,
    plan: BatchPlan,
    final_attempt: bool,
) -> dict:
    """One batch through the model and the scene's tile cache, with per-tile progress in the run's log.

    Returns the batch's counts and failure rows; its successes are in the cache.
    """
    model = tile_model.load()
    cache = scene_cache(context, imagery, model, scene)

    logged_at = time.monotonic()

    def progress(done: int, failed: int, total: int) -> None:
        nonlocal logged_at
        now = time.monotonic()
        if done < total and now - logged_at < PROGRESS_INTERVAL_S:
            return
        logged_at = now
        context.log.info(f"batch {plan.batch_id}: {done}/{total} tiles done, {failed} failed")

    report = run_batch(
        imagery.store_for(scene.uri),
        scene,
        plan,
        spec,
        model,
        cache,
        final_attempt=final_attempt,
        on_progress=progress,
        predict_timeout_s=tile_model.timeout(),
        read_ahead=runs_in_process(context.run.run_config),
    )
    return {**report.summary(), "model": model.name, "model_version": model.version}


def infer_lost(
    context: dg.OpExecutionContext,
    imagery: ImageryStore,
    tile_model: TileModelResource,
    scene: SceneInfo,
    tiles: dict,
    lost: tuple[TileWindow, ...],
    failed: dict[str, TileResult],
) -> None:
    """Infer tiles in no cache file and no failure row: successes go to their batch's cache folder, failures join `failed`.

    Such tiles belong to batches a re-execution lost: from failure, Dagster
    re-runs only the steps a killed parent logged, never the batches that
    had not started. They are inferred here rather than left out.
    """
    try:
        spec = GridSpec.from_dict(tiles["spec"])
        settled = infer_plan(context, imagery, tile_model, scene, spec, BatchPlan("merge", lost), True)
    except TileAssetsError as exc:
        raise scene_failure(imagery, scene.partition_key, "tile_findings", exc, retries_left=False) from exc
    failed.update((row["tile_id"], TileResult.from_dict(row)) for row in settled["failed"])
    context.log.warning(
        f"{settled['tiles_inferred']} tile(s) were in no batch and not cached (batches a "
        "re-execution lost); inferred in this step"
    )


def full_image_table(
    context: dg.OpExecutionContext, imagery: ImageryStore, model: TileModel, scene: SceneInfo, config: MergeConfig
) -> tuple[pa.Table | None, dict]:
    """The full-image pass's findings when enabled, and what became of it.

    Optional extra evidence: if it fails, the tile findings still stand.
    """
    outcome: dict = {"enabled": config.full_image_pass}
    if not config.full_image_pass:
        return None, outcome
    try:
        extra = full_image_findings(imagery.store_for(scene.uri), scene, model, config.full_image_max_side)
    except TileAssetsError as exc:
        context.log.warning(f"full-image pass failed; merging tile findings only: {exc}")
        outcome.update(status="failed", error=str(exc))
        return None, outcome
    outcome.update(status="ok", findings=len(extra))
    return findings_table(extra), outcome


@dg.op
def merge_findings(
    context: dg.OpExecutionContext,
    config: MergeConfig,
    imagery: ImageryStore,
    tile_model: TileModelResource,
    source_images: dict,
    tiles: dict,
    reports: list[dict],
) -> dg.Output[dict]:
    """Merge findings across tile overlaps and write findings and per-tile status tables.

    Every tile of the manifest gets a result: from the cache, from a
    batch's failure rows, or inferred here when a re-execution lost its
    batch (`infer_lost`). Each cache file is read once; findings are merged
    and written a tile row at a time (`CachedScene`).
    """
    key = source_images["partition_key"]
    scene = SceneInfo.from_dict(source_images)
    store = imagery.catalog_store()
    windows = manifest_windows(read_parquet(store, tiles["uri"]))
    model = tile_model.load()
    failed = {row["tile_id"]: TileResult.from_dict(row) for report in reports for row in report["failed"]}
    extra, full_image = full_image_table(context, imagery, model, scene, config)
    findings_uri = imagery.scene_uri(key, "findings.parquet")
    options = MergeOptions(
        config.strategy, config.metric, config.threshold, config.class_agnostic, config.border_aware
    )
    cache = scene_cache(context, imagery, model, scene)
    with CachedScene(windows, store, findings_uri) as gathered:
        gathered.add(cache)
        lost = gathered.missing(failed)
        if lost:
            infer_lost(context, imagery, tile_model, scene, tiles, lost, failed)
            gathered.add(cache.for_batch(lost))  # only the folder those tiles were written to
        merged = gathered.merge_into(scene, failed, options, extra, cache.identity)
    lost_ids = {w.tile_id for w in lost}
    inferred_here = sum(r.tile_id in lost_ids and r.status == "ok" for r in merged.results)
    results = merged.results
    results_uri = imagery.scene_uri(key, "tile_results.parquet")
    write_parquet(store, results_uri, tile_results_frame(results, merged.findings_per_tile))
    failed_count = sum(r.status == "failed" for r in results)
    summary = {
        "findings_uri": findings_uri,
        "tile_results_uri": results_uri,
        "findings": merged.findings,
        "findings_before_merge": merged.findings_before_merge,
        "counts_by_label": merged.counts_by_label,
        "tiles_planned": len(results),
        "tiles_ok": len(results) - failed_count,
        "tiles_failed": failed_count,
        "tiles_inferred": sum(r.status == "ok" and not r.from_cache for r in results),
        "tiles_from_cache": sum(r.from_cache for r in results),
        "coverage": (len(results) - failed_count) / len(results) if results else 1.0,
        "merge": config.model_dump(),
        "full_image_pass": full_image,
        "model": model.name,
        "model_version": model.version,
    }
    context.log.info(
        f"{merged.findings_before_merge} raw findings merged to {merged.findings}; {failed_count} tile(s) failed"
    )
    return dg.Output(
        summary,
        metadata={
            "findings": merged.findings,
            "dagster/row_count": merged.findings,
            "findings_before_merge": merged.findings_before_merge,
            "counts_by_label": dg.MetadataValue.json(summary["counts_by_label"]),
            "tiles_inferred": summary["tiles_inferred"],
            "tiles_from_cache": summary["tiles_from_cache"],
            "tiles_inferred_in_merge": inferred_here,
            "merge_mode": "updated" if merged.updated else "whole scene",
            "tiles_failed": summary["tiles_failed"],
            "coverage": round(summary["coverage"], 4),
            "findings_path": dg.MetadataValue.path(findings_uri),
            "tile_results_path": dg.MetadataValue.path(results_uri),
        },
    )


@dg.graph_asset(
    partitions_def=scenes,
    group_name=GROUP,
    code_version=CODE_VERSION,
    kinds={"python", "geoparquet"},
    owners=["team:imagery"],
    metadata={"dagster/column_schema": FINDINGS_SCHEMA},
)
def tile_findings(source_images: dict, tiles: dict) -> dict:
    """Findings of the per-tile model over every tile, merged across tile borders.

    Tiles are cut into batches; each batch is one step in pool
    `tile_inference`, retried with exponential backoff on transient errors, and
    reads its own windows straight from the source. A tile that fails
    permanently becomes a failure row; its batch goes on. Results are cached
    per tile by (source fingerprint, window, model), so a rerun plans batches
    only for missing or failed tiles and takes the rest from the cache. A finding cut by a tile edge gives way to the
    whole view an overlapping tile has; duplicates in tile overlaps are then
    merged (greedy NMM on IoS by default), optionally together with the
    findings of a downsampled full-image pass. Writes `findings.parquet`
    (GeoParquet) and `tile_results.parquet`.
    """
    reports = plan_batches(source_images, tiles).map(infer_batch)
    return merge_findings(source_images, tiles, reports.collect())
