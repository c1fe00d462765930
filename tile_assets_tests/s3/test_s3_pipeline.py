"""The whole pipeline from an s3:// inbox to an s3:// catalog on a real SeaweedFS.

The sensor (real resources, built from the AWS_* / TILE_ASSETS_* environment)
registers the sample images and requests runs; each run is executed as the
daemon would launch it (`execute_job` of the job rebuilt from the environment);
then everything is read back from S3 with boto3. One object is then deleted and
the catalog refreshed. A secret key value unique to this module is searched for
everywhere Dagster and the pipeline store things.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import geopandas as gpd
import pandas as pd
import pystac
import pytest
from PIL import Image

from tile_assets import cli
from tile_assets.jobs import process_scene, refresh_catalog
from tile_assets.partitions import scenes
from tile_assets_tests.dagster_layer.fixtures import SCENE_FILES
from tile_assets_tests.fixtures.s3 import SeaweedServer
from tile_assets_tests.s3.harness import (
    INBOX,
    SAMPLES,
    SensorDriver,
    added_keys,
    aws_environment,
    bucket_keys,
    deleted_keys,
    key_of,
    new_secret,
    scene_requests,
    upload_samples,
)

IN_PROCESS: dict[str, Any] = {"execution": {"config": {"in_process": {}}}}
DELETED = "inbox/rgb-byte-tenth.tif"
GEOREFERENCED = {"inbox/rgb-byte-tenth.tif", "inbox/flights/2018/colorado aerial, ünïcødé.tif"}


@dataclass
class Pipeline:
    """What the module's one end-to-end pass did, and what it read back before the deletion."""

    bucket: str
    client: Any
    secret: str
    instance: dg.DagsterInstance
    first_tick: dg.SensorResult
    runs: dict[str, dg.ExecuteJobResult]
    catalog_run: dg.ExecuteJobResult
    collection: dict[str, Any]
    scenes_table: pd.DataFrame
    deletion_tick: dg.SensorResult
    refresh_run: dg.ExecuteJobResult

    @property
    def keys(self) -> dict[str, str]:
        """Partition key -> object key under the bucket, for every sample image."""
        return {key_of(self.bucket, k): k for k in SAMPLES}

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def read(self, key_or_uri: str) -> bytes:
        key = key_or_uri.removeprefix(f"s3://{self.bucket}/")
        return bytes(self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read())

    def exists(self, uri: str) -> bool:
        assert uri.startswith(f"s3://{self.bucket}/"), uri
        return bool(bucket_keys(self.client, self.bucket, uri.removeprefix(f"s3://{self.bucket}/")))

    def scene_file(self, partition_key: str, name: str) -> str:
        return f"catalog/scenes/{partition_key}/{name}"


def execute(job: Any, instance: dg.DagsterInstance, request: dg.RunRequest) -> dg.ExecuteJobResult:
    """Launch a sensor's run request the way the daemon would: its job, tags and partition."""
    tags = dict(request.tags)
    if request.partition_key:
        tags["dagster/partition"] = request.partition_key
    return dg.execute_job(dg.reconstructable(job), instance, run_config=IN_PROCESS, tags=tags, raise_on_error=False)


@pytest.fixture(scope="module")
def pipeline(s3_server: SeaweedServer) -> Iterator[Pipeline]:
    secret = new_secret()
    bucket = s3_server.make_bucket("pipeline")
    client = s3_server.client()
    upload_samples(client, bucket)
    with aws_environment(s3_server, secret) as env, dg.instance_for_test() as instance:
        env.setenv("TILE_ASSETS_INBOX", f"s3://{bucket}/inbox")
        env.setenv("TILE_ASSETS_CATALOG", f"s3://{bucket}/catalog")
        sensor = SensorDriver.from_environment(instance)
        first_tick = sensor.tick()
        runs = {r.partition_key or "": execute(cli.scene_job, instance, r) for r in scene_requests(first_tick)}
        refresh = dg.RunRequest(job_name=refresh_catalog.name)
        catalog_run = execute(cli.catalog_job, instance, refresh)
        collection = json.loads(client.get_object(Bucket=bucket, Key="catalog/collection.json")["Body"].read())
        table = gpd.read_parquet(io.BytesIO(client.get_object(Bucket=bucket, Key="catalog/scenes.parquet")["Body"].read()))

        client.delete_object(Bucket=bucket, Key=DELETED)
        deletion_tick = sensor.tick()
        [refresh] = deletion_tick.run_requests or []
        refresh_run = execute(cli.catalog_job, instance, refresh)
        yield Pipeline(
            bucket, client, secret, instance, first_tick, runs, catalog_run, collection, table, deletion_tick, refresh_run
        )


