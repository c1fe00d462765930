"""The per-scene assets and the catalog, materialized on a real temporary instance with real images.

One module-scoped world: RGB.byte.tif (4 tiles) runs through `process_scene`,
all-nodata.tif is rejected at `tiles`, rgb-byte-tenth.tif is registered but
never run; then `imagery_catalog` is refreshed, and RGB.byte.tif is run again
to show the tile cache at work.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import geopandas as gpd
import pandas as pd
import pystac
import pytest
from PIL import Image

from tile_assets.jobs import refresh_catalog
from tile_assets_tests.dagster_layer.fixtures import (
    BAD,
    INBOX,
    SCENE_FILES,
    copy_images,
    definitions_for,
    register_image,
    run_scene,
)


@dataclass
class World:
    instance: dg.DagsterInstance
    defs: dg.Definitions
    catalog: Path
    image: Path
    key: str
    nodata_key: str
    pending_key: str
    first: dg.ExecuteInProcessResult
    rejected: dg.ExecuteInProcessResult

    def scene_file(self, name: str) -> Path:
        return self.catalog / "scenes" / self.key / name


@dataclass
class Rerun:
    result: dg.ExecuteInProcessResult
    findings_before: gpd.GeoDataFrame


def materialization(
    result: dg.ExecuteInProcessResult, asset: str
) -> dg.AssetMaterialization:
    events = [
        e
        for e in result.get_asset_materialization_events()
        if e.asset_key == dg.AssetKey(asset)
    ]
    assert len(events) == 1, f"{asset}: {len(events)} materializations"
    return events[0].step_materialization_data.materialization


def metadata(result: dg.ExecuteInProcessResult, asset: str) -> dict[str, object]:
    return {k: v.value for k, v in materialization(result, asset).metadata.items()}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("assets")
    inbox, catalog = root / "inbox", root / "catalog"
    image, nodata, pending = copy_images(
        inbox,
        INBOX / "RGB.byte.tif",
        BAD / "all-nodata.tif",
        INBOX / "rgb-byte-tenth.tif",
    )
    defs = definitions_for(inbox, catalog)
    with dg.instance_for_test() as instance:
        key = register_image(instance, catalog, image)
        nodata_key = register_image(instance, catalog, nodata)
        pending_key = register_image(instance, catalog, pending)
        yield World(
            instance=instance,
            defs=defs,
            catalog=catalog,
            image=image,
            key=key,
            nodata_key=nodata_key,
            pending_key=pending_key,
            first=run_scene(defs, instance, key),
            rejected=run_scene(defs, instance, nodata_key),
        )


@pytest.fixture(scope="module")
def catalog_result(world: World) -> dg.ExecuteInProcessResult:
    job = world.defs.resolve_job_def(refresh_catalog.name)
    return job.execute_in_process(instance=world.instance)


@pytest.fixture(scope="module")
def rerun(world: World, catalog_result: dg.ExecuteInProcessResult) -> Rerun:
    """Run the same partition again (after the catalog tests' fixture, so both see the first run)."""
    before = gpd.read_parquet(world.scene_file("findings.parquet"))
    return Rerun(
        result=run_scene(world.defs, world.instance, world.key), findings_before=before
    )


def test_scene_run_succeeds_and_writes_every_file(world: World) -> None:
    assert world.first.success
    for name in SCENE_FILES:
        path = world.scene_file(name)
        assert path.is_file() and path.stat().st_size > 0, name
    status = json.loads(world.scene_file("status.json").read_text())
    assert status["status"] == "complete"
    assert status["partition_key"] == world.key


def test_source_description_and_data_version(world: World) -> None:
    source = json.loads(world.scene_file("source.json").read_text())
    assert (source["width"], source["height"], source["count"], source["dtype"]) == (
        791,
        718,
        3,
        "uint8",
    )
    assert source["crs"]
    expected = "sha256:" + hashlib.sha256(world.image.read_bytes()).hexdigest()
    assert source["fingerprint"] == expected
    assert (
        materialization(world.first, "source_images").tags["dagster/data_version"]
        == expected
    )
    records = world.instance.fetch_materializations(
        dg.AssetRecordsFilter(
            asset_key=dg.AssetKey("source_images"), asset_partitions=[world.key]
        ),
        limit=1,
    ).records
    assert records[0].asset_materialization.tags["dagster/data_version"] == expected
    meta = metadata(world.first, "source_images")
    assert meta["fingerprint"] == expected
    assert (meta["width"], meta["height"], meta["bands"]) == (791, 718, 3)


def test_tiles_manifest(world: World) -> None:
    manifest = pd.read_parquet(world.scene_file("tiles.parquet"))
    assert {"tile_id", "row", "col", "valid_fraction"} <= set(manifest.columns)
    assert all(
        re.fullmatch(r"r\d{3}c\d{3}", tile_id) for tile_id in manifest["tile_id"]
    )
    assert manifest["tile_id"].is_unique
    assert manifest["valid_fraction"].between(0, 1, inclusive="right").all()
    meta = metadata(world.first, "tiles")
    assert (
        meta["tile_count"] == len(manifest) == 4
    )  # 791x718 in 512 px tiles, edges shifted inward
    assert meta["tile_size"] == 512


def test_findings_and_synthesis_agree(world: World) -> None:
    findings = gpd.read_parquet(world.scene_file("findings.parquet"))
    synthesis = json.loads(world.scene_file("synthesis.json").read_text())
    assert len(findings) > 0
    assert findings.crs is not None
    assert findings.geometry.is_valid.all()
    assert (findings["scene_key"] == world.key).all()
    by_label = findings["label"].value_counts().to_dict()
    assert synthesis["counts_by_label"] == by_label
    assert synthesis["total_findings"] == len(findings)
    meta = metadata(world.first, "tile_findings")
    assert meta["findings"] == len(findings)
    assert meta["counts_by_label"] == by_label
    assert meta["coverage"] == 1.0
    assert meta["tiles_inferred"] == 4 and meta["tiles_from_cache"] == 0
    results = pd.read_parquet(world.scene_file("tile_results.parquet"))
    assert len(results) == 4 and (results["status"] == "ok").all()


def test_synthesis_metadata(world: World) -> None:
    synthesis = json.loads(world.scene_file("synthesis.json").read_text())
    meta = metadata(world.first, "scene_synthesis")
    assert meta["coverage"] == 1.0
    assert meta["counts_by_label"] == synthesis["counts_by_label"]
    assert meta["description"] == synthesis["description"]
    assert str(meta["preview"]).startswith(f"![{world.key}](data:image/png;base64,")
    assert meta["stac_item"] == str(world.scene_file("item.json"))


def test_stac_item_and_preview(world: World) -> None:
    item = pystac.Item.from_dict(json.loads(world.scene_file("item.json").read_text()))
    assert item.id == world.key
    assert item.geometry is not None and item.bbox is not None
    for name, asset in item.assets.items():
        if name != "source":
            assert Path(asset.href).is_file(), name
    assert item.assets["source"].href == str(world.image)
    with Image.open(world.scene_file("preview.png")) as preview:
        assert preview.format == "PNG"
        preview.load()
        assert min(preview.size) > 0


def test_asset_checks_recorded_on_instance(world: World) -> None:
    entries = world.instance.all_logs(
        world.first.run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION
    )
    evaluations = [
        e.dagster_event.asset_check_evaluation_data for e in entries if e.dagster_event
    ]
    results = {evaluation.check_name: evaluation.passed for evaluation in evaluations}
    assert results == {"tile_coverage": True, "findings_schema": True}


def test_rejected_scene_records_why(world: World) -> None:
    assert not world.rejected.success
    status = json.loads(
        (world.catalog / "scenes" / world.nodata_key / "status.json").read_text()
    )
    assert status["status"] == "failed"
    assert status["stage"] == "tiles"
    assert status["error_type"] == "UnsupportedRasterError"
    assert status["object"].endswith("all-nodata.tif")
    assert "nodata" in status["reason"]
    failures = [e for e in world.rejected.all_events if e.is_step_failure]
    assert [e.step_key for e in failures] == ["tiles"]


def test_catalog_lists_every_partition(
    world: World, catalog_result: dg.ExecuteInProcessResult
) -> None:
    assert catalog_result.success
    collection = pystac.Collection.from_dict(
        json.loads((world.catalog / "collection.json").read_text())
    )
    item_links = [link for link in collection.links if link.rel == "item"]
    assert [link.href for link in item_links] == [str(world.scene_file("item.json"))]
    table = gpd.read_parquet(world.catalog / "scenes.parquet")
    assert sorted(table["id"]) == sorted(
        [world.key, world.nodata_key, world.pending_key]
    )
    status = dict(zip(table["id"], table["status"], strict=True))
    assert status == {
        world.key: "complete",
        world.nodata_key: "failed",
        world.pending_key: "pending",
    }
    row = table.set_index("id").loc[world.key]
    assert row.geometry is not None and row.geometry.is_valid
    assert row["coverage"] == 1.0
    assert "nodata" in table.set_index("id").loc[world.nodata_key, "description"]
    meta = metadata(catalog_result, "imagery_catalog")
    assert (meta["scenes"], meta["complete"], meta["not_complete"]) == (3, 1, 2)


def test_rerun_reads_every_tile_from_cache(world: World, rerun: Rerun) -> None:
    assert rerun.result.success
    tiles = metadata(rerun.result, "tiles")["tile_count"]
    meta = metadata(rerun.result, "tile_findings")
    assert meta["tiles_from_cache"] == tiles == 4
    assert meta["tiles_inferred"] == 0
    after = gpd.read_parquet(world.scene_file("findings.parquet"))
    pd.testing.assert_frame_equal(
        pd.DataFrame(after), pd.DataFrame(rerun.findings_before)
    )


def test_step_hand_offs_are_json_beside_the_catalog(world: World) -> None:
    """Assets and ops hand on small JSON documents under `<catalog>/_dagster/`; nothing is pickled."""
    root = world.catalog / "_dagster"
    assets = {p.parent.name for p in (root / "assets").rglob(f"{world.key}.json")}
    assert assets == {"source_images", "tiles", "tile_findings", "scene_synthesis"}
    run_dir = root / "runs" / world.first.run_id
    planned = {
        p.stem
        for p in (run_dir / "tile_findings.plan_batches" / "result").glob("*.json")
    }
    inferred = {
        p.parent.name
        for p in run_dir.glob("tile_findings.infer_batch[[]*[]]/result.json")
    }
    assert planned and inferred == {
        f"tile_findings.infer_batch[{batch}]" for batch in planned
    }
    for path in root.rglob("*"):
        if path.is_file():
            assert path.suffix == ".json", path
            json.loads(path.read_text())


def test_catalog_automation_follows_scene_successes_and_failures(
    tmp_path: Path,
) -> None:
    """The automation sensor's condition asks for `imagery_catalog` once per scene outcome, failed ones too."""
    inbox, catalog = tmp_path / "inbox", tmp_path / "catalog"
    good, bad = copy_images(inbox, INBOX / "rgb-byte-tenth.tif", BAD / "all-nodata.tif")
    defs = definitions_for(inbox, catalog)
    target = dg.AssetKey("imagery_catalog")
    with dg.instance_for_test() as instance:
        cursor = None

        def requested() -> int:
            nonlocal cursor
            result = dg.evaluate_automation_conditions(
                defs=defs, instance=instance, cursor=cursor
            )
            cursor = result.cursor
            return result.get_num_requested(target)

        keys = [register_image(instance, catalog, image) for image in (good, bad)]
        assert requested() == 0  # registered scenes alone change nothing yet
        assert not run_scene(defs, instance, keys[1]).success
        assert requested() == 1  # the rejected scene must show up as failed
        assert requested() == 0
        assert run_scene(defs, instance, keys[0]).success
        assert requested() == 1
        assert requested() == 0
