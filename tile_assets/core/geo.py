"""Pixel ↔ scene CRS ↔ WGS84: the few conversions synthesis and the catalog share.

Scene pixel coordinates are (x right, y down); the scene's affine transform
takes them to its CRS, and pyproj takes CRS coordinates to lon/lat. Kept in
one place so every output (synthesis JSON, GeoParquet, STAC) agrees.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import shapely
from pyproj import CRS, Transformer
from rasterio.transform import Affine
from shapely.geometry import Polygon
from shapely.geometry.polygon import orient

from tile_assets.core.types import SceneInfo

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
    lon, lat = _to_wgs84(crs).transform(np.asarray(xs, np.float64), np.asarray(ys, np.float64))
    return np.asarray(lon), np.asarray(lat)


@lru_cache(maxsize=8)
def _to_wgs84(crs: CRS) -> Transformer:
    """One transformer per CRS: building it costs milliseconds, and findings are converted a row group at a time."""
    return Transformer.from_crs(crs, WGS84, always_xy=True)


def pixel_to_lonlat(
    scene: SceneInfo, xs: Sequence[float] | np.ndarray, ys: Sequence[float] | np.ndarray
) -> tuple[np.ndarray, np.ndarray] | None:
    """Pixel coordinates to (lon, lat), or None when the scene is not georeferenced."""
    crs, transform = scene_crs(scene), scene_affine(scene)
    if crs is None or transform is None:
        return None
    return crs_to_wgs84(crs, *pixel_to_crs(transform, xs, ys))


def box_corners(
    boxes: np.ndarray, transform: Affine | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The four corners of each pixel box (N, 4) as (N, 4) x and y arrays, in the CRS when given.

    Corners go (x0, y0), (x1, y0), (x1, y1), (x0, y1); all four go through the
    transform, so rotated or sheared grids give the true quadrilateral.
    """
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    xs, ys = b[:, [0, 2, 2, 0]], b[:, [1, 1, 3, 3]]
    return pixel_to_crs(transform, xs, ys) if transform is not None else (xs, ys)


