"""The default model: spectral indices for cover, connected components for objects.

Deterministic, CPU-only and download-free, so the pipeline works out of the
box and its cache keys never depend on a weights file. What it measures:

- cover, as fractions of the tile's valid pixels (classes may overlap):
  `vegetation` (NDVI with a "nir" band, else normalized excess green),
  `water` (NDWI with "nir", else dark, saturated and blue-dominant), `bright` (bright
  and unsaturated: cloud, snow, concrete) and `dark` (shadow, deep water);
  gray images only get `bright` and `dark`.
- objects, as connected components of pixels much brighter or darker than
  their local background (vehicles, roofs, shadows, text) and of vegetation
  (trees, fields), filtered by area and by how much of its box it fills
  (a sprawling strip along the edge of a large bright area is not an
  object). A component next to invalid pixels is dropped: its shape there is
  the nodata collar's, not an object's.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar

import numpy as np
from scipy import ndimage

from tile_assets.core.errors import ModelError
from tile_assets.core.image import TileImage, check_layout
from tile_assets.core.models.base import TilePrediction
from tile_assets.core.types import Box, Finding

log = logging.getLogger(__name__)

_EPS = np.float32(1e-6)
# Below this summed r+g+b (0..3) chromaticity is noise, so excess green is not trusted.
_MIN_CHROMA_SUM = np.float32(0.06)
# Index excess over the vegetation threshold at which a patch scores 0.5.
_VEG_SCORE_SCALE = 0.1
# Blue must beat red and green by this much for a visible-only water pixel.
_WATER_BLUE_MARGIN = np.float32(0.02)
# Visible-only water is darker than this brightness, and more saturated than
# bluish-gray asphalt and shadow.
_WATER_MAX_BRIGHTNESS = np.float32(0.35)
_WATER_MIN_SATURATION = np.float32(0.4)
# Variance of one pixel's extent; keeps elongation finite for one-pixel-wide lines.
_PIXEL_VARIANCE = 1.0 / 12.0
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


@dataclass(frozen=True)
class _Bands:
    """A tile's pixels reduced to what the rules need, all float32 in 0..1 and 0 where invalid."""

    valid: np.ndarray
    brightness: np.ndarray
    rgb: tuple[np.ndarray, np.ndarray, np.ndarray] | None
    nir: np.ndarray | None


