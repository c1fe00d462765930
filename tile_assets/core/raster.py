"""Raster I/O over rasterio: open and validate a scene, summarize its mask, read tiles.

Two layers, like rio-tiler: pure functions over an *open* dataset
(`describe`, `mask_summary`, `read_tile`) and `open_raster` / `TileReader`,
which open a store URI in a bounded GDAL environment and close it after.
Every GDAL failure leaves as a typed error naming the object and the reason.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.enums import ColorInterp, MaskFlags, Resampling
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.io import DatasetReader
from rasterio.warp import transform_bounds
from rasterio.windows import Window

from tile_assets.core.errors import (
    InvalidSourceError,
    RasterReadError,
    StoreError,
    TileAssetsError,
    TransientStoreError,
    UnsupportedRasterError,
)
from tile_assets.core.grid import MAX_TILE_SIZE
from tile_assets.core.image import TileImage
from tile_assets.core.read_order import cache_bytes_for, read_order
from tile_assets.core.store import Store
from tile_assets.core.types import GridSpec, SceneInfo, TileWindow

log = logging.getLogger(__name__)

MAX_PIXELS = 4_000_000_000
"""Largest scene accepted (width x height): beyond this a scene is absurd, not big."""

MAX_UNTILED_PIXELS = 250_000_000
"""Largest scene without 2-D internal tiling. JPEG, PNG and striped TIFFs are
decoded in full-width strips (JPEG and PNG from the start of the file), so
every tile read costs a whole band of rows; beyond this that is too slow."""

BOMB_CHECK_PIXELS = 100_000_000
"""Scenes above this size must show they can be read in bounded pieces: blocks of
a sensible size (a tiled file or a VRT of real sources), or, decoded in
full-width strips, stored bytes that justify the declared size."""

MAX_COMPRESSION_RATIO = 1000
"""Uncompressed bytes per stored byte above which a big strip-decoded scene is
a decompression bomb. DEFLATE cannot exceed about 1032:1 and real imagery
stays far below; only forged files (tiny file, huge declared dimensions) get
there. Tiled files may legitimately exceed it: sparse blocks are not stored."""

MAX_BLOCK_BYTES = 64 * 1024 * 1024
"""Largest block (all bands) a tiled file may have: a block is decoded in one piece."""

MAX_BLOCKS = 1_000_000
"""Most blocks per band: the block index of a file with tiny blocks is a bomb of its own."""

SUPPORTED_DTYPES = frozenset({"uint8", "uint16", "int16", "uint32", "int32", "float32", "float64"})
MAX_BANDS = 16
"""Most non-alpha bands accepted (multispectral yes, hyperspectral cubes no)."""

GDAL_CACHE_BYTES = 32 * 1024 * 1024
"""GDAL block cache per process; unbounded it grows to 5 % of RAM with the scene.
It sets `read_order`'s band height, and so how batches are cut: with 512 x 512
blocks of 4 bytes a pixel (1 MB) and 512 px tiles, bands are 14 block rows
(7,168 px) tall; batches are cut along them (`plan_scene_batches`), so a batch
shares few blocks with the others and its reader decodes each of its blocks once."""

GDAL_MAX_CACHE_BYTES = 128 * 1024 * 1024
"""Most a `TileReader`'s cache grows to when its tiles span several bands in one
tile column (a whole scene in one reader), so their shared block rows are not
decoded twice: one band up to 31,744 px tall (1 MB blocks, 512 px tiles)."""

_PROBE_SIDE = 256
_TRANSIENT_MARKERS = (
    "HTTP response code: 5",
    "HTTP response code: 429",
    "SlowDown",
    "timed out",
    "Timeout",
    "Connection reset",
    "Could not resolve host",
    "Couldn't connect",
    "CURL error",  # network-level failures reaching /vsis3/ or /vsicurl/: connect, DNS, TLS, reset
)
_MISSING_MARKERS = ("No such file", "HTTP response code: 404", "does not exist")
_COLOR_NAMES = {
    ColorInterp.red: "red",
    ColorInterp.green: "green",
    ColorInterp.blue: "blue",
    ColorInterp.gray: "gray",
}
_UNLABELED = frozenset({"gray", "undefined"})


def gdal_env_options(path: str = "") -> dict[str, Any]:
    """GDAL configuration for reading `path`: bounded memory, no directory listings.

    Inside `rasterio.Env`, `GDAL_CACHEMAX` is taken in bytes (a small number
    there means bytes, not megabytes), hence the explicit byte count. Remote
    paths (`/vsis3/...`) get a read cache of raw bytes (VSI_CACHE); on a
    local file it would only copy every byte twice and hold 32 MB more.
    """
    options: dict[str, Any] = {
        "GDAL_CACHEMAX": GDAL_CACHE_BYTES,
        "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
        "GDAL_PAM_ENABLED": "NO",  # never write .aux.xml sidecars next to sources
        "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES",
        "GDAL_HTTP_MULTIPLEX": "YES",
        "GDAL_HTTP_MAX_RETRY": "3",
        "GDAL_HTTP_RETRY_DELAY": "0.5",
    }
    if path.startswith("/vsi"):
        options.update(VSI_CACHE="TRUE", VSI_CACHE_SIZE=32 * 1024 * 1024)
    return options


def _gdal_reason(exc: BaseException) -> str:
    """The specific GDAL messages behind a rasterio error, most general first."""
    messages: list[str] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        text = str(current).strip()
        if text and "See previous exception" not in text and not any(text in m for m in messages):
            messages.append(text)
        current = current.__cause__ or current.__context__
    return "; ".join(messages)[:500] or type(exc).__name__


def _storage_error(obj: str, reason: str) -> TileAssetsError | None:
    """A store error when GDAL failed because of storage, not because of the file."""
    if any(marker in reason for marker in _TRANSIENT_MARKERS):
        return TransientStoreError(obj, reason)
    if any(marker in reason for marker in _MISSING_MARKERS):
        return StoreError(obj, f"no such object ({reason})")
    return None


def _open_error(store: Store, uri: str, exc: RasterioError) -> TileAssetsError:
    reason = _gdal_reason(exc)
    storage = _storage_error(uri, reason)
    if storage is not None:
        return storage
    if "not recognized as being in a supported file format" in reason:
        try:
            empty = store.head(uri).size == 0
        except StoreError:
            empty = False
        return InvalidSourceError(
            uri, "empty file (0 bytes)" if empty else "not a recognized image format"
        )
    return InvalidSourceError(uri, f"truncated or damaged file: {reason}")


@contextmanager
def open_raster(store: Store, uri: str) -> Iterator[DatasetReader]:
    """Open `uri` from `store` for reading in a bounded GDAL environment.

    Raises `InvalidSourceError` when the object is not a readable image
    (empty, not an image format, truncated header), `StoreError` when it is
    missing and `TransientStoreError` when storage failed in a retryable way.
    """
    path = store.raster_path(uri)
    with store.raster_env(), rasterio.Env(**gdal_env_options(path)):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                dataset = rasterio.open(path)
        except RasterioError as exc:
            raise _open_error(store, uri, exc) from exc
        with dataset:
            yield dataset


def _read_error(ds: DatasetReader, exc: RasterioError) -> TileAssetsError:
    reason = _gdal_reason(exc)
    return _storage_error(ds.name, reason) or RasterReadError(ds.name, reason)


def data_indexes(ds: DatasetReader) -> list[int]:
    """1-based indexes of the bands that carry data (alpha bands excluded)."""
    return [i for i, ci in enumerate(ds.colorinterp, start=1) if ci != ColorInterp.alpha]


def band_names(ds: DatasetReader) -> tuple[str, ...]:
    """A name per data band: "red", "green", "blue", "gray", "nir" or "undefined".

    GDAL's colour interpretation is used as is, except where it is silent:
    - a single band is "gray";
    - four bands labelled red, green, blue (any order) plus one undefined band:
      the undefined one is "nir" (4-band aerial and satellite products);
    - three or four uint8 bands with no colour labels (GDAL says gray,
      undefined, ...; TIFFs written with PHOTOMETRIC=MINISBLACK) are red,
      green, blue and, for the fourth, "nir" — NAIP's layout.
    """
    indexes = data_indexes(ds)
    names = [_COLOR_NAMES.get(ds.colorinterp[i - 1], "undefined") for i in indexes]
    if len(names) == 1:
        return ("gray",)
    if len(names) == 4 and sorted(names[:3]) == ["blue", "green", "red"]:
        if names[3] in _UNLABELED:
            names[3] = "nir"
    elif len(names) in (3, 4) and ds.dtypes[indexes[0] - 1] == "uint8":
        if set(names) <= _UNLABELED:
            names = ["red", "green", "blue", "nir"][: len(names)]
    return tuple(names)


def _is_strip_decoded(ds: DatasetReader) -> bool:
    """Whether the file lacks 2-D internal tiling (its blocks span the full width)."""
    block_rows, block_cols = ds.block_shapes[0]
    return bool(block_cols >= ds.width and ds.height > block_rows)


def _vrt_sources(ds: DatasetReader) -> list[str]:
    """The files a VRT reads its pixels from (GDAL lists the VRT itself first)."""
    return [str(f) for f in ds.files[1:]] if ds.driver == "VRT" else []


def _block_layout_problem(ds: DatasetReader) -> str | None:
    """Why a tiled file's blocks are not a sensible size, or None when they are."""
    block_rows, block_cols = ds.block_shapes[0]
    itemsize = max(np.dtype(dt).itemsize for dt in ds.dtypes)
    block_bytes = block_rows * block_cols * ds.count * itemsize
    blocks = math.ceil(ds.width / block_cols) * math.ceil(ds.height / block_rows)
    if block_bytes > MAX_BLOCK_BYTES:
        return f"{block_cols}x{block_rows} blocks of {block_bytes:,} bytes (limit {MAX_BLOCK_BYTES:,})"
    if blocks > MAX_BLOCKS:
        return f"{blocks:,} blocks of {block_cols}x{block_rows} per band (limit {MAX_BLOCKS:,})"
    return None