def box_polygons(xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Valid polygons (counter-clockwise exterior) from `box_corners`, one per box, in one pass.

    A box of zero width or height is made valid (a line or a point) rather
    than written as a degenerate polygon.
    """
    n = len(xs)
    corners = np.stack([xs, ys], axis=-1)
    rings = np.concatenate([corners, corners[:, :1]], axis=1).reshape(-1, 2)
    # One array in, polygons out: no intermediate ring objects (half the time of
    # shapely.polygons on tens of thousands of boxes).
    offsets = (np.arange(0, 5 * n + 1, 5), np.arange(n + 1))
    polygons = shapely.from_ragged_array(shapely.GeometryType.POLYGON, rings, offsets)
    geoms = shapely.orient_polygons(polygons, exterior_cw=False)
    invalid = ~shapely.is_valid(geoms)
    if invalid.any():
        geoms[invalid] = shapely.make_valid(geoms[invalid])
    return geoms


_POLYGON_WKB = np.dtype(
    [("order", "u1"), ("type", "<u4"), ("rings", "<u4"), ("points", "<u4"), ("xy", "<f8", (10,))]
)
"""A one-ring, five-point polygon in little-endian WKB: 93 bytes, the same for every box."""
_SLIVER = 1e-9
"""Sides shorter than this fraction of the coordinates' magnitude are left to GEOS: rounding
could fold such a ring, and a zero-area box is not a valid polygon."""


def box_wkb(xs: np.ndarray, ys: np.ndarray) -> tuple[pa.BinaryArray, set[int]]:
    """`box_polygons` as WKB, written from the corner arrays, and the shapely type ids it holds.

    Boxes are parallelograms: a ring is counter-clockwise when the cross
    product of its first and last sides is positive, and is otherwise
    walked backwards from the same start, as `shapely.orient_polygons`
    does. Only slivers (and zero-area boxes) go through `box_polygons`.
    Building shapely polygons, orienting and validating them was 40 % of
    writing findings.parquet; this is arrays end to end.
    """
    n = len(xs)
    ux, uy = xs[:, 1] - xs[:, 0], ys[:, 1] - ys[:, 0]
    vx, vy = xs[:, 3] - xs[:, 0], ys[:, 3] - ys[:, 0]
    scale = np.maximum(np.abs(xs).max(axis=1, initial=0.0), np.abs(ys).max(axis=1, initial=0.0)) + 1.0
    tiny = _SLIVER * scale
    sliver = (np.hypot(ux, uy) <= tiny) | (np.hypot(vx, vy) <= tiny)
    ccw = ux * vy - uy * vx > 0
    walk = np.where(ccw[:, None], [0, 1, 2, 3, 0], [0, 3, 2, 1, 0])
    records = np.zeros(n, dtype=_POLYGON_WKB)
    records["order"], records["type"], records["rings"], records["points"] = 1, 3, 1, 5
    records["xy"][:, 0::2] = np.take_along_axis(xs, walk, axis=1)
    records["xy"][:, 1::2] = np.take_along_axis(ys, walk, axis=1)
    types = {3} if (~sliver).any() else set()
    lengths = np.full(n, _POLYGON_WKB.itemsize, dtype=np.int64)
    odd = np.flatnonzero(sliver)
    odd_wkb: list[bytes] = []
    if len(odd):
        shapes = box_polygons(xs[odd], ys[odd])
        types.update(shapely.get_type_id(shapes).tolist())
        odd_wkb = shapely.to_wkb(shapes).tolist()
        lengths[odd] = [len(b) for b in odd_wkb]
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    raw, size = records.view(np.uint8), _POLYGON_WKB.itemsize
    pieces, start = [], 0
    for i, wkb in zip(odd.tolist(), odd_wkb, strict=True):
        pieces += [raw[start * size : i * size], wkb]
        start = i + 1
    pieces.append(raw[start * size :])
    data = pa.py_buffer(b"".join(pieces))
    array = pa.LargeBinaryArray.from_buffers(pa.large_binary(), n, [None, pa.py_buffer(offsets), data])
    return array.cast(pa.binary()), types


def valid_wkb(wkb: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Which WKB geometries are valid as GEOS says (null and undecodable ones are not).

    A ring of four corners that turn the same way at every corner, closed
    and finite (the boxes `box_wkb` writes), is valid by construction and
    told from its bytes; anything else goes through shapely. Parsing every
    polygon with shapely was most of the findings schema check.
    """
    column = wkb.combine_chunks() if isinstance(wkb, pa.ChunkedArray) else wkb
    sized = pc.equal(pc.binary_length(column), _POLYGON_WKB.itemsize).fill_null(False)
    rows = np.flatnonzero(sized.to_numpy(zero_copy_only=False))
    boxes = column.filter(sized).cast(pa.large_binary())  # values back to back, 93 bytes each
    start = int(np.frombuffer(boxes.buffers()[1], dtype=np.int64)[boxes.offset]) if len(boxes) else 0
    records = np.frombuffer(boxes.buffers()[2] or b"", dtype=_POLYGON_WKB, count=len(boxes), offset=start)
    header = (records["order"] == 1) & (records["type"] == 3) & (records["rings"] == 1) & (records["points"] == 5)
    xy = np.ascontiguousarray(records["xy"]).reshape(-1, 5, 2)
    closed = (xy[:, 0] == xy[:, 4]).all(axis=1) & np.isfinite(xy).all(axis=(1, 2))
    with np.errstate(invalid="ignore"):  # inf - inf, in rings that are not finite anyway
        sides = np.diff(xy, axis=1)  # the four sides, in ring order
        after = np.roll(sides, -1, axis=1)
        turns = sides[..., 0] * after[..., 1] - sides[..., 1] * after[..., 0]
    convex = (turns > 0).all(axis=1) | (turns < 0).all(axis=1)
    valid = np.zeros(len(column), dtype=bool)
    valid[rows[header & closed & convex]] = True
    rest = np.flatnonzero(~valid)
    if len(rest):
        shapes = shapely.from_wkb(column.take(pa.array(rest)).to_numpy(zero_copy_only=False), on_invalid="ignore")
        valid[rest] = shapely.is_valid(shapes)
    return valid


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
