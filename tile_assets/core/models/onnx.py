"""Any YOLO-style ONNX detector from a local file, run with ONNX Runtime on CPU.

Pre-processing is the usual letterbox: the tile is scaled to fit the model's
input size keeping its aspect ratio, centred, padded with gray; pixels are
RGB, 0..1, NCHW. Post-processing reads one of the two common output layouts,
keeps boxes above the score threshold, suppresses duplicates per class (NMS
on IoU) and maps boxes back to tile pixels. The SHA-256 of the model file is
part of the version, so a new weights file never reuses cached tiles.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from PIL import Image

from tile_assets.core.errors import ModelError
from tile_assets.core.image import TileImage
from tile_assets.core.merge import merge_findings
from tile_assets.core.models.base import TilePrediction, require
from tile_assets.core.models.display import clip_box, on_valid_pixels, tile_rgb8
from tile_assets.core.types import Finding

OutputLayout = Literal["yolov5", "yolov8"]
"""yolov5: (1, N, 5 + C) rows cx, cy, w, h, objectness, class scores.
yolov8: (1, 4 + C, N) columns cx, cy, w, h, class scores (no objectness)."""

_VERSION = "1.0.0"
_HASH_CHUNK = 1 << 20


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(_HASH_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class Letterbox:
    """How a tile was placed in the model input: scale, then offset (input pixels)."""

    scale: float
    pad_x: float
    pad_y: float

    def to_tile(self, boxes: np.ndarray) -> np.ndarray:
        """(n, 4) x0, y0, x1, y1 boxes from input pixels back to tile pixels."""
        out = boxes.astype(np.float64).copy()
        out[:, [0, 2]] = (out[:, [0, 2]] - self.pad_x) / self.scale
        out[:, [1, 3]] = (out[:, [1, 3]] - self.pad_y) / self.scale
        return out


def letterbox(
    rgb: np.ndarray, width: int, height: int, pad_value: int
) -> tuple[np.ndarray, Letterbox]:
    """`rgb` (h, w, 3) uint8 scaled to fit `width` x `height`, centred on a `pad_value` canvas."""
    rows, cols = rgb.shape[:2]
    scale = min(width / cols, height / rows)
    new_w, new_h = max(1, round(cols * scale)), max(1, round(rows * scale))
    resized = rgb
    if (new_w, new_h) != (cols, rows):
        resized = np.asarray(Image.fromarray(rgb).resize((new_w, new_h), Image.Resampling.BILINEAR))
    canvas = np.full((height, width, 3), pad_value, dtype=np.uint8)
    pad_x, pad_y = (width - new_w) // 2, (height - new_h) // 2
    canvas[pad_y : pad_y + new_h, pad_x : pad_x + new_w] = resized
    return canvas, Letterbox(scale=scale, pad_x=float(pad_x), pad_y=float(pad_y))


@dataclass(frozen=True)
class OnnxDetector:
    """Boxes from a YOLO-style detector: `path` to the .onnx file, its input size and classes.

    `input_size` is one side (square) or [width, height]; `class_names`
    names the classes in output order (empty: "class_<i>"). A box scores
    objectness x class score (yolov5) or the class score (yolov8); boxes
    below `score_threshold` are dropped, then NMS at `iou_threshold` per
    class (or across classes with `class_agnostic`), at most
    `max_detections` per tile.
    """

    name: ClassVar[str] = "onnx"

    path: str = ""
    input_size: int | tuple[int, int] = 640
    class_names: tuple[str, ...] = ()
    score_threshold: float = 0.25
    iou_threshold: float = 0.45
    layout: OutputLayout = "yolov5"
    class_agnostic: bool = False
    max_detections: int = 300
    pad_value: int = 114
    threads: int = 0
    """ONNX Runtime intra-op threads; 0 lets it choose (all cores)."""
    _state: dict[str, Any] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        size = self.input_size
        sides = (size, size) if isinstance(size, int) else tuple(size)
        if len(sides) != 2 or not all(isinstance(s, int) and 8 <= s <= 8192 for s in sides):
            raise ModelError(
                self.name, f"input_size must be a side or [width, height] in 8..8192, got {size!r}"
            )
        object.__setattr__(self, "input_size", sides if sides[0] != sides[1] else sides[0])
        object.__setattr__(self, "class_names", tuple(str(c) for c in self.class_names))
        if not 0.0 <= self.score_threshold <= 1.0 or not 0.0 < self.iou_threshold <= 1.0:
            raise ModelError(
                self.name, "score_threshold must be in [0, 1] and iou_threshold in (0, 1]"
            )
        if self.layout not in ("yolov5", "yolov8"):
            raise ModelError(self.name, f"layout must be yolov5 or yolov8, got {self.layout!r}")
        if self.max_detections < 1 or not 0 <= self.pad_value <= 255 or self.threads < 0:
            raise ModelError(self.name, "max_detections >= 1, pad_value in 0..255, threads >= 0")
        model_path = Path(self.path).expanduser()
        if not self.path or not model_path.is_file():
            raise ModelError(self.name, f"model file not found: {self.path!r}")
        ort = require("onnxruntime", "vision")
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.log_severity_level = 3
        try:
            session = ort.InferenceSession(
                str(model_path), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ModelError(self.name, f"cannot load {model_path}: {exc}") from exc
        self._state.update(session=session, sha256=_file_sha256(model_path))
        self._check_input(session.get_inputs()[0])

    def _check_input(self, spec: Any) -> None:
        shape = list(spec.shape)
        if len(shape) != 4:
            raise ModelError(self.name, f"model input {spec.name} has shape {shape}, expected NCHW")
        width, height = self.input_sides
        for axis, want in ((2, height), (3, width)):
            if isinstance(shape[axis], int) and shape[axis] != want:
                raise ModelError(
                    self.name,
                    f"model input is {shape[3]}x{shape[2]}, input_size says {width}x{height}",
                )
        if isinstance(shape[1], int) and shape[1] != 3:
            raise ModelError(self.name, f"model input has {shape[1]} channels, expected 3 (RGB)")

    @property
    def input_sides(self) -> tuple[int, int]:
        """(width, height) of the model input."""
        size = self.input_size
        return (size, size) if isinstance(size, int) else (size[0], size[1])

    @property
    def version(self) -> str:
        """This wrapper's version plus the model file's SHA-256 prefix."""
        return f"{_VERSION}+sha256.{self._state['sha256'][:16]}"

    def params(self) -> dict[str, Any]:
        """Everything that changes the output; the file's content is in `version`."""
        return {
            "path": str(self.path),
            "input_size": list(self.input_sides),
            "class_names": list(self.class_names),
            "score_threshold": self.score_threshold,
            "iou_threshold": self.iou_threshold,
            "layout": self.layout,
            "class_agnostic": self.class_agnostic,
            "max_detections": self.max_detections,
            "pad_value": self.pad_value,
            "threads": self.threads,
        }

    def predict(self, tiles: Sequence[TileImage]) -> list[TilePrediction]:
        """Detections per tile, in tile-local pixels."""
        return [self._predict_tile(tile) for tile in tiles]

    def _predict_tile(self, tile: TileImage) -> TilePrediction:
        rgb = tile_rgb8(tile)
        width, height = self.input_sides
        canvas, placement = letterbox(rgb, width, height, self.pad_value)
        batch = np.ascontiguousarray(
            canvas.transpose(2, 0, 1)[None], dtype=np.float32
        ) / np.float32(255.0)
        session = self._state["session"]
        try:
            (raw, *_) = session.run(None, {session.get_inputs()[0].name: batch})
        except Exception as exc:  # an inference failure fails this tile
            raise ModelError(tile.window.tile_id, f"ONNX Runtime failed: {exc}") from exc
        rows = self._rows(np.asarray(raw), tile.window.tile_id)
        found = self._decode(rows, placement, rgb.shape[1], rgb.shape[0])
        return TilePrediction(findings=tuple(on_valid_pixels(found, tile.valid)))

    def _rows(self, raw: np.ndarray, tile_id: str) -> np.ndarray:
        """The output as (N, 4 + [obj] + C) rows, whatever the layout."""
        first = 5 if self.layout == "yolov5" else 4
        if raw.ndim == 3 and raw.shape[0] == 1:
            raw = raw[0]
        if raw.ndim != 2:
            raise ModelError(
                tile_id, f"model output has shape {raw.shape}, expected (1, N, K) or (1, K, N)"
            )
        rows = raw.T if self.layout == "yolov8" else raw
        n_classes = rows.shape[1] - first
        if n_classes < 1:
            raise ModelError(
                tile_id, f"model output rows have {rows.shape[1]} values, too few for {self.layout}"
            )
        if self.class_names and len(self.class_names) != n_classes:
            raise ModelError(
                tile_id,
                f"model outputs {n_classes} classes, class_names lists {len(self.class_names)}",
            )
        return rows.astype(np.float64)

    def _decode(
        self, rows: np.ndarray, placement: Letterbox, width: int, height: int
    ) -> list[Finding]:
        first = 5 if self.layout == "yolov5" else 4
        class_scores = rows[:, first:]
        best = class_scores.argmax(axis=1)
        scores = class_scores[np.arange(len(rows)), best]
        if self.layout == "yolov5":
            scores = scores * rows[:, 4]
        keep = np.isfinite(scores) & (scores >= self.score_threshold)
        rows, best, scores = rows[keep], best[keep], scores[keep]
        cx, cy, w, h = rows[:, 0], rows[:, 1], rows[:, 2], rows[:, 3]
        boxes = placement.to_tile(
            np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
        )
        found: list[Finding] = []
        for box, cls, score in zip(boxes.tolist(), best.tolist(), scores.tolist(), strict=True):
            clipped = clip_box(box, width, height) if np.isfinite(box).all() else None
            if clipped is None:
                continue
            label = self.class_names[cls] if self.class_names else f"class_{cls}"
            found.append(
                Finding(
                    label=label,
                    score=round(float(score), 6),
                    box=clipped,
                    area_px=(clipped[2] - clipped[0]) * (clipped[3] - clipped[1]),
                    attributes={"class_id": int(cls)},
                )
            )
        kept = merge_findings(found, "nms", "iou", self.iou_threshold, self.class_agnostic)
        return kept[: self.max_detections]
