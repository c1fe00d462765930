"""The `opencv` plugin on a real portrait: a face box where the face is, via entry point and pipeline."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import pytest

from tile_assets.core.errors import ModelError
from tile_assets.core.models import TileModel, available_models, load_model
from tile_assets.core.models.opencv import OpenCVModel
from tile_assets.core.raster import TileReader
from tile_assets.core.types import GridSpec
from tile_assets_tests.models.pipeline import STORE, SceneRun, run_scene

INBOX = Path(__file__).resolve().parents[2] / "data" / "inbox"
ASTRONAUT = INBOX / "astronaut.png"
# Eileen Collins' face in the 512 x 512 portrait: eyes, nose and mouth lie in this box.
FACE_CORE = (195.0, 90.0, 255.0, 150.0)


def contains(outer: tuple[float, ...], inner: tuple[float, ...]) -> bool:
    return (
        outer[0] <= inner[0]
        and outer[1] <= inner[1]
        and outer[2] >= inner[2]
        and outer[3] >= inner[3]
    )


@pytest.fixture(scope="module")
def model() -> TileModel:
    return load_model("opencv")


@pytest.fixture(scope="module")
def portrait(model: TileModel) -> SceneRun:
    return run_scene(ASTRONAUT, model, GridSpec(tile_size=512, overlap=0.2))


def test_registered_as_an_entry_point_with_opencvs_version(model: TileModel) -> None:
    assert available_models()["opencv"] == "tile_assets.core.models.opencv:OpenCVModel"
    assert isinstance(model, OpenCVModel)
    assert model.version == f"1.0.0+opencv{cv2.__version__}"
    params = model.params()
    assert json.loads(json.dumps(params)) == params
    assert load_model("opencv", params) == model


def test_the_astronaut_portrait_gives_one_face_box_around_her_face(portrait: SceneRun) -> None:
    (face,) = portrait.merged
    assert face.label == "face"
    assert contains(face.box, FACE_CORE), face.box
    x0, y0, x1, y1 = face.box
    assert 150 <= x0 and x1 <= 300 and 40 <= y0 and y1 <= 200
    assert 60 <= x1 - x0 <= 140 and 60 <= y1 - y0 <= 140
    assert 0.5 < face.score <= 1.0
    assert (face.model, face.model_version) == ("opencv", f"1.0.0+opencv{cv2.__version__}")
    assert portrait.synthesis["counts_by_label"] == {"face": 1}


def test_a_face_no_tile_sees_whole_is_found_by_the_full_image_pass(
    model: TileModel, portrait: SceneRun
) -> None:
    # 256 px tiles at 20 % overlap start at x 0, 205 and 256: each cuts the face (x 177..270).
    spec = GridSpec(tile_size=256, overlap=0.2)
    tiled = run_scene(ASTRONAUT, model, spec)
    assert tiled.merged == []
    with_pass = run_scene(ASTRONAUT, model, spec, full_image_pass=True)
    (face,) = with_pass.merged
    assert face.tile_id == "overview"
    assert face.box == portrait.merged[0].box


def test_detectors_are_thread_safe_and_deterministic(model: TileModel, portrait: SceneRun) -> None:
    spec = portrait.spec
    (window,) = portrait.windows.values()
    with TileReader(STORE, str(ASTRONAUT)) as reader:
        tile = reader.read(window, spec)
    expected = model.predict([tile])
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda _: model.predict([tile]), range(4)))
    assert all(r == expected for r in results)


def test_hog_people_detector_runs_and_labels_person(portrait: SceneRun) -> None:
    people = OpenCVModel(detectors=("person",))
    run = run_scene(ASTRONAUT, people, portrait.spec)
    assert all(f.label == "person" and 0.0 <= f.score < 1.0 for f in run.merged)
    assert all(
        0 <= f.box[0] < f.box[2] <= 512 and 0 <= f.box[1] < f.box[3] <= 512 for f in run.merged
    )


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"detectors": ["unicorn"]}, "detectors must be some of"),
        ({"detectors": []}, "detectors must be some of"),
        ({"scale_factor": 1.0}, "scale_factor must be > 1"),
        ({"min_neighbors": 0}, "must be >= 1"),
    ],
)
def test_bad_params_raise_model_errors(params: dict[str, object], message: str) -> None:
    with pytest.raises(ModelError, match=message):
        load_model("opencv", params)
