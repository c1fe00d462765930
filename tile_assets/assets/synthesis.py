"""`scene_synthesis`: one description per scene, its preview and its STAC Item."""


import base64
import io
from datetime import datetime, timezone

import dagster as dg
from PIL import Image

from tile_assets.assets import CODE_VERSION, GROUP
from tile_assets.assets.failures import record_scene_status, scene_failure
from tile_assets.core.catalog import (
    read_parquet,
    scene_item,
    write_json,
    write_stac_json,
)
from tile_assets.core.errors import ModelError, TileAssetsError, TransientModelError
from tile_assets.core.preview import render_preview
from tile_assets.core.raster import open_raster
from tile_assets.core.store import VersionGuard
from tile_assets.core.synthesis import synthesize
from tile_assets.core.synthesis_llm import describe_with_bedrock
from tile_assets.core.tables import (
    PREVIEW_COLUMNS,
    SYNTHESIS_COLUMNS,
    ParquetBatches,
    results_from_frame,
)
from tile_assets.core.types import SceneInfo
from tile_assets.partitions import scenes
from tile_assets.resources import ImageryStore

THUMBNAIL_SIDE = 320


def thumbnail_markdown(png: bytes, alt: str) -> str:
    """A small inline PNG for the UI's markdown metadata (the full preview stays in the catalog)."""
    image = Image.open(io.BytesIO(png))
    image.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return f"![{alt}](data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()})"


class SynthesisConfig(dg.Config):
    """Optionally phrase the description with a Bedrock model, given only the merged facts (never pixels)."""

    llm_model_id: str = ""
    llm_region: str = ""


def llm_description(context: dg.AssetExecutionContext, config: SynthesisConfig, synthesis: dict) -> dict | None:
    """The Bedrock-written description, or None (not configured, or the model failed: logged)."""
    if not config.llm_model_id:
        return None
    try:
        return describe_with_bedrock(synthesis, config.llm_model_id, region=config.llm_region)
    except TransientModelError:
        raise
    except ModelError as exc:
        context.log.warning(f"Bedrock synthesis skipped, the deterministic description stands: {exc}")
        return None


@dg.asset(
    partitions_def=scenes,
    group_name=GROUP,
    code_version=CODE_VERSION,
    kinds={"stac", "png", "json"},
    owners=["team:imagery"],
)
def scene_synthesis(
    context: dg.AssetExecutionContext,
    config: SynthesisConfig,
    imagery: ImageryStore,
    source_images: dict,
    tiles: dict,
    tile_findings: dict,
) -> dg.Output[dict]:
    """One description of the scene, built from the tiles that succeeded.

    Counts by label after merge, cover fractions over the scene, where
    findings concentrate (3×3), notable objects with their locations, the
    tiles that failed and the coverage, plus a preview PNG (downsampled scene
    with boxes) and a STAC Item linking the source, findings and preview.
    Writes `synthesis.json`, `preview.png` and `item.json`. The description
    is deterministic; with `llm_model_id` set, a Bedrock model also phrases
    one from the merged facts alone (`llm_description`).
    """
    key = context.partition_key
    scene = SceneInfo.from_dict(source_images)
    store = imagery.catalog_store()
    manifest = read_parquet(store, tiles["uri"])
    results = results_from_frame(read_parquet(store, tile_findings["tile_results_uri"]))
    # Findings stream past twice, a record batch at a time (the synthesis counts them, the preview
    # draws them), without the attributes or the geometry: the step never holds them all.
    with ParquetBatches(store, tile_findings["findings_uri"]) as merged:
        synthesis = synthesize(
            scene,
            manifest,
            results,
            merged.batches(SYNTHESIS_COLUMNS),
            model_name=tile_findings.get("model", ""),
            model_version=tile_findings.get("model_version", ""),
        )
        written = llm_description(context, config, synthesis)
        if written is not None:
            synthesis["llm_description"] = written

        source = imagery.store_for(scene.uri)
        try:
            with open_raster(source, scene.uri) as ds:
                png = render_preview(
                    ds, merged.batches(PREVIEW_COLUMNS), synthesis["counts_by_label"]
                )
            VersionGuard(source, scene.uri, scene.source_version, scene.fingerprint).check()
        except TileAssetsError as exc:
            raise scene_failure(imagery, key, "scene_synthesis", exc) from exc
    preview_uri = imagery.scene_uri(key, "preview.png")
    store.write_bytes(preview_uri, png, "image/png")
    synthesis_uri = imagery.scene_uri(key, "synthesis.json")
    write_json(store, synthesis_uri, synthesis)

    modified = datetime.fromtimestamp(scene.last_modified, tz=timezone.utc)
    item_uri = imagery.scene_uri(key, "item.json")
    item = scene_item(
        scene,
        synthesis,
        {
            "item": item_uri,
            "findings": tile_findings["findings_uri"],
            "preview": preview_uri,
            "synthesis": synthesis_uri,
        },
        datetime=modified,
    )
    write_stac_json(store, item_uri, item)
    record_scene_status(
        imagery, key, {"status": "complete", "coverage": synthesis["coverage"], "item": item_uri}
    )
    context.log.info(synthesis["description"])
    return dg.Output(
        {"synthesis_uri": synthesis_uri, "item_uri": item_uri, "preview_uri": preview_uri,
         "coverage": synthesis["coverage"], "counts_by_label": synthesis["counts_by_label"]},
        metadata={
            "description": dg.MetadataValue.md(synthesis["description"]),
            "preview": dg.MetadataValue.md(thumbnail_markdown(png, key)),
            "counts_by_label": dg.MetadataValue.json(synthesis["counts_by_label"]),
            "coverage": round(synthesis["coverage"], 4),
            "tiles_failed": len(synthesis["failed_tiles"]),
            "preview_path": dg.MetadataValue.path(preview_uri),
            "stac_item": dg.MetadataValue.path(item_uri),
            "synthesis_path": dg.MetadataValue.path(synthesis_uri),
        },
    )