def check_size(ds: DatasetReader, uri: str, size_bytes: int) -> None:
    """Tell big but legitimate scenes from absurd ones; reject only the absurd, saying why.

    Up to `BOMB_CHECK_PIXELS` any size is fine. Above it, a scene is
    legitimate when it can be read in bounded pieces and declares at most
    `MAX_PIXELS`: a tiled file with blocks of a sensible size (sparse blocks,
    never stored, are fine: they read as nodata), or a VRT of real source
    files. Absurd, and rejected: more than `MAX_PIXELS`; a tiled file whose
    blocks are huge or too many; a VRT without sources; and a file decoded
    in full-width strips (striped TIFF, JPEG, PNG) beyond
    `MAX_UNTILED_PIXELS` or declaring more than `MAX_COMPRESSION_RATIO`
    times the bytes it stores (a decompression bomb: a tiny file, huge
    declared dimensions).
    """
    pixels = ds.width * ds.height
    declared = f"{ds.width}x{ds.height} ({pixels:,} pixels)"
    itemsize = max(np.dtype(dt).itemsize for dt in ds.dtypes)
    raw_bytes = pixels * ds.count * itemsize
    ratio = raw_bytes / max(size_bytes, 1)
    bomb = (
        f"decompression bomb: declares {declared}, {raw_bytes:,} bytes uncompressed, "
        f"in a {size_bytes:,}-byte file (ratio {ratio:,.0f}:1, limit {MAX_COMPRESSION_RATIO}:1)"
    )
    if pixels > MAX_PIXELS:
        too_large = f"image too large: declares {declared}, limit {MAX_PIXELS:,} pixels"
        raise UnsupportedRasterError(uri, bomb if ratio > MAX_COMPRESSION_RATIO else too_large)
    if pixels <= BOMB_CHECK_PIXELS:
        return
    if ds.driver == "VRT":
        if not _vrt_sources(ds):
            raise UnsupportedRasterError(uri, f"VRT declares {declared} but reads no source file")
        return
    if not _is_strip_decoded(ds):
        problem = _block_layout_problem(ds)
        if problem:
            raise UnsupportedRasterError(uri, f"absurd block layout: declares {declared} in {problem}")
        return
    if ratio > MAX_COMPRESSION_RATIO:
        raise UnsupportedRasterError(uri, bomb)
    if pixels > MAX_UNTILED_PIXELS:
        raise UnsupportedRasterError(
            uri,
            f"image too large without internal tiling: declares {declared}, limit "
            f"{MAX_UNTILED_PIXELS:,} pixels for strip-decoded files (convert to a tiled GeoTIFF)",
        )


