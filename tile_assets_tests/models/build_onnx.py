"""Build a tiny YOLO-style ONNX detector with `onnx.helper`, for testing the `onnx` plugin.

The graph has no learned weights: each output row is a fixed box (in model
input pixels) whose objectness is a steep sigmoid of the mean brightness of
the input under that box. A box therefore fires exactly when the picture the
plugin fed in is bright there — which tests the letterbox (where the tile
lands in the input), the score threshold, per-class NMS, class names and the
mapping of boxes back to tile pixels, on any image.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
STEEPNESS = 40.0
"""Sigmoid slope: a region 0.1 above the threshold scores ~0.98, 0.1 below ~0.02."""


@dataclass(frozen=True)
class Row:
    """One output row: a box (centre, size in input pixels), its class and class score."""

    cx: float
    cy: float
    w: float
    h: float
    class_id: int
    class_score: float = 1.0

    @property
    def region(self) -> tuple[int, int, int, int]:
        """x0, y0, x1, y1 of the input pixels whose brightness drives the objectness."""
        return (
            round(self.cx - self.w / 2),
            round(self.cy - self.h / 2),
            round(self.cx + self.w / 2),
            round(self.cy + self.h / 2),
        )


def build_detector(
    path: Path,
    rows: Sequence[Row],
    n_classes: int,
    size: int = 64,
    layout: str = "yolov5",
    brightness_threshold: float = 0.5,
) -> Path:
    """Write the detector to `path`: input "images" (1, 3, size, size), output "output0".

    yolov5 layout: (1, N, 5 + C); yolov8: (1, 4 + C, N) with the class
    scores multiplied by the objectness (it has no objectness column).
    """
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []

    def const(name: str, value: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(value, name))
        return name

    objectness: list[str] = []
    for i, row in enumerate(rows):
        x0, y0, x1, y1 = row.region
        starts = const(f"starts{i}", np.array([y0, x0], np.int64))
        ends = const(f"ends{i}", np.array([y1, x1], np.int64))
        axes = const(f"axes{i}", np.array([2, 3], np.int64))
        nodes.append(helper.make_node("Slice", ["images", starts, ends, axes], [f"region{i}"]))
        nodes.append(helper.make_node("ReduceMean", [f"region{i}"], [f"mean{i}"], keepdims=1))
        nodes.append(
            helper.make_node(
                "Reshape",
                [f"mean{i}", const(f"shape{i}", np.array([1, 1], np.int64))],
                [f"obj_in{i}"],
            )
        )
        objectness.append(f"obj_in{i}")
    nodes.append(helper.make_node("Concat", objectness, ["means"], axis=0))
    nodes.append(
        helper.make_node(
            "Sub",
            ["means", const("threshold", np.array(brightness_threshold, np.float32))],
            ["centred"],
        )
    )
    nodes.append(
        helper.make_node(
            "Mul", ["centred", const("steepness", np.array(STEEPNESS, np.float32))], ["logits"]
        )
    )
    nodes.append(helper.make_node("Sigmoid", ["logits"], ["obj"]))

    boxes = np.array([[r.cx, r.cy, r.w, r.h] for r in rows], np.float32)
    classes = np.zeros((len(rows), n_classes), np.float32)
    for i, row in enumerate(rows):
        classes[i, row.class_id] = row.class_score
    const("boxes", boxes)
    const("classes", classes)
    if layout == "yolov5":
        nodes.append(helper.make_node("Concat", ["boxes", "obj", "classes"], ["table"], axis=1))
        out_shape = [1, len(rows), 5 + n_classes]
        nodes.append(
            helper.make_node(
                "Reshape", ["table", const("out_shape", np.array(out_shape, np.int64))], ["output0"]
            )
        )
    elif layout == "yolov8":
        nodes.append(helper.make_node("Mul", ["classes", "obj"], ["scored"]))
        nodes.append(helper.make_node("Concat", ["boxes", "scored"], ["table"], axis=1))
        nodes.append(helper.make_node("Transpose", ["table"], ["columns"], perm=[1, 0]))
        out_shape = [1, 4 + n_classes, len(rows)]
        nodes.append(
            helper.make_node(
                "Reshape",
                ["columns", const("out_shape", np.array(out_shape, np.int64))],
                ["output0"],
            )
        )
    else:
        raise ValueError(f"unknown layout {layout!r}")

    graph = helper.make_graph(
        nodes,
        "brightness_boxes",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, size, size])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, out_shape)],
        initializer=inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="tile_assets_tests"
    )
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    path.write_bytes(model.SerializeToString())
    return path
