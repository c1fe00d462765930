"""The detectors OpenCV ships, for photos: Haar cascades (faces, bodies) and the HOG people detector.

No download: opencv-python(-headless) below 5 bundles the cascade files
(`cv2.data.haarcascades`) and the HOG people SVM is built into the library.
They find frontal faces and upright people in ordinary photos; on overhead
imagery they find little, which is the classical model's job.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar

import numpy as np

from tile_assets.core.errors import ModelError
from tile_assets.core.image import TileImage
from tile_assets.core.models.base import TilePrediction, require
from tile_assets.core.models.display import on_valid_pixels, tile_rgb8
from tile_assets.core.types import Finding

CASCADES: dict[str, str] = {
    "face": "haarcascade_frontalface_default.xml",
    "profile_face": "haarcascade_profileface.xml",
    "cat_face": "haarcascade_frontalcatface.xml",
    "upper_body": "haarcascade_upperbody.xml",
    "full_body": "haarcascade_fullbody.xml",
}
"""Detector name (also the finding label) -> bundled Haar cascade file."""
HOG_PEOPLE = "person"
"""The HOG + linear SVM pedestrian detector (Dalal-Triggs) built into OpenCV."""
DETECTORS = (*CASCADES, HOG_PEOPLE)
_VERSION = "1.0.0"
_HOG_WINDOW = (64, 128)


def _cv2() -> ModuleType:
    return require("cv2", "vision")


@dataclass(frozen=True)
class OpenCVModel:
    """Boxes from OpenCV's bundled detectors, one label per detector.

    Scores: a cascade box scores n / (n + min_neighbors), n being how many
    raw detections were grouped into it (0.5 at the acceptance threshold);
    a HOG box scores its SVM margin m as m / (m + 1).
    """

    name: ClassVar[str] = "opencv"

    detectors: tuple[str, ...] = ("face",)
    scale_factor: float = 1.1
    min_neighbors: int = 5
    min_size_px: int = 24
    equalize: bool = True
    hog_hit_threshold: float = 0.0
    hog_stride_px: int = 8
    _local: threading.local = field(
        default_factory=threading.local, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "detectors", tuple(self.detectors))
        unknown = sorted(set(self.detectors) - set(DETECTORS))
        if not self.detectors or unknown:
            raise ModelError(
                self.name,
                f"detectors must be some of {', '.join(DETECTORS)}; got {unknown or 'none'}",
            )
        if not self.scale_factor > 1.0:
            raise ModelError(self.name, f"scale_factor must be > 1, got {self.scale_factor}")
        if self.min_neighbors < 1 or self.min_size_px < 1 or self.hog_stride_px < 1:
            raise ModelError(self.name, "min_neighbors, min_size_px and hog_stride_px must be >= 1")
        cv2 = _cv2()
        for detector in self.detectors:
            if detector in CASCADES and not self._cascade_path(cv2, detector).is_file():
                raise ModelError(
                    self.name,
                    f"cascade {CASCADES[detector]} not bundled with OpenCV {cv2.__version__} "
                    "(opencv-python below 5 ships them)",
                )

    @property
    def version(self) -> str:
        """This wrapper's version plus OpenCV's: a new OpenCV may detect differently."""
        return f"{_VERSION}+opencv{_cv2().__version__}"

    def params(self) -> dict[str, Any]:
        """Detectors and their settings; they enter the tile cache key."""
        return {
            "detectors": list(self.detectors),
            "scale_factor": self.scale_factor,
            "min_neighbors": self.min_neighbors,
            "min_size_px": self.min_size_px,
            "equalize": self.equalize,
            "hog_hit_threshold": self.hog_hit_threshold,
            "hog_stride_px": self.hog_stride_px,
        }

    def predict(self, tiles: Sequence[TileImage]) -> list[TilePrediction]:
        """Detections per tile, in tile-local pixels; boxes mostly on invalid pixels are dropped."""
        return [self._predict_tile(tile) for tile in tiles]

    @staticmethod
    def _cascade_path(cv2: ModuleType, detector: str) -> Path:
        return Path(cv2.data.haarcascades) / CASCADES[detector]

    def _detector(self, cv2: ModuleType, detector: str) -> Any:
        """This thread's instance of a detector: OpenCV's detectors are not safe to share."""
        cached = getattr(self._local, detector, None)
        if cached is None:
            if detector == HOG_PEOPLE:
                cached = cv2.HOGDescriptor()
                cached.setSVMDetector(cv2.HOGDescriptor_getDefaultPeopleDetector())
            else:
                cached = cv2.CascadeClassifier(str(self._cascade_path(cv2, detector)))
                if cached.empty():
                    raise ModelError(self.name, f"cannot load cascade {CASCADES[detector]}")
            setattr(self._local, detector, cached)
        return cached

    def _predict_tile(self, tile: TileImage) -> TilePrediction:
        cv2 = _cv2()
        rgb = tile_rgb8(tile)
        gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        if self.equalize:
            gray = cv2.equalizeHist(gray)
        found: list[Finding] = []
        for detector in self.detectors:
            if detector == HOG_PEOPLE:
                found.extend(self._hog(cv2, rgb))
            else:
                found.extend(self._cascade(cv2, detector, gray))
        found.sort(key=lambda f: (-f.score, f.label, f.box))
        return TilePrediction(findings=tuple(on_valid_pixels(found, tile.valid)))

    def _cascade(self, cv2: ModuleType, detector: str, gray: np.ndarray) -> list[Finding]:
        size = (self.min_size_px, self.min_size_px)
        if gray.shape[0] < size[1] or gray.shape[1] < size[0]:
            return []
        rects, neighbours = self._detector(cv2, detector).detectMultiScale2(
            gray, scaleFactor=self.scale_factor, minNeighbors=self.min_neighbors, minSize=size
        )
        return [
            _finding(detector, n / (n + self.min_neighbors), (x, y, w, h), "neighbours", n)
            for (x, y, w, h), n in zip(
                np.asarray(rects).reshape(-1, 4), np.ravel(neighbours), strict=True
            )
        ]

    def _hog(self, cv2: ModuleType, rgb: np.ndarray) -> list[Finding]:
        if rgb.shape[1] < _HOG_WINDOW[0] or rgb.shape[0] < _HOG_WINDOW[1]:
            return []
        stride = (self.hog_stride_px, self.hog_stride_px)
        rects, weights = self._detector(cv2, HOG_PEOPLE).detectMultiScale(
            rgb, hitThreshold=self.hog_hit_threshold, winStride=stride, scale=1.05
        )
        return [
            _finding(
                HOG_PEOPLE,
                max(float(m), 0.0) / (max(float(m), 0.0) + 1.0),
                (x, y, w, h),
                "svm_margin",
                m,
            )
            for (x, y, w, h), m in zip(
                np.asarray(rects).reshape(-1, 4), np.ravel(weights), strict=True
            )
        ]


def _finding(
    label: str, score: float, xywh: tuple[int, int, int, int], key: str, raw: Any
) -> Finding:
    x, y, w, h = (int(v) for v in xywh)
    return Finding(
        label=label,
        score=round(float(score), 6),
        box=(float(x), float(y), float(x + w), float(y + h)),
        area_px=float(w * h),
        attributes={key: round(float(raw), 4)},
    )