def test_the_sensor_registers_every_image_and_each_requested_run_succeeds(pipeline: Pipeline) -> None:
    assert sorted(added_keys(pipeline.first_tick)) == sorted(pipeline.keys)
    assert set(pipeline.runs) == set(pipeline.keys)
    for key, result in pipeline.runs.items():
        assert result.success, key
        run = pipeline.instance.get_run_by_id(result.run_id)
        assert run is not None and run.job_name == process_scene.name
        assert run.tags["dagster/partition"] == key
        assert run.tags["tile_assets/source"] == pipeline.uri(pipeline.keys[key])
    assert pipeline.catalog_run.success


def test_every_output_lands_under_the_catalog_prefix(pipeline: Pipeline) -> None:
    written = set(bucket_keys(pipeline.client, pipeline.bucket))
    for key in pipeline.keys:
        for name in SCENE_FILES:
            assert pipeline.scene_file(key, name) in written, (key, name)
        status = json.loads(pipeline.read(pipeline.scene_file(key, "status.json")))
        assert status["status"] == "complete"
    assert {"catalog/collection.json", "catalog/scenes.parquet"} <= written
    assert any(k.startswith("catalog/_dagster/") for k in written)  # step hand-offs live with the catalog
    assert any(k.startswith("catalog/cache/") for k in written)
    outside = {k for k in written if not k.startswith("catalog/")}
    assert outside <= set(SAMPLES) | {"inbox/docs/", "inbox/notes.txt", "inbox/empty.tif", "inbox/docs/readme.md"}


def test_findings_read_back_as_geoparquet(pipeline: Pipeline) -> None:
    for key, object_key in pipeline.keys.items():
        findings = gpd.read_parquet(io.BytesIO(pipeline.read(pipeline.scene_file(key, "findings.parquet"))))
        synthesis = json.loads(pipeline.read(pipeline.scene_file(key, "synthesis.json")))
        assert len(findings) == synthesis["total_findings"] > 0
        assert set(findings["scene_key"]) == {key}
        assert findings.geometry.notna().all() and findings.geometry.is_valid.all()
        if object_key in GEOREFERENCED:
            assert findings.crs is not None and set(findings["coord_space"]) == {"crs"}
            assert findings[["lon_min", "lat_min", "lon_max", "lat_max"]].notna().all().all()
        else:
            assert findings.crs is None and set(findings["coord_space"]) == {"pixel"}


def test_stac_items_point_at_objects_that_exist_on_s3(pipeline: Pipeline) -> None:
    for key, object_key in pipeline.keys.items():
        item_uri = pipeline.uri(pipeline.scene_file(key, "item.json"))
        item = pystac.Item.from_dict(json.loads(pipeline.read(item_uri)))
        assert item.id == key
        assert item.get_self_href() == item_uri
        assert item.assets["source"].href == pipeline.uri(object_key)  # spaces, comma, unicode kept
        assert set(item.assets) == {"source", "findings", "preview", "synthesis"}
        for name, asset in item.assets.items():
            assert asset.href.startswith(f"s3://{pipeline.bucket}/"), name
            if name != "source" or object_key != DELETED:
                assert pipeline.exists(asset.href), (key, name, asset.href)
        assert item.assets["findings"].href == pipeline.uri(pipeline.scene_file(key, "findings.parquet"))
        assert (item.bbox is not None) == (object_key in GEOREFERENCED)


def test_previews_are_pngs(pipeline: Pipeline) -> None:
    for key in pipeline.keys:
        image = Image.open(io.BytesIO(pipeline.read(pipeline.scene_file(key, "preview.png"))))
        assert image.format == "PNG"
        assert min(image.size) > 0


def test_collection_and_scenes_table_list_every_scene(pipeline: Pipeline) -> None:
    collection = pystac.Collection.from_dict(pipeline.collection)
    item_links = {link.get_absolute_href() for link in collection.get_links("item")}
    assert item_links == {pipeline.uri(pipeline.scene_file(key, "item.json")) for key in pipeline.keys}
    assert all(pipeline.exists(href or "") for href in item_links)
    table = pipeline.scenes_table
    assert sorted(table["id"]) == sorted(pipeline.keys)
    assert table.geometry.notna().sum() == len(GEOREFERENCED)


