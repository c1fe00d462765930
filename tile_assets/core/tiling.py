"""The tile manifest of a scene: grid windows with their bounds and valid-pixel fraction."""

from __future__ import annotations

import pandas as pd
from affine import Affine
from pyproj import CRS
from rasterio.io import DatasetReader

from tile_assets.core.grid import auto_tile_size, plan_grid
from tile_assets.core.raster import mask_summary, valid_fraction
from tile_assets.core.types import GridSpec, SceneInfo, TileWindow

MANIFEST_COLUMNS = [
    "tile_id", "row", "col", "col_off", "row_off", "width", "height",
    "minx", "miny", "maxx", "maxy", "valid_fraction",
]


def ground_resolution_m(scene: SceneInfo) -> float | None:
    """Metres per pixel when the CRS is projected in metres; None otherwise (degrees, pixels)."""
    if not scene.crs or not scene.resolution:
        return None
    crs = CRS.from_user_input(scene.crs)
    if not crs.is_projected or crs.axis_info[0].unit_name not in ("metre", "meter"):
        return None
    return float(scene.resolution[0])


def resolve_spec(scene: SceneInfo, tile_size: int, overlap: float, edge: str) -> GridSpec:
    """The grid for a scene; a tile size of 0 means "choose from size and resolution"."""
    size = tile_size or auto_tile_size(scene.width, scene.height, ground_resolution_m(scene))
    return GridSpec(tile_size=size, overlap=overlap, edge=edge)  # type: ignore[arg-type]


def window_bounds(transform: Affine | None, w: TileWindow) -> tuple[float, float, float, float]:
    """A window's bounds in the scene CRS, or in pixels when there is no transform."""
    x0, y0, x1, y1 = w.col_off, w.row_off, w.col_off + w.width, w.row_off + w.height
    if transform is None:
        return float(x0), float(y0), float(x1), float(y1)
    xs, ys = zip(*(transform * (x, y) for x, y in ((x0, y0), (x1, y0), (x1, y1), (x0, y1))))
    return min(xs), min(ys), max(xs), max(ys)


def build_manifest(ds: DatasetReader, scene: SceneInfo, spec: GridSpec) -> tuple[pd.DataFrame, int]:
    """Every tile of the grid that holds at least one valid pixel, and how many were pruned."""
    windows = plan_grid(scene.width, scene.height, spec)
    summary = mask_summary(ds)
    transform = Affine(*scene.transform) if scene.transform else None
    rows = []
    pruned = 0
    for w in windows:
        fraction = valid_fraction(summary, w)
        if fraction <= 0.0:
            pruned += 1
            continue
        rows.append({**w.to_dict(), **dict(zip(("minx", "miny", "maxx", "maxy"), window_bounds(transform, w))), "valid_fraction": fraction})
    return pd.DataFrame(rows, columns=MANIFEST_COLUMNS), pruned


def manifest_windows(manifest: pd.DataFrame) -> list[TileWindow]:
    """The tile windows of a manifest, in its order."""
    cols = ["tile_id", "row", "col", "col_off", "row_off", "width", "height"]
    return [
        TileWindow(str(t), int(r), int(c), int(x), int(y), int(w), int(h))
        for t, r, c, x, y, w, h in manifest[cols].itertuples(index=False)
    ]
