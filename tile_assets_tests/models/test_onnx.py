"""The `onnx` plugin: letterbox, score threshold, per-class NMS, class names, boxes back in tile pixels.

The detector is built by the test (`build_onnx.py`): fixed boxes that fire
where the picture fed to the model is bright, so every expected box follows
from the letterbox arithmetic.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio

from tile_assets.core.errors import ModelError
from tile_assets.core.image import TileImage
from tile_assets.core.keys import model_key
from tile_assets.core.models import TileModel, load_model
from tile_assets.core.models.onnx import OnnxDetector, letterbox
from tile_assets.core.types import GridSpec, TileWindow
from tile_assets_tests.models.build_onnx import Row, build_detector
from tile_assets_tests.models.pipeline import run_scene

INBOX = Path(__file__).resolve().parents[2] / "data" / "inbox"
SIZE = 64
CLASSES = ["car", "truck"]
# Input pixels. A and B sit on the white rectangle of `white_box_tile`; B overlaps A
# (IoU 0.85) with a lower class score; C is B as a truck; D lies in the letterbox
# padding; E on black.
ROWS = [
    Row(24, 29, 12, 10, class_id=0, class_score=1.0),  # A
    Row(25, 29, 12, 10, class_id=0, class_score=0.9),  # B
    Row(25, 29, 12, 10, class_id=1, class_score=0.9),  # C
    Row(32, 8, 16, 10, class_id=0),  # D
    Row(48, 29, 12, 10, class_id=1),  # E
]
# A's box mapped back: the 200 x 100 tile is scaled by 0.32 to 64 x 32, padded 16 px on top.
BOX_A = (18 / 0.32, (24 - 16) / 0.32, 30 / 0.32, (34 - 16) / 0.32)


@pytest.fixture(scope="module")
def detectors(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("onnx")
    return {
        layout: build_detector(root / f"{layout}.onnx", ROWS, len(CLASSES), SIZE, layout)
        for layout in ("yolov5", "yolov8")
    }


def white_box_tile() -> TileImage:
    """A 200 x 100 black RGB tile with a white rectangle at x 50..100, y 20..60."""
    data = np.zeros((3, 100, 200), np.uint8)
    data[:, 20:60, 50:100] = 255
    return TileImage(
        window=TileWindow("r000c000", 0, 0, 0, 0, 200, 100),
        data=np.ma.MaskedArray(data, mask=np.zeros_like(data, bool)),
        colorinterp=("red", "green", "blue"),
        scale_max=255.0,
    )


def detector(path: Path, **params: object) -> OnnxDetector:
    model = load_model(
        "onnx", {"path": str(path), "input_size": SIZE, "class_names": CLASSES, **params}
    )
    assert isinstance(model, OnnxDetector) and isinstance(model, TileModel)
    return model


def test_letterbox_keeps_the_aspect_ratio_and_centres_the_tile() -> None:
    tile = white_box_tile()
    rgb = np.moveaxis(tile.data.data, 0, -1)
    canvas, placement = letterbox(rgb, SIZE, SIZE, 114)
    assert (placement.scale, placement.pad_x, placement.pad_y) == (0.32, 0.0, 16.0)
    assert (canvas[:16] == 114).all() and (canvas[48:] == 114).all()
    assert canvas[29, 24].tolist() == [255, 255, 255]
    back = placement.to_tile(np.array([[16.0, 22.4, 32.0, 35.2]]))
    np.testing.assert_allclose(back, [[50, 20, 100, 60]])


@pytest.mark.parametrize("layout", ["yolov5", "yolov8"])
def test_boxes_come_back_in_tile_pixels_with_class_names_after_per_class_nms(
    detectors: dict[str, Path], layout: str
) -> None:
    (prediction,) = detector(detectors[layout], layout=layout).predict([white_box_tile()])
    found = sorted(prediction.findings, key=lambda f: f.label)
    # B lost to A in NMS (same class), C survived it (another class); D and E never fired.
    assert [f.label for f in found] == ["car", "truck"]
    car, truck = found
    np.testing.assert_allclose(car.box, BOX_A, atol=1e-6)
    assert car.score == pytest.approx(1.0, abs=1e-6)
    assert truck.score == pytest.approx(0.9, abs=1e-6)
    np.testing.assert_allclose(
        truck.box, (BOX_A[0] + 1 / 0.32, BOX_A[1], BOX_A[2] + 1 / 0.32, BOX_A[3])
    )
    assert car.attributes["class_id"] == 0 and truck.attributes["class_id"] == 1


def test_class_agnostic_nms_and_thresholds_are_configurable(detectors: dict[str, Path]) -> None:
    tile = white_box_tile()
    (agnostic,) = detector(detectors["yolov5"], class_agnostic=True).predict([tile])
    assert [f.label for f in agnostic.findings] == ["car"]
    (strict,) = detector(detectors["yolov5"], score_threshold=0.95).predict([tile])
    assert [f.label for f in strict.findings] == ["car"]
    (loose,) = detector(detectors["yolov5"], iou_threshold=0.9).predict([tile])
    assert sorted(f.label for f in loose.findings) == ["car", "car", "truck"]


def test_boxes_in_the_letterbox_padding_are_dropped_even_when_they_fire(
    detectors: dict[str, Path],
) -> None:
    # White padding makes D fire, but D lies wholly outside the tile.
    (prediction,) = detector(detectors["yolov5"], pad_value=255).predict([white_box_tile()])
    assert sorted(f.label for f in prediction.findings) == ["car", "truck"]
    assert all(0 <= f.box[1] and f.box[3] <= 100 for f in prediction.findings)


def test_the_model_file_content_is_in_the_version_and_so_in_the_cache_key(
    detectors: dict[str, Path], tmp_path: Path
) -> None:
    original = detector(detectors["yolov5"])
    copy = detector(Path(shutil.copy(detectors["yolov5"], tmp_path / "copy.onnx")))
    other = detector(build_detector(tmp_path / "other.onnx", ROWS[:2], len(CLASSES), SIZE))
    assert original.version.startswith("1.0.0+sha256.")
    assert copy.version == original.version
    assert other.version != original.version
    keys = {model_key(m.name, m.version, m.params()) for m in (original, other)}
    assert len(keys) == 2


def test_bad_files_and_params_raise_model_errors(
    detectors: dict[str, Path], tmp_path: Path
) -> None:
    with pytest.raises(ModelError, match="not found"):
        load_model("onnx", {"path": str(tmp_path / "missing.onnx")})
    with pytest.raises(ModelError, match="input_size says 32x32"):
        detector(detectors["yolov5"], input_size=32)
    not_onnx = tmp_path / "junk.onnx"
    not_onnx.write_bytes(b"not a model")
    with pytest.raises(ModelError, match="cannot load"):
        load_model("onnx", {"path": str(not_onnx), "input_size": SIZE})
    three_names = detector(detectors["yolov5"], class_names=["a", "b", "c"])
    with pytest.raises(ModelError, match="2 classes, class_names lists 3"):
        three_names.predict([white_box_tile()])
    with pytest.raises(ModelError, match="unknown param"):
        load_model("onnx", {"path": str(detectors["yolov5"]), "input_sz": SIZE})


def test_on_a_real_image_through_the_pipeline(tmp_path: Path) -> None:
    """page_text.png cut into 128 px tiles: the centre box fires on tiles whose centre is bright."""
    path = build_detector(tmp_path / "centre.onnx", [Row(32, 32, 32, 32, class_id=0)], 1, SIZE)
    model = load_model("onnx", {"path": str(path), "input_size": SIZE, "class_names": ["page"]})
    run = run_scene(
        INBOX / "page_text.png", model, GridSpec(tile_size=128, overlap=32), border_aware=False
    )
    assert all(r.status == "ok" for r in run.results)
    fired = {f.tile_id for f in run.raw}
    assert fired
    with_window = run.windows
    with rasterio.open(INBOX / "page_text.png") as ds:
        page = ds.read(1).astype(np.float64) / 255.0
    for f in run.raw:
        w = with_window[f.tile_id]
        # The tile's 128 px are scaled by 0.5 to the 64 px input: the box is its centre half.
        assert f.box == (w.col_off + 32.0, w.row_off + 32.0, w.col_off + 96.0, w.row_off + 96.0)
        assert (f.label, f.model, f.model_version) == ("page", "onnx", model.version)
        assert page[w.row_off + 32 : w.row_off + 96, w.col_off + 32 : w.col_off + 96].mean() > 0.45
    silent = set(with_window) - fired
    for tile_id in silent:
        w = with_window[tile_id]
        assert page[w.row_off + 32 : w.row_off + 96, w.col_off + 32 : w.col_off + 96].mean() < 0.55