def test_a_deleted_object_leaves_the_catalog_and_keeps_its_history(pipeline: Pipeline) -> None:
    gone = key_of(pipeline.bucket, DELETED)
    assert deleted_keys(pipeline.deletion_tick) == [gone]
    assert not scene_requests(pipeline.deletion_tick)
    assert pipeline.refresh_run.success
    assert gone not in scenes.get_partition_keys(dynamic_partitions_store=pipeline.instance)
    assert not pipeline.exists(pipeline.uri(f"catalog/_registry/{gone}.json"))

    collection = pystac.Collection.from_dict(json.loads(pipeline.read("catalog/collection.json")))
    links = {link.get_absolute_href() for link in collection.get_links("item")}
    assert links == {pipeline.uri(pipeline.scene_file(key, "item.json")) for key in pipeline.keys if key != gone}
    table = gpd.read_parquet(io.BytesIO(pipeline.read("catalog/scenes.parquet")))
    assert sorted(table["id"]) == sorted(key for key in pipeline.keys if key != gone)

    # The partition's history stays: its materializations and the files its run wrote.
    for asset in ("source_images", "tiles", "tile_findings", "scene_synthesis"):
        history = pipeline.instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=[gone]), limit=10
        )
        assert len(history.records) == 1, asset
    assert pipeline.exists(pipeline.uri(pipeline.scene_file(gone, "item.json")))


def stored_text(instance: dg.DagsterInstance, run_ids: list[str]) -> dict[str, str]:
    """Everything Dagster keeps about these runs, as text, by where it came from."""
    texts: dict[str, str] = {}
    for run_id in run_ids:
        run = instance.get_run_by_id(run_id)
        assert run is not None
        texts[f"{run_id} run config"] = json.dumps(run.run_config)
        texts[f"{run_id} tags"] = json.dumps(dict(run.tags))
        texts[f"{run_id} event log"] = "\n".join(dg.serialize_value(e) for e in instance.all_logs(run_id))
        snapshot = instance.get_job_snapshot(run.job_snapshot_id or "")
        texts[f"{run_id} job snapshot"] = dg.serialize_value(snapshot)
    return texts


def test_the_secret_key_is_stored_nowhere(pipeline: Pipeline) -> None:
    run_ids = [r.run_id for r in (*pipeline.runs.values(), pipeline.catalog_run, pipeline.refresh_run)]
    texts = stored_text(pipeline.instance, run_ids)
    # The stored resource config (launchpad defaults) names the variable; its value is nowhere.
    snapshots = [text for where, text in texts.items() if where.endswith("job snapshot")]
    assert all("AWS_SECRET_ACCESS_KEY" in text for text in snapshots)
    metadata = [text for where, text in texts.items() if where.endswith("event log")]
    assert all("ASSET_MATERIALIZATION" in text for text in metadata)
    for where, text in texts.items():
        assert pipeline.secret not in text, where
    # Every byte the instance wrote (SQLite storage, captured compute logs) and the catalog.
    for path in Path(pipeline.instance.root_directory).rglob("*"):
        if path.is_file():
            assert pipeline.secret.encode() not in path.read_bytes(), path
    for key in bucket_keys(pipeline.client, pipeline.bucket, "catalog/"):
        assert pipeline.secret.encode() not in pipeline.read(key), key


def test_the_cli_runs_an_s3_inbox_into_an_s3_catalog(
    s3_server: SeaweedServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    secret = new_secret()
    bucket = s3_server.make_bucket("cli")
    client = s3_server.client()
    source = "inbox/a b/ü,1.tif"
    client.put_object(Bucket=bucket, Key=source, Body=(INBOX / "rgb-byte-tenth.tif").read_bytes())
    with aws_environment(s3_server, secret):
        # The CLI sets these itself; setting them first lets monkeypatch restore them.
        monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
        monkeypatch.setenv("TILE_ASSETS_INBOX", "data/inbox")
        monkeypatch.setenv("TILE_ASSETS_CATALOG", "data/catalog")
        assert cli.main(["run", f"s3://{bucket}/inbox", "--catalog", f"s3://{bucket}/catalog"]) == 0

    key = key_of(bucket, source)
    registry = json.loads(client.get_object(Bucket=bucket, Key=f"catalog/_registry/{key}.json")["Body"].read())
    assert registry["uri"] == f"s3://{bucket}/{source}"
    collection = json.loads(client.get_object(Bucket=bucket, Key="catalog/collection.json")["Body"].read())
    hrefs = [link["href"] for link in collection["links"] if link["rel"] == "item"]
    assert hrefs == [f"s3://{bucket}/catalog/scenes/{key}/item.json"]
    item = json.loads(client.get_object(Bucket=bucket, Key=f"catalog/scenes/{key}/item.json")["Body"].read())
    assert item["assets"]["source"]["href"] == f"s3://{bucket}/{source}"
    for path in (tmp_path / "home").rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path
