"""The `ocr` plugin: real words from a scanned page, with models the rapidocr wheel ships.

The page is read with RapidOCR's download function replaced by one that
fails the test, so passing proves the models came from the installed wheel.
"""

from __future__ import annotations

import re
from importlib.metadata import version
from pathlib import Path

import pytest
import rapidocr
from rapidocr.utils.download_file import DownloadFile

from tile_assets.core.errors import ModelError
from tile_assets.core.models import TileModel, load_model
from tile_assets.core.models.ocr import bundled_models
from tile_assets.core.types import GridSpec
from tile_assets_tests.models.pipeline import SceneRun, run_scene

INBOX = Path(__file__).resolve().parents[2] / "data" / "inbox"
PAGE = INBOX / "page_text.png"
LINES = (
    "Region-based segmentation",
    "Let us first determine markers of the coins and the",
    "histogram of grey values:",
)


def refuse_download(*args: object, **kwargs: object) -> None:
    raise AssertionError("rapidocr tried to download a model")


@pytest.fixture(scope="module")
def model() -> TileModel:
    return load_model("ocr")


@pytest.fixture(scope="module")
def page(model: TileModel) -> SceneRun:
    """The whole page as one tile, read with RapidOCR's download path made to fail."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(DownloadFile, "run", refuse_download)
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.setenv("MODELSCOPE_OFFLINE", "1")
        return run_scene(PAGE, model, GridSpec(tile_size=512, overlap=0.2))


def texts(run: SceneRun) -> list[str]:
    return [str(f.attributes["text"]) for f in run.merged]


def test_models_come_from_the_installed_wheel_and_are_named_in_the_params(
    model: TileModel,
) -> None:
    package_dir = Path(rapidocr.__file__).resolve().parent
    files = bundled_models()
    assert set(files) == {"det", "cls", "rec"}
    assert all(p.is_file() and p.parent == package_dir / "models" for p in files.values())
    assert model.params()["models"] == {stage: p.name for stage, p in files.items()}
    assert model.version == f"1.0.0+rapidocr{version('rapidocr')}"


def test_the_scanned_page_reads_as_its_lines_of_text(page: SceneRun) -> None:
    found = texts(page)
    for line in LINES:
        assert line in found, found
    words = set(re.findall(r"[a-z]+", " ".join(found).lower()))
    assert {"markers", "background", "segmentation"} <= words
    for f in page.merged:
        assert f.label == "text" and 0.5 <= f.score <= 1.0
        assert 0 <= f.box[0] < f.box[2] <= 384 and 0 <= f.box[1] < f.box[3] <= 191
        assert len(f.attributes["polygon"]) == 4
    title = next(f for f in page.merged if f.attributes["text"] == LINES[0])
    assert title.box[1] < 20 and title.box[3] < 45  # the title is the top line
    assert page.synthesis["counts_by_label"]["text"] == len(page.merged)


def test_lines_cut_by_small_tiles_come_back_whole_with_the_full_image_pass(
    model: TileModel,
) -> None:
    spec = GridSpec(tile_size=256, overlap=0.2)
    run = run_scene(PAGE, model, spec, full_image_pass=True)
    found = texts(run)
    for line in LINES:
        assert found.count(line) == 1, found
    assert not any(t.startswith("Region-based") and t != LINES[0] for t in found)


def test_an_image_without_text_gives_no_text(model: TileModel) -> None:
    run = run_scene(INBOX / "rgb-byte-tenth.tif", model, GridSpec(tile_size=256, overlap=0.2))
    assert all(r.status == "ok" for r in run.results)
    assert run.merged == []


def test_bad_params_raise_model_errors() -> None:
    with pytest.raises(ModelError, match="min_score"):
        load_model("ocr", {"min_score": 1.5})
    with pytest.raises(ModelError, match="min_chars"):
        load_model("ocr", {"min_chars": 0})
