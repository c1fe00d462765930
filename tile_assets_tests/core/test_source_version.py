"""Reusing a source's fingerprint across runs: only for the very version of a local file it was taken at.

A recorded fingerprint here is a made-up one that no hash of the file could
give, so a result equal to it proves the file was not hashed.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import replace
from pathlib import Path

import pytest

from tile_assets.core.registry import (
    lookup_registration,
    register_scene,
    registered_fingerprint,
    registry_uri,
)
from tile_assets.core.s3store import S3Store
from tile_assets.core.source_version import Fingerprint, described_fingerprint, version_source
from tile_assets.core.store import LocalStore, S3Settings
from tile_assets.core.types import SceneInfo
from tile_assets_tests.fixtures.s3 import SeaweedServer

STORE = LocalStore()
NOT_A_HASH = "sha256:previous-description"


def sha256(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def described(uri: str, version: str) -> SceneInfo:
    """A previous description of `uri` at listing version `version`, with the made-up fingerprint."""
    return SceneInfo(
        uri=uri, partition_key="scene", fingerprint=NOT_A_HASH, driver="GTiff",
        width=1, height=1, count=1, dtype="uint8", size_bytes=1, source_version=version,
    )


def recorded(uri: str, version: str) -> list[Fingerprint]:
    """The made-up fingerprint, recorded for `uri` at listing version `version`."""
    return [Fingerprint(uri, version, NOT_A_HASH)]


@pytest.fixture
def source(tmp_path: Path) -> Path:
    path = tmp_path / "scene.tif"
    path.write_bytes(b"first version")
    return path


def test_without_a_previous_description_the_file_is_hashed(source: Path) -> None:
    version = version_source(STORE, str(source))
    assert (version.fingerprint, version.reused) == (sha256(source), False)
    assert version.head == STORE.head(str(source))


def test_the_same_version_of_the_same_file_reuses_the_fingerprint(source: Path, tmp_path: Path) -> None:
    etag = STORE.head(str(source)).etag
    other = Fingerprint(str(tmp_path / "other.tif"), etag, "sha256:other")
    version = version_source(STORE, str(source), [other, *recorded(str(source), etag)])
    assert (version.fingerprint, version.reused) == (NOT_A_HASH, True)
    assert version.recorded() == Fingerprint(str(source), etag, NOT_A_HASH)


def test_an_overwritten_file_is_hashed_again(source: Path) -> None:
    previous = recorded(str(source), STORE.head(str(source)).etag)
    source.write_bytes(b"second, longer version")
    version = version_source(STORE, str(source), previous)
    assert (version.fingerprint, version.reused) == (sha256(source), False)


def test_a_same_size_rewrite_with_a_new_mtime_is_hashed_again(source: Path) -> None:
    before = source.stat()
    previous = recorded(str(source), STORE.head(str(source)).etag)
    source.write_bytes(b"other version")
    os.utime(source, ns=(before.st_atime_ns, before.st_mtime_ns + 1))
    assert source.stat().st_size == before.st_size
    version = version_source(STORE, str(source), previous)
    assert (version.fingerprint, version.reused) == (sha256(source), False)


def test_a_description_of_another_uri_or_without_a_version_is_not_reused(source: Path, tmp_path: Path) -> None:
    etag = STORE.head(str(source)).etag
    for previous in (recorded(str(tmp_path / "other.tif"), etag), recorded(str(source), "")):
        assert version_source(STORE, str(source), previous).fingerprint == sha256(source)


def test_on_s3_the_fingerprint_is_always_the_etag(s3_server: SeaweedServer, s3_bucket: str) -> None:
    settings = S3Settings(
        s3_server.endpoint_url, s3_server.region, False, s3_server.access_key, s3_server.secret_key
    )
    store = S3Store.from_settings(settings)
    uri = f"s3://{s3_bucket}/scene.tif"
    store.write_bytes(uri, b"first version")
    etag = store.head(uri).etag
    version = version_source(store, uri, recorded(uri, etag))
    assert (version.fingerprint, version.reused) == (f"etag:{etag}", False)


def test_described_fingerprint_reads_source_json_and_shrugs_off_a_missing_or_broken_one(tmp_path: Path) -> None:
    uri = str(tmp_path / "source.json")
    assert described_fingerprint(STORE, uri) is None
    scene = replace(described("/inbox/scene.tif", "5-1"), transform=(1.0, 0.0, 0.0, 0.0, -1.0, 0.0))
    STORE.write_bytes(uri, json.dumps(scene.to_dict()).encode())
    assert described_fingerprint(STORE, uri) == Fingerprint("/inbox/scene.tif", "5-1", NOT_A_HASH)
    for broken in (b"{not json", b"[1, 2]", b'{"uri": "/inbox/scene.tif"}', b"\xff\xfe"):
        STORE.write_bytes(uri, broken)
        assert described_fingerprint(STORE, uri) is None, broken


def test_a_registration_keeps_the_fingerprint_its_registrant_took(tmp_path: Path, source: Path) -> None:
    """The CLI and the sensor hash a new local file to version it; the registry keeps that hash
    with its version so that `source_images` reuses it instead of hashing the file again."""
    catalog, head = str(tmp_path / "catalog"), STORE.head(str(source))
    taken = version_source(STORE, str(source)).recorded()
    register_scene(STORE, catalog, "scene", head, taken)
    assert lookup_registration(STORE, catalog, "scene")[0] == head
    assert lookup_registration(STORE, catalog, "scene") == (head, taken)
    assert registered_fingerprint(STORE, catalog, "scene") == taken == Fingerprint(str(source), head.etag, sha256(source))
    register_scene(STORE, catalog, "s3-scene", head)  # S3 objects are registered without one
    assert registered_fingerprint(STORE, catalog, "s3-scene") is None
    assert lookup_registration(STORE, catalog, "s3-scene") == (head, None)
    assert registered_fingerprint(STORE, catalog, "never-registered") is None
    STORE.write_bytes(registry_uri(catalog, "scene"), b'{"fingerprint": {"uri": 1}}')
    assert registered_fingerprint(STORE, catalog, "scene") is None
