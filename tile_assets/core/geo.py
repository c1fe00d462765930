"""Pixel ↔ scene CRS ↔ WGS84: the few conversions synthesis and the catalog share.

Scene pixel coordinates are (x right, y down); the scene's affine transform
takes them to its CRS, and pyproj takes CRS coordinates to lon/lat. Kept in
one place so every output (synthesis JSON, GeoParquet, STAC) agrees.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pyproj import CRS, Transformer
from rasterio.transform import Affine
from shapely.geometry import Polygon
from shapely.geometry.polygon import orient

from tile_assets.core.types import Box, SceneInfo

WGS84 = CRS.from_epsg(4326)


def scene_crs(scene: SceneInfo) -> CRS | None:
    """The scene's CRS parsed from its "EPSG:xxxx" or WKT string, None when absent."""
    return CRS.from_user_input(scene.crs) if scene.crs else None


def scene_affine(scene: SceneInfo) -> Affine | None:
    """The scene's pixel → CRS transform from its 6 coefficients (a, b, c, d, e, f)."""
    if scene.transform is None:
        return None
    return Affine(*scene.transform[:6])


def pixel_to_crs(
    transform: Affine, xs: Sequence[float] | np.ndarray, ys: Sequence[float] | np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates (x right, y down) to scene CRS coordinates."""
    x = np.asarray(xs, dtype=np.float64)
    y = np.asarray(ys, dtype=np.float64)
    return (
        transform.a * x + transform.b * y + transform.c,
        transform.d * x + transform.e * y + transform.f,
    )


def crs_to_wgs84(
    crs: CRS, xs: Sequence[float] | np.ndarray, ys: Sequence[float] | np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Scene CRS coordinates to (lon, lat) degrees."""
    transformer = Transformer.from_crs(crs, WGS84, always_xy=True)
    lon, lat = transformer.transform(np.asarray(xs, np.float64), np.asarray(ys, np.float64))
    return np.asarray(lon), np.asarray(lat)


def pixel_to_lonlat(
    scene: SceneInfo, xs: Sequence[float] | np.ndarray, ys: Sequence[float] | np.ndarray
) -> tuple[np.ndarray, np.ndarray] | None:
    """Pixel coordinates to (lon, lat), or None when the scene is not georeferenced."""
    crs, transform = scene_crs(scene), scene_affine(scene)
    if crs is None or transform is None:
        return None
    return crs_to_wgs84(crs, *pixel_to_crs(transform, xs, ys))


def box_polygon(box: Box, transform: Affine | None = None) -> Polygon:
    """A pixel box as a counter-clockwise polygon, in the CRS when a transform is given.

    All four corners go through the transform, so rotated or sheared grids
    give the true quadrilateral rather than an axis-aligned box.
    """
    x0, y0, x1, y1 = box
    xs, ys = [x0, x1, x1, x0], [y0, y0, y1, y1]
    if transform is not None:
        cx, cy = pixel_to_crs(transform, xs, ys)
        xs, ys = cx.tolist(), cy.tolist()
    return orient(Polygon(zip(xs, ys, strict=True)), sign=1.0)


def footprint_wgs84(scene: SceneInfo) -> Polygon | None:
    """The image outline in lon/lat from its four transformed corners, None without georef.

    Four corners are exact for the affine grid in its own CRS and close
    enough in WGS84 for scene-sized footprints; scenes crossing the
    antimeridian are not split.
    """
    crs, transform = scene_crs(scene), scene_affine(scene)
    if crs is None or transform is None:
        return None
    xs = [0.0, float(scene.width), float(scene.width), 0.0]
    ys = [0.0, 0.0, float(scene.height), float(scene.height)]
    lon, lat = crs_to_wgs84(crs, *pixel_to_crs(transform, xs, ys))
    return orient(Polygon(zip(lon.tolist(), lat.tolist(), strict=True)), sign=1.0)
