"""`tiles` reruns: the same source version, grid and code keep tiles.parquet; anything else builds it anew.

Real `source_images` + `tiles` runs on a temporary instance over a copy of
RGB.byte.tif (it has nodata, so building the manifest reads its mask). Whether
the mask was read is counted at `build_manifest`, and the asset's
`manifest_reused` metadata must say the same.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

import tile_assets.assets.tiles
from tile_assets.core.catalog import write_parquet
from tile_assets.core.store import LocalStore
from tile_assets.core.tiling import stored_manifest, write_manifest
from tile_assets.jobs import process_scene
from tile_assets_tests.dagster_layer.fixtures import INBOX, copy_images, definitions_for, register_image

STORE = LocalStore()


@dataclass
class Scene:
    instance: dg.DagsterInstance
    defs: dg.Definitions
    catalog: Path
    image: Path
    key: str
    builds: list[str] = field(default_factory=list)

    def cut(self, tile_size: int = 96) -> dict[str, object]:
        """Run `source_images` and `tiles`; the tiles materialization's metadata."""
        job = self.defs.resolve_job_def(process_scene.name)
        result = job.execute_in_process(
            instance=self.instance,
            partition_key=self.key,
            asset_selection=[dg.AssetKey("source_images"), dg.AssetKey("tiles")],
            run_config={"ops": {"tiles": {"config": {"tile_size": tile_size}}}},
        )
        [materialization] = result.asset_materializations_for_node("tiles")
        return {name: value.value for name, value in materialization.metadata.items()}

    @property
    def manifest(self) -> Path:
        return self.catalog / "scenes" / self.key / "tiles.parquet"


@pytest.fixture
def scene(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Scene]:
    inbox, catalog = tmp_path / "inbox", tmp_path / "catalog"
    [image] = copy_images(inbox, INBOX / "RGB.byte.tif")
    with dg.instance_for_test() as instance:
        key = register_image(instance, catalog, image)
        scene = Scene(instance, definitions_for(inbox, catalog), catalog, image, key)
        build = tile_assets.assets.tiles.build_manifest
        monkeypatch.setattr(
            tile_assets.assets.tiles, "build_manifest", lambda *a: scene.builds.append("built") or build(*a)
        )
        yield scene


def test_an_unchanged_scene_keeps_its_manifest(scene: Scene) -> None:
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


def test_another_grid_or_a_changed_image_builds_it_again(scene: Scene) -> None:
    scene.cut()
    assert scene.cut(tile_size=128)["manifest_reused"] is False
    assert scene.cut(tile_size=96)["manifest_reused"] is False  # the 128 px manifest replaced it
    assert scene.builds == ["built"] * 3
    copy_images(scene.image.parent.parent / "new", INBOX / "colorado_aerial_cl1.tif")[0].replace(scene.image)
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
