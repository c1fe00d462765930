"""synthesis.json and the preview's pixels against a snapshot of the per-finding implementation.

`data/synthesis_snapshot.json` holds, for seeded random findings on real
sample scenes, the synthesis dict and a digest of the preview's RGBA pixels
as computed by the implementation that built one `Finding` per row of
findings.parquet (commit f5f7339). The findings are made to tie: scores and
areas on coarse steps, labels that differ only in case or by a non-ASCII
letter, exact duplicates that differ only in tile id, rows without a model
name first. Any later implementation must give the same outputs for them.

The findings go the way the assets read them: written as Parquet (in row
groups of 50) and streamed back through the store in record batches, small
ones so that ties straddle batches.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import rasterio
from PIL import Image

from tile_assets.core.catalog import dump_json
from tile_assets.core.preview import render_preview
from tile_assets.core.raster import describe
from tile_assets.core.store import LocalStore
from tile_assets.core.synthesis import synthesize
from tile_assets.core.tables import BATCH_ROWS, PREVIEW_COLUMNS, SYNTHESIS_COLUMNS, ParquetBatches
from tile_assets.core.types import Finding, SceneInfo, TileResult
from tile_assets_tests.fixtures.findings import arrow_findings

INBOX = Path(__file__).resolve().parents[2] / "data" / "inbox"
SNAPSHOT = Path(__file__).resolve().parents[1] / "data" / "synthesis_snapshot.json"
STORE = LocalStore()
LABELS = ("building", "water", "vegetation", "Zebra", "zebra", "café", "a b")
CASES = {
    # image: (findings, seed, preview max_side); 150 boxes are labelled in the preview, 3000 not.
    "RGB.byte.tif": (150, 11, 400),
    "naip_2018.tif": (3000, 12, 1024),
    "no_geo_photo.jpg": (600, 13, 512),
}


def scene_of(name: str) -> SceneInfo:
    """The sample's description, its uri relative to the repository (the same in any checkout)."""
    path = str(INBOX / name)
    with rasterio.open(path) as ds:
        scene = describe(ds, path, name.replace(".", "_"), "sha256:snapshot", STORE.head(path).size)
    return replace(scene, uri=f"data/inbox/{name}")


def random_findings(scene: SceneInfo, n: int, seed: int) -> list[Finding]:
    """Seeded findings with ties in every ranking key, some boxes reaching past the edges."""
    rng = np.random.default_rng(seed)
    x0 = rng.uniform(-10, scene.width, n)
    y0 = rng.uniform(-10, scene.height, n)
    w = rng.integers(1, 21, n).astype(np.float64)
    h = rng.integers(1, 21, n).astype(np.float64)
    score = rng.integers(0, 21, n) / 20
    labels = rng.integers(0, len(LABELS), n)
    models = [("", ""), ("", ""), ("", "")] + [
        ("classical", "1.0.0") if i % 3 else ("other", "2") for i in range(n - 3)
    ]
    findings = [
        Finding(
            label=LABELS[labels[i]],
            score=float(score[i]),
            box=(float(x0[i]), float(y0[i]), float(x0[i] + w[i]), float(y0[i] + h[i])),
            tile_id=f"t{i % 9}",
            area_px=float(w[i] * h[i]),
            model=models[i][0],
            model_version=models[i][1],
        )
        for i in range(n)
    ]
    # Best score and area three times: twice the same label and box (only the tile differs),
    # once a label that sorts first; far apart in the input.
    top = (float(x0[0]), float(y0[0]), float(x0[0]) + 20.0, float(y0[0]) + 20.0)
    for at, label, tile in ((n // 2, "water", "dup_a"), (n - 1, "water", "dup_b"), (5, "Zebra", "z")):
        findings[at] = Finding(label, 1.0, top, tile, 400.0, "classical", "1.0.0")
    return findings


def scene_tiles(scene: SceneInfo) -> tuple[pd.DataFrame, list[TileResult]]:
    """A 3x3 grid over the scene: seven tiles ok with cover, one failed, one without a result."""
    w, h = -(-scene.width // 3), -(-scene.height // 3)
    rows = [
        {"tile_id": f"t{r * 3 + c}", "col_off": c * w, "row_off": r * h, "width": w, "height": h}
        for r in range(3)
        for c in range(3)
    ]
    results = [
        TileResult(t["tile_id"], "ok", (), {"water": 0.1 * i, "veg": 0.05}, w * h - i)
        for i, t in enumerate(rows[:7])
    ]
    results.append(TileResult("t7", "failed", error_type="ModelError", error_message="boom"))
    return pd.DataFrame(rows), results


def pixel_digest(png: bytes) -> dict[str, object]:
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGBA"))
    return {"shape": list(pixels.shape), "sha256": hashlib.sha256(pixels.tobytes()).hexdigest()}


def current_outputs(name: str, folder: Path, batch_rows: int) -> dict[str, object]:
    """synthesis.json's content and the preview digest for one case, by the code under test."""
    n, seed, max_side = CASES[name]
    scene = scene_of(name)
    uri = str(folder / "findings.parquet")
    pq.write_table(arrow_findings(random_findings(scene, n, seed)), uri, row_group_size=50)
    manifest, results = scene_tiles(scene)
    with ParquetBatches(STORE, uri) as findings, rasterio.open(INBOX / name) as ds:
        synthesis = synthesize(
            scene, manifest, results, findings.batches(SYNTHESIS_COLUMNS, batch_rows)
        )
        png = render_preview(
            ds,
            findings.batches(PREVIEW_COLUMNS, batch_rows),
            synthesis["counts_by_label"],
            max_side=max_side,
        )
    return {"synthesis": json.loads(dump_json(synthesis)), "preview": pixel_digest(png)}


@pytest.mark.parametrize("batch_rows", [7, BATCH_ROWS])
@pytest.mark.parametrize("name", sorted(CASES))
def test_outputs_match_the_per_finding_snapshot(name: str, batch_rows: int, tmp_path: Path) -> None:
    expected = json.loads(SNAPSHOT.read_text())[name]
    got = current_outputs(name, tmp_path, batch_rows)
    assert got["synthesis"] == expected["synthesis"]
    assert got["preview"] == expected["preview"]
