"""The full-image pass: the whole scene, downsampled, through the same model as the tiles.

Tiles see objects up to about a tile in size; an object larger than that
(a field, a lake, a building complex on a fine-resolution image) only ever
appears in pieces. SAHI therefore adds a "standard prediction" on the whole
image. Here that pass reads the scene decimated to at most `max_side` pixels
a side (memory bounded whatever the scene size, GDAL uses overviews when the
file has them), runs the model on it as on one tile, scales the boxes back
to scene pixels and tags them, ready to be merged with the tile findings.
"""

from __future__ import annotations

import logging
import math
from dataclasses import replace

import numpy as np
from rasterio.enums import Resampling
from rasterio.errors import RasterioError
from rasterio.io import DatasetReader

from tile_assets.core.errors import RasterReadError
from tile_assets.core.image import TileImage
from tile_assets.core.models.base import TileModel

# The tile reader's rule for full brightness, so overview and tiles are scaled alike.
from tile_assets.core.raster import scale_max_of, band_names, data_indexes, open_raster
from tile_assets.core.store import Store
from tile_assets.core.types import Finding, SceneInfo, TileWindow

log = logging.getLogger(__name__)

OVERVIEW_TILE_ID = "overview"
"""`tile_id` of every finding of the full-image pass."""
DEFAULT_MAX_SIDE = 1024


def read_overview(ds: DatasetReader, max_side: int = DEFAULT_MAX_SIDE) -> TileImage:
    """The whole scene as one `TileImage` at most `max_side` pixels a side (averaged, not sampled).

    A pixel is invalid when any source pixel under it is invalid, so the
    nodata collar never bleeds into the averages the model sees. The window
    has the downsampled size; `scene_scale` recovers the factor.
    """
    if max_side < 16:
        raise ValueError(f"max_side must be at least 16, got {max_side}")
    scale = min(1.0, max_side / max(ds.width, ds.height))
    width, height = max(1, math.floor(ds.width * scale)), max(1, math.floor(ds.height * scale))
    indexes = data_indexes(ds)
    resampling = Resampling.nearest if scale == 1.0 else Resampling.average
    try:
        values = ds.read(indexes, out_shape=(len(indexes), height, width), resampling=resampling)
        mask = ds.dataset_mask(out_shape=(height, width), resampling=resampling)
    except RasterioError as exc:
        raise RasterReadError(ds.name, f"overview read failed: {exc}") from exc
    invalid = mask < 255
    if values.dtype.kind == "f":
        invalid |= ~np.isfinite(values).all(axis=0)
    return TileImage(
        window=TileWindow(OVERVIEW_TILE_ID, 0, 0, 0, 0, width, height),
        data=np.ma.MaskedArray(values, mask=np.broadcast_to(invalid, values.shape).copy()),
        colorinterp=band_names(ds),
        scale_max=scale_max_of(values, ~invalid),
    )


def scene_scale(scene: SceneInfo, overview: TileImage) -> tuple[float, float]:
    """Scene pixels per overview pixel, along x and y."""
    return scene.width / overview.window.width, scene.height / overview.window.height


def full_image_findings(
    store: Store, scene: SceneInfo, model: TileModel, max_side: int = DEFAULT_MAX_SIDE
) -> list[Finding]:
    """Findings of `model` on the downsampled whole scene, in scene pixels.

    Each is stamped with tile_id "overview", the model's name and version,
    and `attributes["overview_scale"]` (scene pixels per pixel the model
    saw); `area_px` is scaled to scene pixels. Raises what the read or the
    model raises (typed errors); the caller decides whether a failed pass
    fails the scene.
    """
    with open_raster(store, scene.uri) as ds:
        overview = read_overview(ds, max_side)
    (prediction,) = model.predict([overview])
    sx, sy = scene_scale(scene, overview)
    findings = [
        replace(
            f,
            box=(f.box[0] * sx, f.box[1] * sy, f.box[2] * sx, f.box[3] * sy),
            area_px=f.area_px * sx * sy,
            tile_id=OVERVIEW_TILE_ID,
            model=model.name,
            model_version=model.version,
            attributes={**f.attributes, "overview_scale": round(max(sx, sy), 6)},
        )
        for f in prediction.findings
    ]
    log.info(
        "%s: full-image pass at %dx%d (1/%.2f) found %d",
        scene.partition_key,
        overview.window.width,
        overview.window.height,
        max(sx, sy),
        len(findings),
    )
    return findings
