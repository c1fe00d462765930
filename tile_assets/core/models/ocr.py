"""Text regions and their text, with RapidOCR on ONNX Runtime, from models its wheel ships.

rapidocr 3.x bundles its detection, orientation and recognition ONNX models
inside the package (`rapidocr/models/`); this model points RapidOCR at those
files explicitly, so it never takes the download path that RapidOCR uses
for models it does not find. The file names enter the params, hence the
cache key: a rapidocr release with new models invalidates cached tiles.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from tile_assets.core.errors import ModelError
from tile_assets.core.image import TileImage
from tile_assets.core.models.base import TilePrediction, require
from tile_assets.core.models.display import clip_box, on_valid_pixels, tile_rgb8
from tile_assets.core.types import Finding

log = logging.getLogger(__name__)

TEXT_LABEL = "text"
_VERSION = "1.0.0"
_STAGES = ("det", "cls", "rec")


def bundled_models() -> dict[str, Path]:
    """The det/cls/rec ONNX files inside the installed rapidocr package.

    Raises `ModelError` when a stage has no file or more than one (a
    rapidocr that downloads its models instead of shipping them).
    """
    rapidocr = require("rapidocr", "vision")
    models_dir = Path(str(rapidocr.__file__)).resolve().parent / "models"
    found: dict[str, Path] = {}
    for stage in _STAGES:
        files = sorted(models_dir.glob(f"*_{stage}_*.onnx"))
        if len(files) != 1:
            raise ModelError(
                "ocr",
                f"expected one bundled {stage} model in {models_dir}, found "
                f"{[f.name for f in files]}; install a rapidocr that ships its models",
            )
        found[stage] = files[0]
    return found


@dataclass(frozen=True)
class OcrModel:
    """One `text` finding per text line: its box, recognition score and text.

    The line's quadrilateral is kept in `attributes["polygon"]` (tile-local
    pixels, as the box); `min_score` drops lines recognized with less
    confidence, `min_chars` drops lines shorter than that after stripping.
    """

    name: ClassVar[str] = "ocr"

    min_score: float = 0.5
    min_chars: int = 1
    use_cls: bool = True
    threads: int = 0
    """ONNX Runtime intra-op threads; 0 lets it choose (all cores)."""
    _models: dict[str, Path] = field(default_factory=dict, init=False, repr=False, compare=False)
    _local: threading.local = field(
        default_factory=threading.local, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_score <= 1.0:
            raise ModelError(self.name, f"min_score must be in [0, 1], got {self.min_score}")
        if self.min_chars < 1 or self.threads < 0:
            raise ModelError(self.name, "min_chars must be >= 1 and threads >= 0")
        require("onnxruntime", "vision")
        self._models.update(bundled_models())

    @property
    def version(self) -> str:
        """This wrapper's version plus rapidocr's: its pre/post-processing changes with it."""
        return f"{_VERSION}+rapidocr{package_version('rapidocr')}"

    def params(self) -> dict[str, Any]:
        """Thresholds plus the bundled model file names; they enter the tile cache key."""
        return {
            "min_score": self.min_score,
            "min_chars": self.min_chars,
            "use_cls": self.use_cls,
            "threads": self.threads,
            "models": {stage: path.name for stage, path in sorted(self._models.items())},
        }

    def predict(self, tiles: Sequence[TileImage]) -> list[TilePrediction]:
        """Text lines per tile, in tile-local pixels."""
        return [self._predict_tile(tile) for tile in tiles]

    def _engine(self) -> Any:
        """This thread's RapidOCR: it keeps per-call state, so threads do not share one."""
        engine = getattr(self._local, "engine", None)
        if engine is None:
            rapidocr = require("rapidocr", "vision")
            threads = self.threads or -1
            params: dict[str, Any] = {
                "Global.log_level": "error",
                "Global.text_score": self.min_score,
                "Global.use_cls": self.use_cls,
                "EngineConfig.onnxruntime.intra_op_num_threads": threads,
                "EngineConfig.onnxruntime.inter_op_num_threads": threads,
                "Det.model_path": str(self._models["det"]),
                "Cls.model_path": str(self._models["cls"]),
                "Rec.model_path": str(self._models["rec"]),
            }
            try:
                engine = rapidocr.RapidOCR(params=params)
            except Exception as exc:  # any engine setup failure is a model error
                raise ModelError(self.name, f"cannot start RapidOCR: {exc}") from exc
            self._local.engine = engine
        return engine

    def _predict_tile(self, tile: TileImage) -> TilePrediction:
        rgb = tile_rgb8(tile)
        height, width = rgb.shape[:2]
        # RapidOCR takes arrays in OpenCV's channel order.
        bgr = np.ascontiguousarray(rgb[..., ::-1])
        try:
            result = self._engine()(bgr)
        except ModelError:
            raise
        except Exception as exc:  # a failure inside RapidOCR fails this tile
            raise ModelError(tile.window.tile_id, f"RapidOCR failed: {exc}") from exc
        boxes = getattr(result, "boxes", None)
        texts = getattr(result, "txts", None)
        scores = getattr(result, "scores", None)
        if boxes is None or texts is None or scores is None:
            return TilePrediction()
        found: list[Finding] = []
        for quad, text, score in zip(boxes, texts, scores, strict=True):
            text = str(text).strip()
            if len(text) < self.min_chars or float(score) < self.min_score:
                continue
            points = np.asarray(quad, dtype=np.float64).reshape(-1, 2)
            box = clip_box((*points.min(axis=0), *points.max(axis=0)), width, height)
            if box is None:
                continue
            found.append(
                Finding(
                    label=TEXT_LABEL,
                    score=round(float(score), 6),
                    box=box,
                    area_px=round(_polygon_area(points), 2),
                    attributes={
                        "text": text,
                        "polygon": [[round(float(x), 1), round(float(y), 1)] for x, y in points],
                    },
                )
            )
        log.debug("tile %s: %d text lines", tile.window.tile_id, len(found))
        return TilePrediction(findings=tuple(on_valid_pixels(found, tile.valid)))


def _polygon_area(points: np.ndarray) -> float:
    """Shoelace area of a simple polygon given as (n, 2) vertices."""
    x, y = points[:, 0], points[:, 1]
    return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2.0)
