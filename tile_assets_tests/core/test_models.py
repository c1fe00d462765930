"""The model interface, the entry-point registry and the classical model on real sample images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.windows import Window

from tile_assets.core.errors import ModelError
from tile_assets.core.image import TileImage
from tile_assets.core.models import TileModel, TilePrediction, available_models, load_model, require
from tile_assets.core.models.classical import ClassicalModel
from tile_assets.core.types import TileWindow

INBOX = Path(__file__).resolve().parents[2] / "data" / "inbox"
BAD = Path(__file__).resolve().parents[1] / "data" / "bad"


def read_tile(
    path: Path,
    window: tuple[int, int, int, int] | None = None,
    colorinterp: tuple[str, ...] | None = None,
    scale_max: float = 255.0,
) -> TileImage:
    """A TileImage as the pipeline builds it: nodata masked, alpha dropped and used as the mask."""
    with rasterio.open(path) as ds:
        col_off, row_off, width, height = window or (0, 0, ds.width, ds.height)
        win = Window(col_off, row_off, width, height)
        names = [c.name for c in ds.colorinterp]
        bands = [i + 1 for i, name in enumerate(names) if name != "alpha"]
        data = ds.read(bands, window=win, masked=True)
        if "alpha" in names:
            alpha = ds.read(names.index("alpha") + 1, window=win)
            data.mask = np.ma.getmaskarray(data) | (alpha == 0)[None]
        interp = colorinterp or tuple(names[i - 1] for i in bands)
    tile_window = TileWindow(
        f"{path.stem}-{col_off}-{row_off}", 0, 0, col_off, row_off, width, height
    )
    return TileImage(window=tile_window, data=data, colorinterp=interp, scale_max=scale_max)


def naip_tile() -> TileImage:
    # The file labels its bands gray/undefined; PROVENANCE says they are R, G, B, NIR.
    return read_tile(INBOX / "naip_2018.tif", (0, 0, 512, 512), ("red", "green", "blue", "nir"))


def invalid_fraction(tile: TileImage, box: tuple[float, float, float, float]) -> float:
    x0, y0, x1, y1 = (int(v) for v in box)
    return float(1.0 - tile.valid[y0:y1, x0:x1].mean())


# --- registry ---------------------------------------------------------------


def test_registry_finds_classical_through_entry_points() -> None:
    models = available_models()
    assert models["classical"] == "tile_assets.core.models.classical:ClassicalModel"
    model = load_model("classical")
    assert isinstance(model, ClassicalModel)
    assert isinstance(model, TileModel)
    assert (model.name, model.version) == ("classical", "1.0.0")


def test_unknown_model_lists_the_available_ones() -> None:
    with pytest.raises(ModelError, match="available: .*classical") as info:
        load_model("no-such-model")
    assert info.value.obj == "no-such-model"


def test_params_pass_through_and_bad_params_name_model_and_param() -> None:
    model = load_model("classical", {"min_area_px": 40, "ndvi_threshold": 0.3})
    assert model.params()["min_area_px"] == 40
    assert model.params()["ndvi_threshold"] == 0.3
    with pytest.raises(ModelError, match="min_area_pixels") as unknown:
        load_model("classical", {"min_area_pixels": 5})
    assert unknown.value.obj == "classical"
    with pytest.raises(ModelError, match="min_area_px") as out_of_range:
        load_model("classical", {"min_area_px": 0})
    assert out_of_range.value.obj == "classical"
    with pytest.raises(ModelError, match="background_px must be an integer"):
        load_model("classical", {"background_px": 31.5})
    with pytest.raises(ModelError, match="object_contrast must be a number"):
        load_model("classical", {"object_contrast": "high"})


def test_params_are_json_and_rebuild_the_same_model() -> None:
    params = ClassicalModel().params()
    text = json.dumps(params, sort_keys=True)
    assert load_model("classical", json.loads(text)).params() == params


def test_require_names_the_extra_to_install() -> None:
    assert require("json", "vision").dumps({}) == "{}"
    with pytest.raises(ModelError, match=r"tile_assets\[vision\]"):
        require("tile_assets_no_such_module", "vision")


# --- classical model on real images ----------------------------------------


def test_naip_tile_is_mostly_vegetation_and_has_water() -> None:
    tile = naip_tile()
    (pred,) = ClassicalModel().predict([tile])
    assert set(pred.cover) == {"vegetation", "water", "bright", "dark"}
    assert pred.cover["vegetation"] > 0.3
    assert pred.cover["water"] > 0.02  # the scene has lakes and ponds
    assert all(0.0 <= v <= 1.0 for v in pred.cover.values())


def test_visible_only_vegetation_on_naip_without_its_nir_band() -> None:
    tile = naip_tile()
    rgb = TileImage(tile.window, tile.data[:3], ("red", "green", "blue"), 255.0)
    (pred,) = ClassicalModel().predict([rgb])
    assert pred.cover["vegetation"] > 0.3


def test_nodata_collar_produces_no_findings() -> None:
    tile = read_tile(INBOX / "RGB.byte.tif")
    assert (~tile.valid).mean() > 0.1  # the collar is there and masked
    (pred,) = ClassicalModel().predict([tile])
    assert pred.findings
    for finding in pred.findings:
        assert invalid_fraction(tile, finding.box) < 0.1, finding

    corner = read_tile(INBOX / "RGB.byte.tif", (0, 0, 64, 64))
    assert not corner.valid.any()
    (empty,) = ClassicalModel().predict([corner])
    assert empty.findings == ()
    assert set(empty.cover.values()) == {0.0}


def test_alpha_nodata_produces_no_findings_on_the_transparent_area() -> None:
    tile = read_tile(INBOX / "pix4d_drone_rgba.tif")
    assert 0.05 < (~tile.valid).mean() < 0.5
    (pred,) = ClassicalModel().predict([tile])
    assert pred.findings
    for finding in pred.findings:
        assert invalid_fraction(tile, finding.box) < 0.1, finding


def test_all_nodata_raster_gives_an_empty_prediction() -> None:
    with rasterio.open(BAD / "all-nodata.tif") as ds:
        window = (0, 0, ds.width, min(ds.height, 256))
    tile = read_tile(BAD / "all-nodata.tif", window, ("red", "green", "blue", "nir"), 10000.0)
    assert not tile.valid.any()
    (pred,) = ClassicalModel().predict([tile])
    assert pred == TilePrediction(findings=(), cover=dict.fromkeys(pred.cover, 0.0))


def test_aerial_photo_has_bright_objects_inside_the_tile() -> None:
    tile = read_tile(INBOX / "colorado_aerial_cl1.tif")
    height, width = tile.data.shape[1:]
    (pred,) = ClassicalModel().predict([tile])
    bright = [f for f in pred.findings if f.label == "bright_object"]
    assert len(bright) >= 3
    for f in pred.findings:
        x0, y0, x1, y1 = f.box
        assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height
        assert 0.0 < f.score <= 1.0
        assert f.area_px <= (x1 - x0) * (y1 - y0)
        assert (f.tile_id, f.model, f.model_version) == (tile.window.tile_id, "classical", "1.0.0")
    # The parked cars (white and silver roofs) sit in x 128..206, y 72..117.
    assert any(
        x1 > 128 and x0 < 206 and y1 > 72 and y0 < 117 for x0, y0, x1, y1 in (f.box for f in bright)
    )


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_gray_page_gets_dark_text_objects_and_gray_cover_only() -> None:
    tile = read_tile(INBOX / "page_text.png")
    assert tile.data.shape[0] == 1
    (pred,) = ClassicalModel().predict([tile])
    assert set(pred.cover) == {"bright", "dark"}
    labels = {f.label for f in pred.findings}
    assert labels <= {"bright_object", "dark_object"}
    assert sum(f.label == "dark_object" for f in pred.findings) >= 10  # letters and words


def test_limits_are_applied() -> None:
    tile = read_tile(INBOX / "colorado_aerial_cl1.tif")
    (pred,) = ClassicalModel(max_objects_per_tile=5, min_area_px=30).predict([tile])
    assert len(pred.findings) == 5
    assert all(f.area_px >= 30 for f in pred.findings)
    scores = [f.score for f in pred.findings]
    assert scores == sorted(scores, reverse=True)


def test_deterministic_and_batch_independent() -> None:
    tiles = [naip_tile(), read_tile(INBOX / "colorado_aerial_cl1.tif")]
    model = ClassicalModel()
    first = model.predict(tiles)
    assert model.predict(tiles) == first
    assert [model.predict([t])[0] for t in tiles] == first
    assert json.loads(json.dumps([f.to_dict() for f in first[0].findings]))  # JSON-able


def test_mismatched_band_names_raise_model_error() -> None:
    tile = naip_tile()
    broken = TileImage(tile.window, tile.data, ("red", "green", "blue"), 255.0)
    with pytest.raises(ModelError, match="colorinterp"):
        ClassicalModel().predict([broken])
