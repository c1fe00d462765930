"""The tile manifest of a scene: grid windows with their bounds and valid-pixel fraction."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from affine import Affine
from pyproj import CRS
from rasterio.io import DatasetReader

from tile_assets.core.catalog import PARQUET_TYPE
from tile_assets.core.errors import StoreError
from tile_assets.core.grid import auto_tile_size, plan_grid
from tile_assets.core.raster import MaskSummary, mask_summary
from tile_assets.core.store import Store
from tile_assets.core.types import GridSpec, SceneInfo, TileWindow

log = logging.getLogger(__name__)

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


def valid_fractions(summary: MaskSummary, windows: Sequence[TileWindow]) -> np.ndarray:
    """`valid_fraction` of every window at once, from summed-area tables of the summary.

    Exactly 0.0 for a window with no valid cell (counted in integers, so
    pruning never depends on rounding); otherwise the mean of its cells,
    equal to `valid_fraction`'s up to float rounding.
    """
    rows, cols = summary.valid.shape
    col_off = np.fromiter((w.col_off for w in windows), dtype=np.float64, count=len(windows))
    row_off = np.fromiter((w.row_off for w in windows), dtype=np.float64, count=len(windows))
    width = np.fromiter((w.width for w in windows), dtype=np.float64, count=len(windows))
    height = np.fromiter((w.height for w in windows), dtype=np.float64, count=len(windows))
    x0 = np.clip(np.floor(col_off / summary.scale_x), 0, cols).astype(np.int64)
    y0 = np.clip(np.floor(row_off / summary.scale_y), 0, rows).astype(np.int64)
    x1 = np.clip(np.ceil((col_off + width) / summary.scale_x), x0, cols).astype(np.int64)
    y1 = np.clip(np.ceil((row_off + height) / summary.scale_y), y0, rows).astype(np.int64)

    def box_sums(values: np.ndarray, dtype: type) -> np.ndarray:
        # Summed into the table: 8 MB at 1024 x 1024, plus the copy numpy makes for the in-place
        # pass along rows, 16 MB in all where the cast, two cumsums and the table took 32.
        table = np.zeros((rows + 1, cols + 1), dtype=dtype)
        inner = table[1:, 1:]
        np.cumsum(values, axis=0, dtype=dtype, out=inner)
        np.cumsum(inner, axis=1, out=inner)
        return table[y1, x1] - table[y0, x1] - table[y1, x0] + table[y0, x0]

    cells = (x1 - x0) * (y1 - y0)
    nonzero = box_sums(summary.valid > 0, np.int64)
    total = box_sums(summary.valid, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        fractions = np.where(nonzero > 0, np.clip(total / cells, 0.0, 1.0), 0.0)
    return fractions


def window_bounds(transform: Affine | None, windows: Sequence[TileWindow]) -> np.ndarray:
    """Bounds of every window in the scene CRS, or in pixels without a transform: (n, 4) minx, miny, maxx, maxy."""
    x0 = np.fromiter((w.col_off for w in windows), dtype=np.float64, count=len(windows))
    y0 = np.fromiter((w.row_off for w in windows), dtype=np.float64, count=len(windows))
    x1 = x0 + np.fromiter((w.width for w in windows), dtype=np.float64, count=len(windows))
    y1 = y0 + np.fromiter((w.height for w in windows), dtype=np.float64, count=len(windows))
    if transform is None:
        return np.column_stack([x0, y0, x1, y1])
    a, b, c, d, e, f = transform[:6]
    corners = [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
    xs = np.stack([x * a + y * b + c for x, y in corners])
    ys = np.stack([x * d + y * e + f for x, y in corners])
    return np.column_stack([xs.min(axis=0), ys.min(axis=0), xs.max(axis=0), ys.max(axis=0)])


def build_manifest(ds: DatasetReader, scene: SceneInfo, spec: GridSpec) -> tuple[pd.DataFrame, int]:
    """Every tile of the grid that holds at least one valid pixel, and how many were pruned.

    Fractions and bounds are computed for all windows at once, so a huge
    scene's tens of thousands of windows cost arrays, not a Python row each.
    """
    windows = plan_grid(scene.width, scene.height, spec)
    fractions = valid_fractions(mask_summary(ds), windows)
    transform = Affine(*scene.transform) if scene.transform else None
    bounds = window_bounds(transform, windows)
    kept = np.flatnonzero(fractions > 0.0)
    chosen = [windows[i] for i in kept.tolist()]
    columns: dict[str, object] = {"tile_id": [w.tile_id for w in chosen]}
    for name in ("row", "col", "col_off", "row_off", "width", "height"):
        columns[name] = np.fromiter((getattr(w, name) for w in chosen), dtype=np.int64, count=len(chosen))
    for i, name in enumerate(("minx", "miny", "maxx", "maxy")):
        columns[name] = bounds[kept, i]
    columns["valid_fraction"] = fractions[kept]
    return pd.DataFrame(columns, columns=MANIFEST_COLUMNS), len(windows) - len(kept)


_BASIS_KEY = b"tile_assets:basis"
"""Parquet key-value metadata of tiles.parquet: what the manifest was built from, and its pruned count."""


def write_manifest(
    store: Store, uri: str, manifest: pd.DataFrame, pruned: int, basis: Mapping[str, Any]
) -> None:
    """Write the manifest as Parquet with the `basis` it was built from (source fingerprint, grid,
    code version) and its pruned count, so a later run of the same basis can take it as it is."""
    table = pa.Table.from_pandas(manifest, preserve_index=False)
    recorded = json.dumps({"basis": basis, "pruned": pruned}, sort_keys=True).encode()
    sink = pa.BufferOutputStream()
    pq.write_table(table.replace_schema_metadata({**(table.schema.metadata or {}), _BASIS_KEY: recorded}), sink)
    store.write_bytes(uri, sink.getvalue().to_pybytes(), content_type=PARQUET_TYPE)


def stored_manifest(store: Store, uri: str, basis: Mapping[str, Any]) -> tuple[pd.DataFrame, int] | None:
    """The manifest at `uri` and its pruned count if it was built from this very `basis`, else None.

    Building a manifest reads the scene's mask (the whole scene, decimated,
    when it has nodata and no overviews); a rerun of an unchanged scene with
    the same grid (the retry schedule, a rerun after failed tiles) gets the
    same manifest back instead. None also when the file is missing,
    unreadable or was written without a basis (logged when unreadable).
    """
    if not store.exists(uri):
        return None
    try:
        table = pq.read_table(pa.BufferReader(store.read_bytes(uri)))
        recorded = json.loads((table.schema.metadata or {}).get(_BASIS_KEY, b"null"))
    except (StoreError, pa.ArrowException, ValueError) as exc:
        log.warning("%s: unreadable (%s); the manifest is built again", uri, exc)
        return None
    same = json.loads(json.dumps(basis, sort_keys=True))
    if not isinstance(recorded, dict) or recorded.get("basis") != same:
        return None
    return table.to_pandas(), int(recorded["pruned"])


def manifest_windows(manifest: pd.DataFrame) -> list[TileWindow]:
    """The tile windows of a manifest, in its order."""
    cols = ["tile_id", "row", "col", "col_off", "row_off", "width", "height"]
    # Columns as Python lists (str and int), zipped: a third of the time of pandas' itertuples.
    return [TileWindow(*values) for values in zip(*(manifest[c].tolist() for c in cols), strict=True)]
