"""`source_images` reruns: an unchanged file keeps its fingerprint unread, a changed one is hashed again.

Real `source_images` runs on a temporary instance over a copy of a sample
image; whether the file was hashed is read from the `fingerprint_reused`
metadata, and every fingerprint is checked against a sha256 of the file.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pytest

from tile_assets.jobs import process_scene
from tile_assets_tests.dagster_layer.fixtures import INBOX, copy_images, definitions_for, register_image


@dataclass
class Scene:
    instance: dg.DagsterInstance
    defs: dg.Definitions
    catalog: Path
    image: Path
    key: str

    def describe(self, rehash: bool = False) -> dict[str, object]:
        """Run `source_images` alone; its materialization's metadata and data version."""
        job = self.defs.resolve_job_def(process_scene.name)
        result = job.execute_in_process(
            instance=self.instance,
            partition_key=self.key,
            asset_selection=[dg.AssetKey("source_images")],
            run_config={"ops": {"source_images": {"config": {"rehash": rehash}}}},
        )
        [materialization] = result.asset_materializations_for_node("source_images")
        return {
            **{name: value.value for name, value in materialization.metadata.items()},
            "data_version": materialization.tags["dagster/data_version"],
        }

    def recorded_fingerprint(self) -> str:
        return json.loads((self.catalog / "scenes" / self.key / "source.json").read_text())["fingerprint"]


def sha256(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def scene(tmp_path: Path) -> Iterator[Scene]:
    inbox, catalog = tmp_path / "inbox", tmp_path / "catalog"
    [image] = copy_images(inbox, INBOX / "RGB.byte.tif")
    with dg.instance_for_test() as instance:
        key = register_image(instance, catalog, image)
        yield Scene(instance, definitions_for(inbox, catalog), catalog, image, key)


def test_a_rerun_of_an_unchanged_file_reuses_its_fingerprint(scene: Scene) -> None:
    first = scene.describe()
    assert first["fingerprint_reused"] is False
    assert first["fingerprint"] == first["data_version"] == sha256(scene.image)

    again = scene.describe()

    assert again["fingerprint_reused"] is True
    assert again["fingerprint"] == again["data_version"] == sha256(scene.image)
    assert scene.recorded_fingerprint() == sha256(scene.image)


def test_rehash_hashes_an_unchanged_file_again(scene: Scene) -> None:
    scene.describe()
    forced = scene.describe(rehash=True)
    assert forced["fingerprint_reused"] is False
    assert forced["fingerprint"] == sha256(scene.image)


def test_an_overwritten_file_gets_a_new_fingerprint_then_reuses_that(scene: Scene) -> None:
    old = scene.describe()["fingerprint"]
    shutil.copyfile(INBOX / "rgb-byte-tenth.tif", scene.image)  # in place: same inode, new size and mtime

    changed = scene.describe()

    assert changed["fingerprint_reused"] is False
    assert changed["fingerprint"] == changed["data_version"] == sha256(scene.image) != old
    assert scene.recorded_fingerprint() == sha256(scene.image)
    assert scene.describe()["fingerprint_reused"] is True
