"""The small picture pixel-based gate checks look at: decimated, masked, display bytes.

Read with `out_shape` (GDAL uses overviews when the file has them) and
averaged, so memory is bounded by `max_side`² and a re-encoded or resized
copy of an image gives nearly the same picture. Invalid pixels (nodata,
alpha, masks) are black, as they are once an image is flattened to JPEG.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image
from rasterio.enums import Resampling

from tile_assets.core.preview import read_display
from tile_assets.core.raster import open_raster
from tile_assets.core.store import Store

RENDITION_MAX_SIDE = 512
"""Large enough for moderation models, small enough to read in well under a second."""


def read_rendition(store: Store, uri: str, max_side: int = RENDITION_MAX_SIDE) -> np.ndarray:
    """The image at `uri` fitted into `max_side`: (h, w, 3) RGB or (h, w, 1) gray uint8."""
    with open_raster(store, uri) as ds:
        picture, valid = read_display(ds, max_side, Resampling.average)
    return np.moveaxis(np.where(valid, picture, 0).astype(np.uint8), 0, -1)


def to_pil(picture: np.ndarray) -> Image.Image:
    """A rendition as a PIL image ("RGB" or "L")."""
    return Image.fromarray(picture[..., 0] if picture.shape[-1] == 1 else picture)


def jpeg_bytes(picture: np.ndarray, quality: int = 90) -> bytes:
    """A rendition encoded as JPEG, the form image APIs (Rekognition) accept as bytes."""
    buf = io.BytesIO()
    to_pil(picture).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()
