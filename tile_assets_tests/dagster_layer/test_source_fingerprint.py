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
from pathlib import Path

import pytest

from tile_assets_tests.dagster_layer.fixtures import INBOX, RegisteredImage, registered_image


def describe(scene: RegisteredImage, rehash: bool = False) -> dict[str, object]:
    """Run `source_images` alone; its materialization's metadata and data version."""
    return scene.materialize("source_images", {"ops": {"source_images": {"config": {"rehash": rehash}}}})


def recorded_fingerprint(scene: RegisteredImage) -> str:
    return json.loads(scene.scene_file("source.json").read_text())["fingerprint"]


def sha256(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def scene(tmp_path: Path) -> Iterator[RegisteredImage]:
    with registered_image(tmp_path, "RGB.byte.tif") as scene:
        yield scene


def test_a_rerun_of_an_unchanged_file_reuses_its_fingerprint(scene: RegisteredImage) -> None:
    first = describe(scene)
    assert first["fingerprint_reused"] is False
    assert first["fingerprint"] == first["data_version"] == sha256(scene.image)

    again = describe(scene)

    assert again["fingerprint_reused"] is True
    assert again["fingerprint"] == again["data_version"] == sha256(scene.image)
    assert recorded_fingerprint(scene) == sha256(scene.image)


def test_rehash_hashes_an_unchanged_file_again(scene: RegisteredImage) -> None:
    describe(scene)
    forced = describe(scene, rehash=True)
    assert forced["fingerprint_reused"] is False
    assert forced["fingerprint"] == sha256(scene.image)


def test_an_overwritten_file_gets_a_new_fingerprint_then_reuses_that(scene: RegisteredImage) -> None:
    old = describe(scene)["fingerprint"]
    shutil.copyfile(INBOX / "rgb-byte-tenth.tif", scene.image)  # in place: same inode, new size and mtime

    changed = describe(scene)

    assert changed["fingerprint_reused"] is False
    assert changed["fingerprint"] == changed["data_version"] == sha256(scene.image) != old
    assert recorded_fingerprint(scene) == sha256(scene.image)
    assert describe(scene)["fingerprint_reused"] is True
