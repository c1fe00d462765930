"""`imagery_catalog` over scenes whose files are missing, broken or out of reach for a moment."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import geopandas as gpd
import pytest

from tile_assets.assets.catalog import imagery_catalog
from tile_assets.core.errors import TransientStoreError
from tile_assets.core.store import LocalStore
from tile_assets.partitions import scenes
from tile_assets_tests.dagster_layer.fixtures import definitions_for

KEYS = ("broken-00000001", "failed-00000002", "pending-00000003")


@pytest.fixture
def catalog(tmp_path: Path) -> Path:
    root = tmp_path / "catalog"
    (root / "scenes" / KEYS[0]).mkdir(parents=True)
    (root / "scenes" / KEYS[0] / "status.json").write_text('{"status": "compl')  # cut short by a full disk
    (root / "scenes" / KEYS[1]).mkdir(parents=True)
    (root / "scenes" / KEYS[1] / "status.json").write_text(json.dumps({"status": "failed", "reason": "no such file"}))
    return root


def _refresh(tmp_path: Path, catalog: Path, instance: dg.DagsterInstance) -> dg.ExecuteInProcessResult:
    instance.add_dynamic_partitions(scenes.name, list(KEYS))
    defs = definitions_for(tmp_path / "inbox", catalog)
    return dg.materialize([imagery_catalog], instance=instance, resources=defs.resources, raise_on_error=False)


def test_a_scene_with_a_broken_file_is_listed_as_unreadable_and_the_rest_go_on(tmp_path: Path, catalog: Path) -> None:
    with dg.instance_for_test() as instance:
        assert _refresh(tmp_path, catalog, instance).success
    table = gpd.read_parquet(catalog / "scenes.parquet").set_index("id")
    assert dict(table["status"]) == {KEYS[0]: "unreadable", KEYS[1]: "failed", KEYS[2]: "pending"}
    reason = table.loc[KEYS[0], "description"]
    assert str(catalog / "scenes" / KEYS[0] / "status.json") in reason and "not JSON" in reason


def test_a_transient_read_error_fails_the_refresh_instead_of_listing_the_scene_as_pending(
    tmp_path: Path, catalog: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    read = LocalStore.read_bytes

    def flaky(self: LocalStore, uri: str) -> bytes:
        if KEYS[1] in uri:
            raise TransientStoreError(uri, "SlowDown (503)")
        return read(self, uri)

    monkeypatch.setattr(LocalStore, "read_bytes", flaky)
    with dg.instance_for_test() as instance:
        result = _refresh(tmp_path, catalog, instance)
    assert not result.success
    assert "SlowDown" in str(result.failure_data_for_node("imagery_catalog"))
    assert not (catalog / "scenes.parquet").exists()
