"""The pipeline's core path on one image, without Dagster: what the assets do, step by step.

describe (source_images) → grid + pruned manifest (tiles) → run_batch, the
tile reader and the model (infer_batch) → prefer whole views, then merge
(merge_findings) → synthesize. Tests of models and of tile-border handling
run real images through exactly these functions.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from tile_assets.core.batches import BatchPlan
from tile_assets.core.borders import prefer_whole
from tile_assets.core.grid import plan_grid
from tile_assets.core.inference import run_batch
from tile_assets.core.keys import scene_key
from tile_assets.core.merge import merge_findings
from tile_assets.core.models.base import TileModel
from tile_assets.core.overview_pass import full_image_findings
from tile_assets.core.raster import describe, open_raster
from tile_assets.core.store import LocalStore
from tile_assets.core.synthesis import synthesize
from tile_assets.core.tiling import build_manifest, manifest_windows
from tile_assets.core.types import Finding, GridSpec, SceneInfo, TileResult, TileWindow
from tile_assets_tests.fixtures.findings import arrow_findings

STORE = LocalStore()


@dataclass(frozen=True)
class SceneRun:
    """Everything one run of the core path produced for a scene."""

    scene: SceneInfo
    spec: GridSpec
    manifest: pd.DataFrame
    pruned: int
    results: list[TileResult]
    raw: list[Finding]
    merged: list[Finding]
    synthesis: dict

    @property
    def windows(self) -> dict[str, TileWindow]:
        return {w.tile_id: w for w in manifest_windows(self.manifest)}


def describe_scene(path: Path) -> SceneInfo:
    """`source_images` for a local file: the validated scene description."""
    uri = str(path)
    with open_raster(STORE, uri) as ds:
        return describe(ds, uri, scene_key(uri), STORE.fingerprint(uri), STORE.head(uri).size)


def run_scene(
    path: Path,
    model: TileModel,
    spec: GridSpec,
    *,
    border_aware: bool = True,
    full_image_pass: bool = False,
    overview_max_side: int = 1024,
    strategy: str = "greedy_nmm",
    metric: str = "ios",
    threshold: float = 0.5,
) -> SceneRun:
    """Run `model` over `path` cut by `spec`, merging as `merge_findings` does."""
    scene = describe_scene(path)
    with open_raster(STORE, scene.uri) as ds:
        manifest, pruned = build_manifest(ds, scene, spec)
    windows = manifest_windows(manifest)
    report = run_batch(STORE, scene, BatchPlan("b00000", tuple(windows)), spec, model)
    results = list(report.results)
    raw = [f for r in results for f in r.findings]
    candidates = list(raw)
    if full_image_pass:
        candidates += full_image_findings(STORE, scene, model, overview_max_side)
    if border_aware:
        by_id = {w.tile_id: w for w in windows}
        candidates = prefer_whole(candidates, by_id, scene.width, scene.height)
    merged = merge_findings(candidates, strategy, metric, threshold)  # type: ignore[arg-type]
    synthesis = synthesize(
        scene,
        manifest,
        results,
        [arrow_findings(merged)],
        model_name=model.name,
        model_version=model.version,
    )
    return SceneRun(scene, spec, manifest, pruned, results, raw, merged, synthesis)


def untiled_findings(path: Path, model: TileModel) -> list[Finding]:
    """The model on the whole image as one tile: the reference tiling should reproduce."""
    scene = describe_scene(path)
    spec = GridSpec(tile_size=max(scene.width, scene.height, 16), overlap=0)
    (window,) = plan_grid(scene.width, scene.height, spec)
    report = run_batch(STORE, scene, BatchPlan("b00000", (window,)), spec, model)
    (result,) = report.results
    assert result.status == "ok", result.error_message
    return list(result.findings)
