"""`tiles` reruns: the same source version, grid and code keep tiles.parquet; anything else builds it anew.

Real `source_images` + `tiles` runs on a temporary instance over a copy of
RGB.byte.tif (it has nodata, so building the manifest reads its mask). Whether
the mask was read is counted at `build_manifest`, and the asset's
`manifest_reused` metadata must say the same.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

import tile_assets.assets.tiles
from tile_assets.core.catalog import write_parquet
from tile_assets.core.store import LocalStore
from tile_assets.core.tiling import stored_manifest, write_manifest
from tile_assets_tests.dagster_layer.fixtures import INBOX, RegisteredImage, copy_images, registered_image

STORE = LocalStore()


@dataclass
class Tiling:
    scene: RegisteredImage
    builds: list[str]
    """One entry per `build_manifest` call: each read the scene's mask."""

    def cut(self, tile_size: int = 96) -> dict[str, object]:
        """Run `source_images` and `tiles`; the tiles materialization's metadata."""
        return self.scene.materialize("tiles", {"ops": {"tiles": {"config": {"tile_size": tile_size}}}}, "source_images")

    @property
    def manifest(self) -> Path:
        return self.scene.scene_file("tiles.parquet")


@pytest.fixture
def scene(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Tiling]:
    builds: list[str] = []
    build = tile_assets.assets.tiles.build_manifest
    monkeypatch.setattr(tile_assets.assets.tiles, "build_manifest", lambda *a: builds.append("built") or build(*a))
    with registered_image(tmp_path, "RGB.byte.tif") as image:
        yield Tiling(image, builds)


def test_an_unchanged_scene_keeps_its_manifest(scene: Tiling) -> None:
    first = scene.cut()
    assert first["manifest_reused"] is False and scene.builds == ["built"]
    written = scene.manifest.stat().st_mtime_ns
    before = pd.read_parquet(scene.manifest)

    again = scene.cut()

    assert again["manifest_reused"] is True and scene.builds == ["built"]
    assert scene.manifest.stat().st_mtime_ns == written
    for name in ("tile_count", "pruned_empty_tiles", "mean_valid_fraction"):
        assert again[name] == first[name], name
    assert first["pruned_empty_tiles"] > 0  # RGB.byte.tif's nodata collar: the mask mattered
    pd.testing.assert_frame_equal(pd.read_parquet(scene.manifest), before)


def test_another_grid_or_a_changed_image_builds_it_again(scene: Tiling) -> None:
    scene.cut()
    assert scene.cut(tile_size=128)["manifest_reused"] is False
    assert scene.cut(tile_size=96)["manifest_reused"] is False  # the 128 px manifest replaced it
    assert scene.builds == ["built"] * 3
    copy_images(scene.scene.image.parent.parent / "new", INBOX / "colorado_aerial_cl1.tif")[0].replace(scene.scene.image)
    assert scene.cut()["manifest_reused"] is False  # new bytes: new fingerprint
    assert len(scene.builds) == 4


def test_stored_manifest_needs_the_same_basis(tmp_path: Path) -> None:
    uri = str(tmp_path / "tiles.parquet")
    manifest = pd.DataFrame({"tile_id": ["r000c000", "r000c001"], "valid_fraction": [1.0, 0.25]})
    basis = {"fingerprint": "sha256:abc", "spec": {"tile_size": 256, "overlap": 0.2, "edge": "shift"}, "code_version": "1"}
    assert stored_manifest(STORE, uri, basis) is None  # no file
    write_manifest(STORE, uri, manifest, 3, basis)
    kept, pruned = stored_manifest(STORE, uri, dict(basis)) or (None, None)
    pd.testing.assert_frame_equal(kept, manifest)
    assert pruned == 3
    for other in ({**basis, "fingerprint": "sha256:abd"}, {**basis, "code_version": "2"},
                  {**basis, "spec": {**basis["spec"], "overlap": 0.1}}):
        assert stored_manifest(STORE, uri, other) is None, other
    write_parquet(STORE, uri, manifest)  # written without a basis (before bases were recorded)
    assert stored_manifest(STORE, uri, basis) is None
    STORE.write_bytes(uri, b"not parquet")
    assert stored_manifest(STORE, uri, basis) is None