@dataclass(frozen=True)
class ClassicalModel:
    """Spectral-index cover fractions and contrast/vegetation connected components per tile.

    Every field is a param (keyword argument of the constructor, returned by
    `params()`); thresholds are on 0..1 scaled brightness or on index values.
    """

    name: ClassVar[str] = "classical"
    version: ClassVar[str] = "1.0.0"

    ndvi_threshold: float = 0.2
    ndwi_threshold: float = 0.1
    exg_threshold: float = 0.05
    bright_threshold: float = 0.75
    bright_max_saturation: float = 0.25
    dark_threshold: float = 0.15
    object_contrast: float = 0.12
    background_px: int = 31
    min_area_px: int = 12
    max_area_fraction: float = 0.1
    min_fill: float = 0.3
    max_objects_per_tile: int = 200

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            wants_int = f.type in ("int", int)
            ok_type = (int,) if wants_int else (int, float)
            if isinstance(value, bool) or not isinstance(value, ok_type):
                kind = "an integer" if wants_int else "a number"
                raise ModelError(self.name, f"param {f.name} must be {kind}, got {value!r}")
        self._check_range("ndvi_threshold", -1.0, 1.0)
        self._check_range("ndwi_threshold", -1.0, 1.0)
        self._check_range("exg_threshold", -1.0, 2.0)
        self._check_range("bright_threshold", 0.0, 1.0)
        self._check_range("bright_max_saturation", 0.0, 1.0)
        self._check_range("dark_threshold", 0.0, 1.0)
        self._check_range("object_contrast", 0.0, 1.0, low_open=True)
        self._check_range("background_px", 3, 1025)
        self._check_range("min_area_px", 1, float("inf"))
        self._check_range("max_area_fraction", 0.0, 1.0, low_open=True)
        self._check_range("min_fill", 0.0, 1.0)
        self._check_range("max_objects_per_tile", 0, float("inf"))

    def _check_range(self, param: str, low: float, high: float, low_open: bool = False) -> None:
        value = getattr(self, param)
        if value < low or value > high or (low_open and value == low):
            bracket = "(" if low_open else "["
            raise ModelError(self.name, f"param {param}={value!r} outside {bracket}{low}, {high}]")

    def params(self) -> dict[str, Any]:
        """All thresholds and limits; they enter the tile cache key."""
        return asdict(self)

    def predict(self, tiles: Sequence[TileImage]) -> list[TilePrediction]:
        """Cover fractions and objects for each tile, in tile-local pixel coordinates."""
        return [self._predict_tile(tile) for tile in tiles]

    def _predict_tile(self, tile: TileImage) -> TilePrediction:
        bands = _read_bands(tile)
        n_valid = int(bands.valid.sum())
        if n_valid == 0:
            return TilePrediction(findings=(), cover=_empty_cover(bands))
        vegetation, veg_index, veg_threshold = self._vegetation(bands)
        cover = self._cover(bands, vegetation, n_valid)

        contrast = _local_contrast(bands.brightness, bands.valid, self.background_px)
        near_invalid = _near_invalid(bands.valid)
        max_area = self.max_area_fraction * bands.valid.size
        candidates: list[Finding] = []
        masks: list[tuple[str, np.ndarray, np.ndarray, float, float]] = [
            ("bright_object", contrast > self.object_contrast, contrast, 0.0, self.object_contrast),
            ("dark_object", contrast < -self.object_contrast, -contrast, 0.0, self.object_contrast),
        ]
        if vegetation is not None and veg_index is not None:
            masks.append(
                ("vegetation_patch", vegetation, veg_index, veg_threshold, _VEG_SCORE_SCALE)
            )
        for label, mask, strength, offset, scale in masks:
            candidates.extend(
                self._components(
                    tile,
                    label,
                    mask & bands.valid,
                    strength,
                    offset,
                    scale,
                    bands.brightness,
                    near_invalid,
                    max_area,
                )
            )
        candidates.sort(key=lambda f: (-f.score, f.label, f.box))
        kept = tuple(candidates[: self.max_objects_per_tile])
        log.debug(
            "tile %s: %d valid px, %d candidates, %d kept",
            tile.window.tile_id,
            n_valid,
            len(candidates),
            len(kept),
        )
        return TilePrediction(findings=kept, cover=cover)

    def _vegetation(self, bands: _Bands) -> tuple[np.ndarray | None, np.ndarray | None, float]:
        """Vegetation mask, the index it came from, and that index's threshold (None if gray)."""
        if bands.rgb is None:
            return None, None, 0.0
        red, green, blue = bands.rgb
        if bands.nir is not None:
            ndvi = (bands.nir - red) / (bands.nir + red + _EPS)
            return (ndvi > self.ndvi_threshold) & bands.valid, ndvi, self.ndvi_threshold
        total = red + green + blue
        exg = (2 * green - red - blue) / (total + _EPS)
        # Teal water also has excess green; vegetation reflects green above blue.
        green_dominant = (green >= red) & (green > blue)
        mask = (exg > self.exg_threshold) & (total > _MIN_CHROMA_SUM) & green_dominant & bands.valid
        return mask, exg, self.exg_threshold

    def _cover(
        self, bands: _Bands, vegetation: np.ndarray | None, n_valid: int
    ) -> dict[str, float]:
        valid, bright_px = bands.valid, bands.brightness
        masks: dict[str, np.ndarray] = {}
        if bands.rgb is not None and vegetation is not None:
            red, green, blue = bands.rgb
            top = np.maximum(np.maximum(red, green), blue)
            saturation = (top - np.minimum(np.minimum(red, green), blue)) / (top + _EPS)
            masks["vegetation"] = vegetation
            if bands.nir is not None:
                ndwi = (green - bands.nir) / (green + bands.nir + _EPS)
                masks["water"] = ndwi > self.ndwi_threshold
            else:
                blue_margin = blue - np.maximum(red, green)
                masks["water"] = (
                    (blue_margin > _WATER_BLUE_MARGIN)
                    & (bright_px < _WATER_MAX_BRIGHTNESS)
                    & (saturation > _WATER_MIN_SATURATION)
                )
            masks["bright"] = (bright_px > self.bright_threshold) & (
                saturation < self.bright_max_saturation
            )
        else:
            masks["bright"] = bright_px > self.bright_threshold
        masks["dark"] = bright_px < self.dark_threshold
        return {
            name: round(int(np.count_nonzero(mask & valid)) / n_valid, 6)
            for name, mask in masks.items()
        }

    def _components(
        self,
        tile: TileImage,
        label: str,
        mask: np.ndarray,
        strength: np.ndarray,
        offset: float,
        scale: float,
        brightness: np.ndarray,
        near_invalid: np.ndarray | None,
        max_area: float,
    ) -> list[Finding]:
        """Findings for the connected components of `mask` that pass the area and collar rules.

        The score is e / (e + scale) with e the component's mean `strength`
        above `offset`: 0.5 at the threshold, approaching 1 as it grows.
        """
        labels, count = ndimage.label(mask)
        if count == 0:
            return []
        flat = labels.ravel()
        idx = np.flatnonzero(flat)
        lab = flat[idx]
        n = count + 1
        area = np.bincount(lab, minlength=n).astype(np.float64)
        keep = (area >= self.min_area_px) & (area <= max_area)
        keep[0] = False
        if near_invalid is not None:
            keep[np.unique(labels[near_invalid])] = False
        if not keep.any():
            return []

        on_kept = keep[lab]
        idx, lab = idx[on_kept], lab[on_kept]
        width = labels.shape[1]
        ys = (idx // width).astype(np.float64)
        xs = (idx % width).astype(np.float64)
        safe_area = np.maximum(area, 1.0)

        def mean(weights: np.ndarray) -> np.ndarray:
            return np.bincount(lab, weights=weights, minlength=n) / safe_area

        mean_strength = mean(strength.ravel()[idx].astype(np.float64))
        mean_bright = mean(brightness.ravel()[idx].astype(np.float64))
        mx, my = mean(xs), mean(ys)
        sxx = mean(xs * xs) - mx * mx + _PIXEL_VARIANCE
        syy = mean(ys * ys) - my * my + _PIXEL_VARIANCE
        sxy = mean(xs * ys) - mx * my
        half_diff = np.sqrt(((sxx - syy) / 2) ** 2 + sxy**2)
        major = (sxx + syy) / 2 + half_diff
        minor = np.maximum((sxx + syy) / 2 - half_diff, _PIXEL_VARIANCE)
        elongation = np.sqrt(major / minor)
        excess = np.maximum(mean_strength - offset, 0.0)
        score = excess / (excess + scale)

        slices = ndimage.find_objects(labels)
        findings: list[Finding] = []
        for i in np.flatnonzero(keep):
            rows, cols = slices[i - 1]
            box: Box = (float(cols.start), float(rows.start), float(cols.stop), float(rows.stop))
            fill = float(area[i]) / ((cols.stop - cols.start) * (rows.stop - rows.start))
            if fill < self.min_fill:
                continue
            findings.append(
                Finding(
                    label=label,
                    score=round(float(score[i]), 6),
                    box=box,
                    tile_id=tile.window.tile_id,
                    area_px=float(area[i]),
                    model=self.name,
                    model_version=self.version,
                    attributes={
                        "mean_brightness": round(float(mean_bright[i]), 4),
                        "strength": round(float(mean_strength[i]), 4),
                        "elongation": round(float(elongation[i]), 3),
                        "fill": round(fill, 3),
                    },
                )
            )
        return findings


def _read_bands(tile: TileImage) -> _Bands:
    """Scale the tile to 0..1 float32 once, pick bands by name, zero the invalid pixels."""
    check_layout(tile)
    data = tile.data
    valid = tile.valid
    scaled = np.ma.getdata(data).astype(np.float32) / np.float32(tile.scale_max)
    np.clip(scaled, 0.0, 1.0, out=scaled)
    scaled[:, ~valid] = 0.0
    if not np.isfinite(scaled).all():
        raise ModelError(tile.window.tile_id, "non-finite values in valid pixels")
    names = tile.colorinterp

    def pick(name: str) -> np.ndarray | None:
        return scaled[names.index(name)] if name in names else None

    red, green, blue = pick("red"), pick("green"), pick("blue")
    rgb = (red, green, blue) if red is not None and green is not None and blue is not None else None
    if rgb is not None:
        brightness = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]
    elif (gray := pick("gray")) is not None:
        brightness = gray
    else:
        brightness = scaled.mean(axis=0)
    return _Bands(
        valid=valid,
        brightness=brightness.astype(np.float32, copy=False),
        rgb=rgb,
        nir=pick("nir") if rgb is not None else None,
    )


def _empty_cover(bands: _Bands) -> dict[str, float]:
    names = (
        ("vegetation", "water", "bright", "dark") if bands.rgb is not None else ("bright", "dark")
    )
    return dict.fromkeys(names, 0.0)


def _local_contrast(brightness: np.ndarray, valid: np.ndarray, size: int) -> np.ndarray:
    """Brightness minus its local mean over valid pixels only (normalized box filter).

    Invalid pixels are zero in `brightness`, so dividing by the filtered valid
    fraction keeps the collar from darkening the background next to it.
    """
    weight = valid.astype(np.float32)
    total = ndimage.uniform_filter(brightness, size=size, mode="nearest")
    share = ndimage.uniform_filter(weight, size=size, mode="nearest")
    background = total / np.maximum(share, _EPS)
    return np.where(valid, brightness - background, np.float32(0.0))


def _near_invalid(valid: np.ndarray) -> np.ndarray | None:
    """Pixels that are invalid or touch an invalid pixel; None when the whole tile is valid."""
    if valid.all():
        return None
    near: np.ndarray = ndimage.binary_dilation(~valid, structure=_EIGHT_CONNECTED)
    return near
