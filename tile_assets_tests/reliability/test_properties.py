"""Properties the core tests do not state yet: pruning never drops a valid pixel, NMS never drops a finding silently.

tile_assets_tests/core/test_grid.py already checks that windows lie in the
image, that their union covers every pixel and that neighbours overlap as
configured; test_merge.py that merging never increases the count, does not
depend on input order, that NMS is idempotent and greedy NMM accounts for
every input. What is added here:

- after empty tiles are pruned (nodata, the real `build_manifest` over a
  real GeoTIFF, with the downsampled mask of big scenes), the tiles kept
  still cover every valid pixel;
- every finding NMS drops matches a kept finding of the same label (or any
  label, class-agnostic) at the threshold: nothing vanishes without a keeper.
"""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rasterio.io import MemoryFile

from tile_assets.core.merge import merge_findings
from tile_assets.core.tiling import build_manifest, manifest_windows
from tile_assets.core.types import Box, Finding, GridSpec, SceneInfo


def _scene(width: int, height: int) -> SceneInfo:
    return SceneInfo("mem://scene", "scene", "sha256:x", "GTiff", width, height, 1, "uint8", 0)


@st.composite
def sparse_rasters(draw: st.DrawFn) -> tuple[np.ndarray, GridSpec]:
    """A nodata (0) image, some of it big enough for the downsampled mask, with a few valid specks and patches."""
    width, height = draw(st.integers(1, 2600)), draw(st.integers(1, 2600))
    data = np.zeros((height, width), dtype=np.uint8)
    for _ in range(draw(st.integers(0, 6))):
        x, y = draw(st.integers(0, width - 1)), draw(st.integers(0, height - 1))
        w, h = draw(st.sampled_from([1, 1, 3, 40])), draw(st.sampled_from([1, 1, 3, 40]))
        data[y : y + h, x : x + w] = draw(st.integers(1, 255))
    tile = draw(st.sampled_from([64, 128, 256, 512]))
    spec = GridSpec(tile_size=tile, overlap=draw(st.sampled_from([0.0, 0.1, 0.25])), edge=draw(st.sampled_from(["shift", "pad"])))
    return data, spec


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(sparse_rasters())
def test_pruned_grids_still_cover_every_valid_pixel(raster: tuple[np.ndarray, GridSpec]) -> None:
    data, spec = raster
    height, width = data.shape
    profile = {"driver": "GTiff", "width": width, "height": height, "count": 1, "dtype": "uint8", "nodata": 0}
    if width >= 256 and height >= 256:
        profile.update(tiled=True, blockxsize=256, blockysize=256)
    with MemoryFile() as memory:
        with memory.open(**profile) as dst:
            dst.write(data, 1)
        with memory.open() as ds:
            manifest, pruned = build_manifest(ds, _scene(width, height), spec)
    covered = np.zeros_like(data, dtype=bool)
    for w in manifest_windows(manifest):
        covered[w.row_off : w.row_off + w.height, w.col_off : w.col_off + w.width] = True
    valid = data > 0
    assert covered[valid].all(), f"{int((valid & ~covered).sum())} valid pixels in pruned tiles"
    assert manifest.empty == (not valid.any())
    assert len(manifest) + pruned > 0


def _match(a: Box, b: Box, metric: str) -> float:
    inter_w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    inter_h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = inter_w * inter_h
    area_a, area_b = (a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1])
    if inter == 0 or area_a == 0 or area_b == 0:
        return 0.0
    return inter / (area_a + area_b - inter) if metric == "iou" else inter / min(area_a, area_b)


findings = st.lists(
    st.builds(
        lambda label, score, x, y, w, h: Finding(label, score, (float(x), float(y), float(x + w), float(y + h))),
        st.sampled_from(["a", "b"]),
        st.sampled_from([0.25, 0.5, 1.0]),
        st.integers(0, 40),
        st.integers(0, 40),
        st.integers(1, 20),
        st.integers(1, 20),
    ),
    max_size=30,
)


@settings(max_examples=150, deadline=None)
@given(findings, st.sampled_from(["iou", "ios"]), st.sampled_from([0.1, 0.5, 0.9]), st.booleans())
def test_nms_drops_a_finding_only_for_a_kept_match(items: list[Finding], metric: str, threshold: float, agnostic: bool) -> None:
    kept = merge_findings(items, "nms", metric, threshold, agnostic)  # type: ignore[arg-type]
    for item in items:
        if item in kept:
            continue
        keepers = [k for k in kept if agnostic or k.label == item.label]
        assert any(_match(item.box, k.box, metric) >= threshold - 1e-9 and k.score >= item.score for k in keepers), item