def check_bands(ds: DatasetReader, uri: str) -> None:
    """Reject dtypes and band counts the pipeline does not handle."""
    indexes = data_indexes(ds)
    if not 1 <= len(indexes) <= MAX_BANDS:
        raise UnsupportedRasterError(
            uri, f"{len(indexes)} data bands (alpha excluded); supported: 1 to {MAX_BANDS}"
        )
    dtypes = {ds.dtypes[i - 1] for i in indexes}
    if len(dtypes) > 1:
        raise UnsupportedRasterError(uri, f"bands of mixed data types {sorted(dtypes)}")
    dtype = dtypes.pop()
    if dtype not in SUPPORTED_DTYPES:
        raise UnsupportedRasterError(
            uri, f"data type {dtype} not supported; supported: {sorted(SUPPORTED_DTYPES)}"
        )


def probe_blocks(ds: DatasetReader) -> None:
    """Decode the first and the last block of the first data band.

    The first block shows the codec works at all; the last one catches
    truncated uploads (data is written in order). Blocks in between are only
    read with their tiles, so one corrupt block fails its tiles, not the
    scene. (The bundled corrupt.tif has its bad data in the last block, so
    `describe` rejects it; a read of a window covering that block also fails.)
    """
    block_rows, block_cols = ds.block_shapes[0]
    last_row = (ds.height - 1) // block_rows * block_rows
    last_col = (ds.width - 1) // block_cols * block_cols
    index = data_indexes(ds)[0]
    for row_off, col_off in {(0, 0), (last_row, last_col)}:
        window = Window(
            col_off,
            row_off,
            min(block_cols, _PROBE_SIDE, ds.width - col_off),
            min(block_rows, _PROBE_SIDE, ds.height - row_off),
        )
        try:
            ds.read(index, window=window)
        except RasterioError as exc:
            raise _read_error(ds, exc) from exc


