"""tile_assets: tiled imagery inference as Dagster software-defined assets."""
