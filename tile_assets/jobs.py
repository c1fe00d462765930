"""Jobs: one scene through every per-scene asset, and the catalog refresh."""

import dagster as dg

from tile_assets.assets.catalog import imagery_catalog
from tile_assets.assets.findings import tile_findings
from tile_assets.assets.scenes import source_images
from tile_assets.assets.synthesis import scene_synthesis
from tile_assets.assets.tiles import tiles

process_scene = dg.define_asset_job(
    "process_scene",
    selection=dg.AssetSelection.assets(source_images, tiles, tile_findings, scene_synthesis),
    description="Validate, tile, analyze, merge and synthesize one scene partition.",
)

refresh_catalog = dg.define_asset_job(
    "refresh_catalog",
    selection=dg.AssetSelection.assets(imagery_catalog),
    description="Rebuild the STAC Collection and scenes.parquet from every scene.",
)