def _crs_text(crs: CRS) -> str:
    epsg = crs.to_epsg()
    return f"EPSG:{epsg}" if epsg is not None else crs.to_wkt()


def _has_transform(ds: DatasetReader) -> bool:
    return ds.crs is not None or not ds.transform.is_identity


def _envelope(ds: DatasetReader) -> tuple[float, float, float, float]:
    """Axis-aligned bounds of the image's four corners (right for rotated transforms too)."""
    corners = [ds.transform @ (col, row) for col in (0, ds.width) for row in (0, ds.height)]
    xs = [float(x) for x, _ in corners]
    ys = [float(y) for _, y in corners]
    return (min(xs), min(ys), max(xs), max(ys))


def _to_wgs84(
    uri: str, crs: CRS, bounds: tuple[float, float, float, float]
) -> tuple[float, float, float, float] | None:
    try:
        west, south, east, north = transform_bounds(crs, "EPSG:4326", *bounds, densify_pts=21)
    except (RasterioError, ValueError) as exc:
        log.warning("%s: bounds not transformable to EPSG:4326: %s", uri, exc)
        return None
    if not all(math.isfinite(v) for v in (west, south, east, north)):
        log.warning("%s: bounds in EPSG:4326 are not finite", uri)
        return None
    return (west, south, east, north)


def json_nodata(value: float | None) -> float | str | None:
    """A nodata value as JSON can hold it: a number, or "nan", "inf", "-inf" (STAC's raster extension form)."""
    if value is None or math.isfinite(value):
        return value
    return str(value).lower()


def describe(
    ds: DatasetReader, uri: str, partition_key: str, fingerprint: str, size_bytes: int
) -> SceneInfo:
    """Validate an open scene and describe it, reading only two blocks of pixels.

    Raises `UnsupportedRasterError` (dtype, bands, size guards, decompression
    bomb) or `RasterReadError` (first or last block undecodable).
    Georeferencing is reported as found: `crs` is "EPSG:n" or WKT (from the
    GCPs when there is no transform), `transform`/`bounds` are kept without
    a CRS (rotated transforms give the envelope of the corners), GCP-only
    scenes get the extent of their GCPs as bounds and no transform, and
    `resolution` (in CRS units) is set only when there is a CRS.
    """
    check_bands(ds, uri)
    check_size(ds, uri, size_bytes)
    probe_blocks(ds)

    indexes = data_indexes(ds)
    crs_obj: CRS | None = ds.crs
    transform: tuple[float, ...] | None = None
    bounds: tuple[float, float, float, float] | None = None
    resolution: tuple[float, float] | None = None
    gcps, gcp_crs = ds.gcps
    if _has_transform(ds):
        transform = tuple(float(v) for v in ds.transform[:6])
        bounds = _envelope(ds)
        if crs_obj is not None:
            resolution = (abs(float(ds.res[0])), abs(float(ds.res[1])))
    elif gcps and gcp_crs is not None:
        crs_obj = gcp_crs
        bounds = (
            min(g.x for g in gcps),
            min(g.y for g in gcps),
            max(g.x for g in gcps),
            max(g.y for g in gcps),
        )
    flags = ds.mask_flag_enums[indexes[0] - 1]
    block_rows, block_cols = ds.block_shapes[indexes[0] - 1]
    return SceneInfo(
        uri=uri,
        partition_key=partition_key,
        fingerprint=fingerprint,
        driver=ds.driver,
        width=ds.width,
        height=ds.height,
        count=len(indexes),
        dtype=ds.dtypes[indexes[0] - 1],
        size_bytes=size_bytes,
        crs=_crs_text(crs_obj) if crs_obj is not None else None,
        transform=transform,
        bounds=bounds,
        bounds_wgs84=_to_wgs84(uri, crs_obj, bounds) if crs_obj and bounds else None,
        nodata=json_nodata(None if ds.nodata is None else float(ds.nodata)),
        colorinterp=band_names(ds),
        has_alpha=len(indexes) < ds.count,
        has_internal_mask=MaskFlags.per_dataset in flags
        and MaskFlags.alpha not in flags
        and MaskFlags.nodata not in flags,
        block_shape=(int(block_rows), int(block_cols)),
        resolution=resolution,
    )


