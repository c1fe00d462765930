"""A tile as the 8-bit RGB picture learned detectors and vision APIs expect, and its valid area.

The classical model works on any band layout; OpenCV cascades, OCR, ONNX
detectors and Bedrock all want a photo-like image. Every plugin builds it
here, the same way, so they agree on what a tile looks like.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tile_assets.core.image import TileImage, check_layout
from tile_assets.core.types import Box, Finding

MIN_VALID_SHARE = 0.5
"""A detection whose box is mostly nodata, alpha or padding is about the collar, not the scene."""


def tile_rgb8(tile: TileImage) -> np.ndarray:
    """(rows, cols, 3) uint8: red/green/blue bands if named, else the first band as gray.

    Values are scaled by `tile.scale_max` (255 for uint8, so those pass
    unchanged); invalid pixels are black.
    """
    check_layout(tile)
    data = tile.data
    names = tile.colorinterp
    if all(c in names for c in ("red", "green", "blue")):
        picked = [names.index(c) for c in ("red", "green", "blue")]
    else:
        picked = [names.index("gray") if "gray" in names else 0] * 3
    raw = np.ma.getdata(data)[picked]
    if raw.dtype == np.uint8 and tile.scale_max == 255.0:
        rgb = raw.copy()
    else:
        scaled = raw.astype(np.float32) * np.float32(255.0 / tile.scale_max)
        rgb = np.clip(np.nan_to_num(scaled), 0, 255).astype(np.uint8)
    rgb[:, ~tile.valid] = 0
    return np.ascontiguousarray(np.moveaxis(rgb, 0, -1))


def valid_share(valid: np.ndarray, box: Box) -> float:
    """Share of valid pixels inside `box` (tile-local pixels), 0.0 for an empty box."""
    rows, cols = valid.shape
    x0, y0 = max(0, int(np.floor(box[0]))), max(0, int(np.floor(box[1])))
    x1, y1 = min(cols, int(np.ceil(box[2]))), min(rows, int(np.ceil(box[3])))
    if x1 <= x0 or y1 <= y0:
        return 0.0
    return float(valid[y0:y1, x0:x1].mean())


def on_valid_pixels(findings: Sequence[Finding], valid: np.ndarray) -> list[Finding]:
    """The findings whose box is at least `MIN_VALID_SHARE` valid pixels."""
    if valid.all():
        return list(findings)
    return [f for f in findings if valid_share(valid, f.box) >= MIN_VALID_SHARE]


def clip_box(box: Sequence[float], width: int, height: int) -> Box | None:
    """`box` clipped to a `width` x `height` image, or None when nothing of it is left."""
    x0, y0 = min(max(float(box[0]), 0.0), width), min(max(float(box[1]), 0.0), height)
    x1, y1 = min(max(float(box[2]), 0.0), width), min(max(float(box[3]), 0.0), height)
    if x1 <= x0 or y1 <= y0:
        return None
    return (x0, y0, x1, y1)
