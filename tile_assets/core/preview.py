"""A small PNG of a scene with its findings drawn on, for the catalog and the UI.

The image is read decimated (`out_shape`), so memory is bounded by
`max_side`², never by the scene; invalid pixels (nodata, alpha, masks) come
out transparent.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image, ImageDraw
from rasterio.enums import ColorInterp, Resampling
from rasterio.io import DatasetReader

from tile_assets.core.tables import BOX_COLUMNS, FindingBatches, record_batches

log = logging.getLogger(__name__)

STRETCH_PERCENTILES = (2.0, 98.0)
PNG_COMPRESS_LEVEL = 1
"""zlib's fastest level: on a 1024² aerial preview it encodes about 4x faster than the
default (6) for a file about 10 % larger, and encoding was most of the preview's time."""
# Distinct, saturated colours (Tableau 10), assigned to labels in sorted order.
PALETTE = (
    (255, 127, 14),
    (31, 119, 180),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (188, 189, 34),
    (23, 190, 207),
    (127, 127, 127),
)


def render_preview(
    ds: DatasetReader,
    findings: FindingBatches,
    counts_by_label: Mapping[str, int],
    max_side: int = 1024,
) -> bytes:
    """PNG bytes (RGBA) of `ds` scaled to fit `max_side`, with a labelled box per finding.

    Bands: red/green/blue by colour interpretation, else the first three
    non-alpha bands, else the first band as gray. uint8 data is shown as is;
    other types are stretched per band between the 2nd and 98th percentile
    of valid pixels. Boxes are in scene pixels and scaled to the preview.
    `findings` (Arrow batches with `tables.PREVIEW_COLUMNS`) are drawn as
    they stream past, in their order; colours and whether labels are written
    depend on every finding, so they come from `counts_by_label` (the
    synthesis's counts of the same findings).
    """
    rgb, valid = read_display(ds, max_side)
    out_h, out_w = valid.shape
    if len(rgb) == 1:
        rgb = np.repeat(rgb, 3, axis=0)
    alpha = np.where(valid, 255, 0).astype(np.uint8)
    image = Image.fromarray(np.dstack([*rgb, alpha]))
    _draw_findings(image, findings, counts_by_label, out_w / ds.width, out_h / ds.height)
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    total = sum(counts_by_label.values())
    log.debug("preview %s: %dx%d, %d boxes", ds.name, out_w, out_h, total)
    return buf.getvalue()


def read_display(
    ds: DatasetReader, max_side: int, resampling: Resampling = Resampling.nearest
) -> tuple[np.ndarray, np.ndarray]:
    """`ds` scaled to fit `max_side` as display bytes, read decimated (`out_shape`).

    Returns a (bands, h, w) uint8 array, three bands (red, green, blue) or one
    gray band, and the (h, w) mask of valid pixels. Shared by the preview
    and by the content gate's rendition, so both see the same picture.
    """
    scale = min(1.0, max_side / max(ds.width, ds.height))
    out_w, out_h = max(1, round(ds.width * scale)), max(1, round(ds.height * scale))
    indexes = _display_bands(ds)
    data = ds.read(
        indexes, out_shape=(len(indexes), out_h, out_w), masked=True, resampling=resampling
    )
    valid = np.asarray(~np.ma.getmaskarray(data).any(axis=0), dtype=bool)
    if np.issubdtype(data.dtype, np.floating):
        valid &= np.isfinite(data.filled(0)).all(axis=0)
    return np.stack([_to_uint8(band, valid, data.dtype) for band in data]), valid


def _display_bands(ds: DatasetReader) -> list[int]:
    """1-based band indexes to show: RGB by colour interpretation, first three, or one."""
    interp = list(ds.colorinterp)
    wanted = (ColorInterp.red, ColorInterp.green, ColorInterp.blue)
    if all(c in interp for c in wanted):
        return [interp.index(c) + 1 for c in wanted]
    usable = [i + 1 for i, c in enumerate(interp) if c != ColorInterp.alpha]
    return usable[:3] if len(usable) >= 3 else usable[:1]


def _to_uint8(band: np.ma.MaskedArray, valid: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """One band as display bytes; non-uint8 stretched over its valid 2-98 % range."""
    values = np.asarray(band.filled(0))
    if dtype == np.uint8:
        return values.astype(np.uint8)
    if not valid.any():
        return np.zeros(values.shape, np.uint8)
    lo, hi = np.percentile(values[valid].astype(np.float64), STRETCH_PERCENTILES)
    if hi <= lo:
        return np.where(values > lo, 255, 0).astype(np.uint8)
    scaled = (values.astype(np.float64) - lo) / (hi - lo) * 255.0
    stretched: np.ndarray = np.clip(np.nan_to_num(scaled), 0, 255).astype(np.uint8)
    return stretched


MAX_LABELLED = 200
"""Above this many boxes the label texts would bury the image (and rendering one text
per box took 20 s for 75,000 findings): boxes are drawn, in their labels' colours, unlabelled."""


def _draw_findings(
    image: Image.Image,
    findings: FindingBatches,
    counts_by_label: Mapping[str, int],
    sx: float,
    sy: float,
) -> None:
    """Outline each finding's box in its label's colour, with the label above it when few.

    Colours go to the labels in sorted order. A batch's boxes are scaled in
    numpy; PIL still draws them one by one.
    """
    labels = sorted(counts_by_label)
    colours = [(*PALETTE[i % len(PALETTE)], 255) for i in range(len(labels))]
    known = pa.array(labels, pa.string())
    width = max(1, round(max(image.size) / 400))
    draw = ImageDraw.Draw(image)
    labelled = sum(counts_by_label.values()) <= MAX_LABELLED
    for batch in record_batches(findings):
        codes = pc.index_in(batch.column("label"), value_set=known)
        if codes.null_count:
            unknown = pc.filter(batch.column("label"), pc.is_null(codes))[0].as_py()
            raise ValueError(f"preview: label {unknown!r} is not among counts_by_label {labels}")
        x0, y0, x1, y1 = (batch.column(c).to_numpy(zero_copy_only=False) for c in BOX_COLUMNS)
        left, top = x0 * sx, y0 * sy
        right, bottom = np.maximum(left, x1 * sx - 1), np.maximum(top, y1 * sy - 1)
        rects = zip(left.tolist(), top.tolist(), right.tolist(), bottom.tolist(), strict=True)
        for rect, code in zip(rects, codes.to_pylist(), strict=True):
            draw.rectangle(rect, outline=colours[code], width=width)
            if labelled:
                draw.text((rect[0] + 2, max(0.0, rect[1] - 11)), labels[code], fill=colours[code])
