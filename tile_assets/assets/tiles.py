"""`tiles`: the tile grid of each scene, nodata and transparent tiles pruned."""


from typing import Literal

import dagster as dg
import pandas as pd

from tile_assets.assets import CODE_VERSION, GROUP
from tile_assets.assets.failures import scene_failure
from tile_assets.core.errors import TileAssetsError, UnsupportedRasterError
from tile_assets.core.raster import open_raster
from tile_assets.core.store import VersionGuard
from tile_assets.core.tiling import MANIFEST_COLUMNS, build_manifest, resolve_spec, stored_manifest, write_manifest
from tile_assets.core.types import GridSpec, SceneInfo
from tile_assets.partitions import scenes
from tile_assets.resources import ImageryStore

_BOUNDS = "bound of the window in the scene CRS (pixels when the scene has no georeferencing)"
_TILE_COLUMNS: dict[str, tuple[str, str]] = {
    "tile_id": ("string", "grid row and column, e.g. r003c007; stable across reruns"),
    "row": ("int", "grid row, from the top"),
    "col": ("int", "grid column, from the left"),
    "col_off": ("int", "left pixel column of the window in the scene"),
    "row_off": ("int", "top pixel row of the window in the scene"),
    "width": ("int", "window width in pixels"),
    "height": ("int", "window height in pixels"),
    "minx": ("float", f"west {_BOUNDS}"),
    "miny": ("float", f"south {_BOUNDS}"),
    "maxx": ("float", f"east {_BOUNDS}"),
    "maxy": ("float", f"north {_BOUNDS}"),
    "valid_fraction": ("float", "share of the window's pixels that are valid (not nodata, alpha or mask)"),
}
TILES_SCHEMA = dg.TableSchema(
    columns=[dg.TableColumn(name, *_TILE_COLUMNS[name]) for name in MANIFEST_COLUMNS]
)
"""Columns of `tiles.parquet`, shown on the asset page; names come from the core manifest."""


class TilingConfig(dg.Config):
    """How scenes are cut. Edge tiles are shifted inward ("shift") so every tile is full size, or padded ("pad")."""

    tile_size: int = 512
    overlap: float = 0.2
    edge: Literal["shift", "pad"] = "shift"

    def describe(self) -> str:
        size = self.tile_size or "auto"
        return f"{size}px tiles, overlap {self.overlap}, edges {self.edge}"


@dg.asset(
    partitions_def=scenes,
    group_name=GROUP,
    code_version=CODE_VERSION,
    kinds={"rasterio", "parquet"},
    owners=["team:imagery"],
    metadata={"dagster/column_schema": TILES_SCHEMA},
)
def tiles(
    context: dg.AssetExecutionContext,
    config: TilingConfig,
    imagery: ImageryStore,
    source_images: dict,
) -> dg.Output[dict]:
    """The tile grid of the scene: one window per tile, with overlap.

    Tile size (default 512 px; 0 chooses it from image size and ground
    resolution) and overlap (ratio below 1, pixels from 1) are configurable.
    Edge tiles are shifted inward so every tile is full size; an image smaller
    than a tile gives one tile. Tiles with no valid pixel (nodata, alpha,
    internal mask, NaN) are pruned. Writes `scenes/<key>/tiles.parquet`: tile
    id (`r003c007`), row, col, window, bounds in the scene CRS, valid fraction.
    A run of the same source version (fingerprint), grid and code version
    keeps the tiles.parquet it finds instead of reading the mask again
    (`manifest_reused`).
    """
    key = context.partition_key
    scene = SceneInfo.from_dict(source_images)
    spec = resolve_spec(scene, config.tile_size, config.overlap, config.edge)
    uri = imagery.scene_uri(key, "tiles.parquet")
    basis = {"fingerprint": scene.fingerprint, "spec": spec.to_dict(), "code_version": CODE_VERSION}
    stored = stored_manifest(imagery.catalog_store(), uri, basis)
    if stored is None:
        manifest, pruned = cut_scene(imagery, key, scene, spec)
        write_manifest(imagery.catalog_store(), uri, manifest, pruned, basis)
    else:
        manifest, pruned = stored
    how = "kept: same source version, grid and code" if stored else "built"
    context.log.info(f"{len(manifest)} tiles ({pruned} empty pruned): {config.describe()}; manifest {how}")
    return dg.Output(
        {"uri": uri, "spec": spec.to_dict(), "tile_count": len(manifest), "pruned": pruned},
        metadata={
            "tile_count": len(manifest),
            "dagster/row_count": len(manifest),
            "pruned_empty_tiles": pruned,
            "tile_size": spec.tile_size,
            "overlap_px": spec.overlap_pixels(),
            "edge": spec.edge,
            "mean_valid_fraction": float(manifest["valid_fraction"].mean()) if len(manifest) else 0.0,
            "manifest": dg.MetadataValue.path(uri),
            "manifest_reused": stored is not None,
        },
    )


def cut_scene(imagery: ImageryStore, key: str, scene: SceneInfo, spec: GridSpec) -> tuple[pd.DataFrame, int]:
    """The scene's manifest and pruned count, read from its mask; a scene failure names what went wrong."""
    store = imagery.store_for(scene.uri)
    try:
        with open_raster(store, scene.uri) as ds:
            manifest, pruned = build_manifest(ds, scene, spec)
        VersionGuard(store, scene.uri, scene.source_version, scene.fingerprint).check()
        if manifest.empty:
            raise UnsupportedRasterError(scene.uri, "every pixel is nodata or transparent; nothing to analyze")
    except (TileAssetsError, ValueError) as exc:
        err = exc if isinstance(exc, TileAssetsError) else TileAssetsError(scene.uri, str(exc))
        raise scene_failure(imagery, key, "tiles", err) from exc
    return manifest, pruned