@dataclass(frozen=True)
class MaskSummary:
    """A low-resolution valid-pixel map of a scene, for pruning empty tiles.

    `valid[r, c]` is the share of valid pixels in the cell of
    `scale_y` x `scale_x` source pixels at (r, c); 0 only when no valid
    pixel was seen there.
    """

    valid: np.ndarray
    scale_x: float
    scale_y: float
    width: int
    height: int


AVERAGED_MASK_PIXELS = 1_000_000_000
"""Largest scene without overviews whose mask summary averages every pixel; bigger
ones are sampled, since averaging reads the whole scene at full resolution."""

MASK_SAMPLES = 4
"""Samples per cell side when the mask summary is sampled (16 per cell)."""


def mask_summary(ds: DatasetReader, max_side: int = 1024) -> MaskSummary:
    """The scene's valid-pixel mask at most `max_side` cells wide or high.

    Combines nodata, alpha and the internal mask (GDAL's dataset mask) and,
    for float data, NaN. Memory is bounded by `max_side` whatever the scene
    size. With overviews, or up to `AVERAGED_MASK_PIXELS`, each cell is the
    average of its pixels (GDAL reads the overviews when the file has them);
    a bigger scene without overviews (a huge VRT mosaic) is sampled,
    `MASK_SAMPLES`² nearest pixels per cell, which reads a sliver of it
    instead of all of it: a cell whose few valid pixels all lie between
    samples then counts as empty.
    """
    scale = max(1.0, max(ds.width, ds.height) / max_side)
    shape = (max(1, math.ceil(ds.height / scale)), max(1, math.ceil(ds.width / scale)))
    indexes = data_indexes(ds)
    is_float = np.dtype(ds.dtypes[indexes[0] - 1]).kind == "f"
    averaged = bool(ds.overviews(indexes[0])) or ds.width * ds.height <= AVERAGED_MASK_PIXELS
    try:
        all_valid = all(ds.mask_flag_enums[i - 1] == [MaskFlags.all_valid] for i in indexes)
        if all_valid:
            valid = np.ones(shape, dtype=np.float32)
        elif averaged:
            mask = ds.dataset_mask(out_shape=shape, resampling=Resampling.average)
            valid = mask.astype(np.float32) / 255.0
        else:
            k = min(MASK_SAMPLES, math.ceil(scale))
            samples = ds.dataset_mask(out_shape=(shape[0] * k, shape[1] * k)) > 0
            valid = samples.reshape(shape[0], k, shape[1], k).mean(axis=(1, 3), dtype=np.float32)
        if is_float:
            sample = ds.read(indexes, out_shape=(len(indexes), *shape))
            valid[np.isnan(sample).any(axis=0)] = 0.0
    except RasterioError as exc:
        raise _read_error(ds, exc) from exc
    return MaskSummary(
        valid=valid,
        scale_x=ds.width / shape[1],
        scale_y=ds.height / shape[0],
        width=ds.width,
        height=ds.height,
    )


