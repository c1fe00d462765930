"""A model and the full-image pass chosen per run by config, through the real Dagster job."""

from __future__ import annotations

from pathlib import Path

import cv2
import dagster as dg
import geopandas as gpd

from tile_assets.core.catalog import read_json
from tile_assets.core.store import LocalStore
from tile_assets.jobs import process_scene
from tile_assets_tests.dagster_layer.fixtures import copy_images, definitions_for, register_image

INBOX = Path(__file__).resolve().parents[2] / "data" / "inbox"


def test_opencv_with_the_full_image_pass_finds_the_face_tiles_cut(tmp_path: Path) -> None:
    (image,) = copy_images(tmp_path / "inbox", INBOX / "astronaut.png")
    catalog = tmp_path / "catalog"
    defs = definitions_for(tmp_path / "inbox", catalog)
    run_config = {
        "ops": {
            # 256 px tiles at 20 % overlap: every tile cuts the face (see test_opencv.py).
            "tiles": {"config": {"tile_size": 256, "overlap": 0.2, "edge": "shift"}},
            "tile_findings": {"ops": {"merge_findings": {"config": {"full_image_pass": True}}}},
        },
        "resources": {"tile_model": {"config": {"name": "opencv", "params_json": "{}"}}},
    }
    with dg.instance_for_test() as instance:
        key = register_image(instance, catalog, image)
        result = defs.resolve_job_def(process_scene.name).execute_in_process(
            run_config=run_config, instance=instance, partition_key=key
        )
    assert result.success
    summary = result.output_for_node("tile_findings")
    assert summary["full_image_pass"] == {"enabled": True, "status": "ok", "findings": 1}
    assert summary["findings_before_merge"] == 0  # no tile saw the face whole
    assert summary["model"] == "opencv"

    scene_dir = catalog / "scenes" / key
    findings = gpd.read_parquet(scene_dir / "findings.parquet")
    assert findings["label"].tolist() == ["face"]
    assert findings["tile_id"].tolist() == ["overview"]
    assert findings["model_version"].tolist() == [f"1.0.0+opencv{cv2.__version__}"]
    x0, y0, x1, y1 = findings.iloc[0][["px_x0", "px_y0", "px_x1", "px_y1"]]
    # Around the face: eyes, nose and mouth lie in x 195..255, y 90..150.
    assert 150 <= x0 <= 195 and 255 <= x1 <= 300 and 40 <= y0 <= 90 and 150 <= y1 <= 200
    synthesis = read_json(LocalStore(), str(scene_dir / "synthesis.json"))
    assert synthesis["counts_by_label"] == {"face": 1}
    assert synthesis["model"]["name"] == "opencv"