def valid_fraction(summary: MaskSummary, window: TileWindow) -> float:
    """Approximate share of valid pixels in `window`; 0.0 means the tile can be pruned."""
    x0 = max(0, math.floor(window.col_off / summary.scale_x))
    y0 = max(0, math.floor(window.row_off / summary.scale_y))
    x1 = math.ceil((window.col_off + window.width) / summary.scale_x)
    y1 = math.ceil((window.row_off + window.height) / summary.scale_y)
    cells = summary.valid[y0:y1, x0:x1]
    return float(cells.mean()) if cells.size else 0.0


def scale_max_of(values: np.ndarray, valid: np.ndarray | None) -> float:
    """The value meaning full brightness: 255 for uint8, else the 99th percentile of the
    `valid` (rows, cols) pixels (None: all of them), at least 1."""
    if values.dtype == np.uint8:
        return 255.0
    chosen = values if valid is None else values[:, valid]
    if chosen.size == 0:
        return 1.0
    return max(float(np.percentile(chosen, 99)), 1.0)


@dataclass(frozen=True)
class BandLayout:
    """What every tile read of one dataset needs to know, worked out once per dataset.

    `nodata` is set when validity is decided by per-band nodata values alone
    (integer data, no alpha, no internal mask): a pixel is then invalid when
    every band holds its nodata value, exactly GDAL's dataset mask, computed
    from the pixels already read instead of reading the bands again.
    `all_valid` is set when no pixel can be invalid: GDAL says so, or a band's
    nodata value lies outside its dtype's range (that band never holds it).
    """

    indexes: tuple[int, ...]
    names: tuple[str, ...]
    dtype: np.dtype[Any]
    all_valid: bool
    nodata: tuple[int, ...] | None


def band_layout(ds: DatasetReader) -> BandLayout:
    """The data bands of `ds`, their names and dtype, and how their validity is decided."""
    indexes = tuple(data_indexes(ds))
    dtype = np.dtype(ds.dtypes[indexes[0] - 1])
    flags = ds.mask_flag_enums
    all_valid = all(flags[i - 1] == [MaskFlags.all_valid] for i in indexes) and dtype.kind != "f"
    nodata: tuple[int, ...] | None = None
    # rasterio's dataset mask takes band 4 of an RGB(A) image as alpha even when nodata is set.
    rgb_alpha = ds.count == 4 and ds.colorinterp[0] == ColorInterp.red
    nodatavals = ds.nodatavals
    if (
        dtype.kind in "iu"
        and len(indexes) == ds.count
        and not rgb_alpha
        and all(f == [MaskFlags.nodata] for f in flags)
        and all(v is not None and float(v).is_integer() for v in nodatavals)
    ):
        nodata = tuple(int(v) for v in nodatavals)
        info = np.iinfo(dtype)
        if not all(info.min <= value <= info.max for value in nodata):
            all_valid, nodata = True, None
    return BandLayout(indexes, band_names(ds), dtype, all_valid, nodata)


def never_holds(band: np.ndarray, value: int) -> bool:
    """True when integer `band` surely lacks `value`; False when it may hold it.

    Settled by one min (max) pass when `value` is the dtype's lowest (highest),
    as nodata 0 in unsigned imagery is: a third of the cost of comparing every
    pixel and testing the result.
    """
    info = np.iinfo(band.dtype)
    if value == info.min:
        return bool(band.min() > value)
    if value == info.max:
        return bool(band.max() < value)
    return False


def _invalid_pixels(
    ds: DatasetReader, layout: BandLayout, data: np.ndarray, window: Window
) -> np.ndarray | None:
    """(rows, cols) True where a pixel is invalid (GDAL's dataset mask, plus NaN for float
    data), or None when every pixel is valid, as in most tiles."""
    if layout.all_valid:
        return None
    if layout.nodata is not None:
        # Invalid where every band holds its nodata value. Most tiles have a band that
        # never does, often the first, and are settled after one pass over it.
        if never_holds(data[0], layout.nodata[0]):
            return None
        invalid: np.ndarray = data[0] == layout.nodata[0]
        for band, value in zip(data[1:], layout.nodata[1:], strict=True):
            if not invalid.any():
                return None
            invalid &= band == value
    else:
        invalid = ds.dataset_mask(window=window) == 0
        if layout.dtype.kind == "f":
            invalid |= np.isnan(data).any(axis=0)
    return invalid if invalid.any() else None


def read_tile(
    ds: DatasetReader, window: TileWindow, spec: GridSpec, layout: BandLayout | None = None
) -> TileImage:
    """Read one tile's data bands as a masked array (source dtype).

    Invalid pixels (nodata, alpha 0, internal mask, NaN) are masked in every
    band, as GDAL's dataset mask says; a tile without any has no mask array
    (`np.ma.nomask`). Parts of the window outside the image
    are masked, never read; in "pad" mode the tile is padded with masked
    pixels to `spec.tile_size` square. Raises `RasterReadError` when GDAL
    cannot decode the window. `layout` (from `band_layout(ds)`) saves working
    it out again for every tile.
    """
    if window.width * window.height > MAX_TILE_SIZE * MAX_TILE_SIZE:
        raise UnsupportedRasterError(
            ds.name,
            f"tile {window.tile_id} is {window.width}x{window.height} pixels, "
            f"limit {MAX_TILE_SIZE}x{MAX_TILE_SIZE}",
        )
    layout = layout or band_layout(ds)
    rows, cols = window.height, window.width
    if spec.edge == "pad":
        rows, cols = max(rows, spec.tile_size), max(cols, spec.tile_size)
    col0, row0 = max(window.col_off, 0), max(window.row_off, 0)
    col1 = min(window.col_off + window.width, ds.width)
    row1 = min(window.row_off + window.height, ds.height)
    data: np.ndarray | None = None
    mask: np.ndarray | None = None
    if col1 > col0 and row1 > row0:
        inside = Window(col0, row0, col1 - col0, row1 - row0)
        try:
            data = ds.read(list(layout.indexes), window=inside)
            mask = _invalid_pixels(ds, layout, data, inside)
        except RasterioError as exc:
            raise _read_error(ds, exc) from exc

    if data is not None and data.shape[1:] == (rows, cols):
        values, invalid = data, mask  # the whole tile lies inside the image
    else:
        values = np.zeros((len(layout.indexes), rows, cols), dtype=layout.dtype)
        invalid = np.ones((rows, cols), dtype=bool)
        if data is not None:
            r, c = row0 - window.row_off, col0 - window.col_off
            values[:, r : r + data.shape[1], c : c + data.shape[2]] = data
            invalid[r : r + data.shape[1], c : c + data.shape[2]] = False if mask is None else mask

    # Most tiles have no invalid pixel, and then no mask array: nomask, not 1 byte a value.
    full_mask = np.ma.nomask if invalid is None else np.broadcast_to(invalid, values.shape).copy()
    return TileImage(
        window=window,
        data=np.ma.MaskedArray(values, mask=full_mask),
        colorinterp=layout.names,
        scale_max=scale_max_of(values, None if invalid is None else ~invalid),
    )


class TileReader:
    """Opens a scene once and reads many tiles from it; closes it on exit.

    >>> with TileReader(store, uri) as reader:
    ...     tile = reader.read(window, spec)
    """

    def __init__(self, store: Store, uri: str) -> None:
        self.store = store
        self.uri = uri
        self._stack = ExitStack()
        self._dataset: DatasetReader | None = None
        self._layout: BandLayout | None = None

    def __enter__(self) -> Self:
        self._dataset = self._stack.enter_context(open_raster(self.store, self.uri))
        self._layout = band_layout(self._dataset)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._dataset = None
        self._stack.close()

    @property
    def dataset(self) -> DatasetReader:
        if self._dataset is None:
            raise RuntimeError("TileReader used outside its `with` block")
        return self._dataset

    def read(self, window: TileWindow, spec: GridSpec) -> TileImage:
        """One tile, as `read_tile` reads it."""
        return read_tile(self.dataset, window, spec, self._layout)

    def in_read_order(self, windows: Sequence[TileWindow]) -> list[TileWindow]:
        """`windows` reordered so the blocks they share stay in GDAL's cache between reads.

        Call it before reading them: when they span several bands in one tile
        column, this reader's GDAL cache grows (`cache_bytes_for`).
        """
        ds = self.dataset
        block_shape = ds.block_shapes[0]
        block_bytes = block_shape[0] * block_shape[1] * sum(np.dtype(dt).itemsize for dt in ds.dtypes)
        cache_bytes = cache_bytes_for(
            windows, block_shape, block_bytes, GDAL_CACHE_BYTES, GDAL_MAX_CACHE_BYTES
        )
        if cache_bytes > GDAL_CACHE_BYTES:
            self._stack.enter_context(rasterio.Env(GDAL_CACHEMAX=cache_bytes))
        return read_order(windows, block_shape, block_bytes, cache_bytes)
