"""`new_images_sensor` over an s3:// inbox on a real SeaweedFS: partitions, run keys, bounded
ticks over thousands of keys, overwrites, deletions, odd keys, credentials, and the server
going away in the middle of a tick."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import dagster as dg
import pytest
from dagster_aws.s3 import S3Resource
from hypothesis import example, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from rasterio.windows import Window

import tile_assets.core.inbox
import tile_assets.sensors
from tile_assets.core.errors import StoreError
from tile_assets.core.keys import scene_key
from tile_assets.core.raster import open_raster
from tile_assets.core.registry import registry_uri
from tile_assets.definitions import build_definitions
from tile_assets.jobs import refresh_catalog
from tile_assets.partitions import scenes
from tile_assets.resources import ImageryStore
from tile_assets.sensors import run_all
from tile_assets.settings import Settings
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
    put_many,
    scene_requests,
    upload_samples,
)

MANY = 2500
MANY_PER_TICK = 1200
"""More than one S3 page (1,000 keys), so a tick also resumes the listing within itself."""
COLORADO = "inbox/flights/2018/colorado aerial, ünïcødé.tif"
PAGE = "inbox/docs/scans/page_text.png"


@pytest.fixture(scope="module")
def secret(s3_server: SeaweedServer) -> Iterator[str]:
    """AWS_* variables for the test server, with a secret key value unique to this module."""
    value = new_secret()
    with aws_environment(s3_server, value):
        yield value


@dataclass
class Lab:
    bucket: str
    client: Any
    sensor: SensorDriver

    @property
    def catalog(self) -> str:
        return f"s3://{self.bucket}/catalog"

    def etag(self, key: str) -> str:
        return str(self.client.head_object(Bucket=self.bucket, Key=key)["ETag"]).strip('"')

    def registry(self) -> dict[str, dict[str, Any]]:
        """Every registry entry the sensor wrote, by partition key."""
        entries = {}
        for key in bucket_keys(self.client, self.bucket, "catalog/_registry/"):
            body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
            entries[key.rsplit("/", 1)[-1].removesuffix(".json")] = json.loads(body)
        return entries

    def partitions(self) -> set[str]:
        return set(scenes.get_partition_keys(dynamic_partitions_store=self.sensor.instance))


def make_lab(server: SeaweedServer, monkeypatch: pytest.MonkeyPatch, instance: dg.DagsterInstance) -> Lab:
    """A fresh bucket whose `inbox/` the sensor watches, with definitions built from the environment."""
    bucket = server.make_bucket("sensor")
    monkeypatch.setenv("TILE_ASSETS_INBOX", f"s3://{bucket}/inbox")
    monkeypatch.setenv("TILE_ASSETS_CATALOG", f"s3://{bucket}/catalog")
    return Lab(bucket, server.client(), SensorDriver.from_environment(instance))


@pytest.fixture
def lab(s3_server: SeaweedServer, secret: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Lab]:
    """The sample images (and objects to ignore) under a fresh bucket's `inbox/`."""
    with dg.instance_for_test() as instance:
        lab = make_lab(s3_server, monkeypatch, instance)
        upload_samples(lab.client, lab.bucket)
        yield lab


def test_settings_and_resource_come_from_the_environment_as_env_vars(lab: Lab, secret: str) -> None:
    configured = Settings.from_environment()
    assert configured.inbox == f"s3://{lab.bucket}/inbox"
    assert configured.catalog == lab.catalog
    assert set(configured.s3_env) == {"endpoint_url", "region_name", "aws_access_key_id", "aws_secret_access_key"}
    assert configured.s3_use_ssl is False  # the endpoint is http://
    s3 = lab.sensor.defs.resources["imagery"].s3  # type: ignore[index,union-attr]
    assert isinstance(s3, S3Resource)
    # The definitions (and so the UI) hold the variable's name, never its value.
    assert isinstance(s3.aws_secret_access_key, dg.EnvVar)
    assert s3.aws_secret_access_key.env_var_name == "AWS_SECRET_ACCESS_KEY"
    assert secret not in repr(lab.sensor.defs.resources)


def test_first_tick_registers_every_image_and_requests_one_run_each(lab: Lab) -> None:
    # SeaweedFS drops a leading slash (AWS keeps it in the key); either way nothing
    # the sensor writes may leave the catalog prefix.
    lab.client.put_object(Bucket=lab.bucket, Key="/inbox/leading slash.png", Body=(INBOX / "page_text.png").read_bytes())
    listed = bucket_keys(lab.client, lab.bucket, "inbox/")
    images = [k for k in listed if k in SAMPLES or "leading slash" in k]
    assert len(images) == len(SAMPLES) + 1

    result = lab.sensor.tick()

    keys = {key_of(lab.bucket, k): k for k in images}
    assert sorted(added_keys(result)) == sorted(keys)
    requests = scene_requests(result)
    assert len(requests) == len(result.run_requests or []) == len(keys)
    for request in requests:
        key = keys[request.partition_key or ""]
        assert request.run_key == f"{request.partition_key}:{lab.etag(key)}"
        assert request.tags["tile_assets/version"] == lab.etag(key)
        assert request.tags["tile_assets/source"] == f"s3://{lab.bucket}/{key}"
    for partition_key in keys:
        assert not set(partition_key) & set(" ,|/"), partition_key
    assert lab.partitions() == set(keys)
    registry = lab.registry()
    assert set(registry) == set(keys)  # nothing for the folder marker, .txt, .md or zero-byte .tif
    for partition_key, entry in registry.items():
        assert entry["uri"] == f"s3://{lab.bucket}/{keys[partition_key]}"
        assert entry["etag"] == lab.etag(keys[partition_key])
    written = set(bucket_keys(lab.client, lab.bucket)) - set(listed)
    (state, *others) = sorted(k for k in written if k.startswith("catalog/_sensor/"))
    assert not others  # what the sensor knows: one file beside the catalog, which the cursor names
    assert state.endswith("/" + json.loads(lab.sensor.cursor or "{}")["state"])
    assert written - {state} == {f"catalog/_registry/{partition_key}.json" for partition_key in keys}

    again = lab.sensor.tick()
    assert not again.run_requests and not again.dynamic_partitions_requests


def test_an_overwritten_object_starts_exactly_one_run(lab: Lab) -> None:
    first = {r.partition_key: r.run_key for r in scene_requests(lab.sensor.tick())}
    old_etag = lab.etag(COLORADO)
    lab.client.put_object(Bucket=lab.bucket, Key=COLORADO, Body=(INBOX / "rgb-byte-tenth.tif").read_bytes())

    changed = lab.sensor.tick()

    [request] = changed.run_requests or []
    key = key_of(lab.bucket, COLORADO)
    assert request.partition_key == key
    assert request.run_key == f"{key}:{lab.etag(COLORADO)}" != first[key]
    assert lab.etag(COLORADO) != old_etag
    assert not changed.dynamic_partitions_requests  # the partition exists already
    assert lab.registry()[key]["etag"] == lab.etag(COLORADO)
    relisted = lab.sensor.tick()
    assert not relisted.run_requests and not relisted.dynamic_partitions_requests

    # The same bytes again: a new LastModified, the same ETag, no run.
    lab.client.put_object(Bucket=lab.bucket, Key=COLORADO, Body=(INBOX / "rgb-byte-tenth.tif").read_bytes())
    assert not lab.sensor.tick().run_requests


def test_a_deleted_object_is_reported_and_leaves_the_registry(
    lab: Lab, capfd: pytest.CaptureFixture[str]
) -> None:
    lab.sensor.tick()
    gone = key_of(lab.bucket, PAGE)
    lab.client.delete_object(Bucket=lab.bucket, Key=PAGE)

    result = lab.sensor.tick()

    assert deleted_keys(result) == [gone]
    [refresh] = result.run_requests or []
    assert refresh.job_name == refresh_catalog.name and refresh.run_key is None
    assert f"scene {gone}: its object left the inbox" in capfd.readouterr().err
    assert gone not in lab.partitions() and gone not in lab.registry()
    assert len(lab.partitions()) == len(SAMPLES) - 1
    assert not lab.sensor.tick().run_requests


def test_a_missing_bucket_skips_the_tick_and_keeps_the_cursor(lab: Lab) -> None:
    lab.sensor.tick()
    cursor = lab.sensor.cursor
    configured = Settings.from_environment()
    lab.sensor.defs = build_definitions(
        Settings(f"s3://no-such-bucket-{lab.bucket}/inbox", lab.catalog, configured.s3_env, configured.s3_use_ssl)
    )

    result = lab.sensor.evaluate()

    assert isinstance(result, dg.SkipReason)
    assert "inbox scan failed" in (result.skip_message or "")
    assert "no such bucket" in (result.skip_message or "")
    assert lab.sensor.cursor == cursor


@contextmanager
def restarts(server: SeaweedServer) -> Iterator[None]:
    """Whatever happens inside, the session's server is running again afterwards."""
    try:
        yield
    finally:
        server.start()


class StopServer:
    """Calls through to `target`, but stops the S3 server first on the `at`-th call (once armed)."""

    def __init__(self, server: SeaweedServer, target: Callable[..., Any], at: int) -> None:
        self.server, self.target, self.at = server, target, at
        self.calls = 0
        self.armed = False

    def __call__(self, *args: Any) -> Any:
        if self.armed:
            self.calls += 1
            if self.calls == self.at:
                self.server.stop()
        return self.target(*args)


def test_thousands_of_keys_are_each_seen_once_even_when_the_server_dies_mid_tick(
    s3_server: SeaweedServer, secret: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tile_assets.sensors, "MAX_OBJECTS_PER_TICK", MANY_PER_TICK)
    listing_stop = StopServer(s3_server, tile_assets.core.inbox.scene_key, at=1000)
    monkeypatch.setattr(tile_assets.core.inbox, "scene_key", listing_stop)
    with dg.instance_for_test() as instance, restarts(s3_server):
        lab = make_lab(s3_server, monkeypatch, instance)
        put_many(s3_server, lab.bucket, {f"inbox/many/{i:05d}.tif": b"%d" % i for i in range(MANY)})
        stamps = Counter(
            obj["LastModified"]
            for page in lab.client.get_paginator("list_objects_v2").paginate(Bucket=lab.bucket, Prefix="inbox/")
            for obj in page["Contents"]
        )
        assert max(stamps.values()) > 1  # equal LastModified: the case a `>` on timestamps misses
        requested: list[str] = []

        requested += [r.run_key or "" for r in lab.sensor.tick().run_requests or []]
        assert len(requested) == MANY_PER_TICK

        # The server dies after the first 1,000-key page of this tick: fetching the next one fails.
        listing_stop.armed = True
        cursor = lab.sensor.cursor
        failed = lab.sensor.evaluate()
        listing_stop.armed = False
        assert isinstance(failed, dg.SkipReason)
        assert f"inbox scan failed: s3://{lab.bucket}/inbox: EndpointConnectionError" in (failed.skip_message or "")
        assert lab.sensor.cursor == cursor and len(lab.partitions()) == MANY_PER_TICK
        s3_server.start()

        caught_up = lab.sensor.tick()
        requested += [r.run_key or "" for r in caught_up.run_requests or []]
        assert len(requested) == 2 * MANY_PER_TICK

        last = lab.sensor.tick()
        requested += [r.run_key or "" for r in last.run_requests or []]

        keys = {key_of(lab.bucket, f"inbox/many/{i:05d}.tif") for i in range(MANY)}
        assert len(requested) == len(set(requested)) == MANY
        assert {run_key.split(":", 1)[0] for run_key in requested} == keys
        assert lab.partitions() == keys
        assert {k.rsplit("/", 1)[-1].removesuffix(".json") for k in bucket_keys(lab.client, lab.bucket, "catalog/_registry/")} == keys
        # A second pass over the unchanged prefix: three bounded ticks, nothing requested,
        # and it ends with the cursor the first pass ended with.
        for _ in range(3):
            result = lab.sensor.tick()
            assert not result.run_requests and not result.dynamic_partitions_requests
        assert result.cursor == last.cursor


def test_the_standard_credential_chain_works_when_no_variable_is_set(
    s3_server: SeaweedServer, secret: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    config = tmp_path / "config"
    config.write_text(f"[default]\nregion = {s3_server.region}\nendpoint_url = {s3_server.endpoint_url}\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))
    # boto3's default session caches config and credentials for the process; start a fresh one.
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)
    with dg.instance_for_test() as instance:
        lab = make_lab(s3_server, monkeypatch, instance)
        lab.client.put_object(Bucket=lab.bucket, Key="inbox/naip.tif", Body=(INBOX / "naip_2018.tif").read_bytes())
        assert Settings.from_environment().s3_env == ()

        # No credentials anywhere in the chain: boto3 refuses to sign, the tick says so.
        refused = lab.sensor.evaluate()
        assert isinstance(refused, dg.SkipReason)
        assert "Unable to locate credentials" in (refused.skip_message or "")

        (tmp_path / "credentials").write_text(
            f"[default]\naws_access_key_id = {s3_server.access_key}\naws_secret_access_key = {secret}\n"
        )
        [request] = lab.sensor.tick().run_requests or []
        assert request.partition_key == key_of(lab.bucket, "inbox/naip.tif")
        # GDAL reaches the same endpoint with the same chain: a windowed read in place.
        with dg.build_resources({"imagery": lab.sensor.defs.resources["imagery"]}) as resources:  # type: ignore[index]
            store = resources.imagery.inbox_store()
        with open_raster(store, f"s3://{lab.bucket}/inbox/naip.tif") as ds:
            assert ds.read(1, window=Window(0, 0, 64, 64)).shape == (64, 64)


HOSTILE_CATALOG = "s3://bucket/catalog"
HOSTILE_IMAGERY = ImageryStore(inbox="s3://bucket/inbox", catalog=HOSTILE_CATALOG, s3=S3Resource())


@hypothesis_settings(max_examples=100, deadline=None)
@given(name=st.text(min_size=1, max_size=80))
@example(name="../../../etc/passwd.tif")
@example(name="/leading.tif")
@example(name="..")
@example(name="a/../../catalog/_registry/x.json")
@example(name=" ,|.tif")
def test_hostile_keys_cannot_steer_writes_outside_the_catalog(name: str) -> None:
    """S3 itself accepts `..` and leading slashes (SeaweedFS refuses or normalizes them)."""
    key = scene_key(f"s3://bucket/inbox/{name}")
    assert key not in (".", "..") and not set(key) & set(" ,|/\\")
    for uri in (registry_uri(HOSTILE_CATALOG, key), HOSTILE_IMAGERY.scene_uri(key, "item.json")):
        assert uri.startswith(f"{HOSTILE_CATALOG}/")
        assert ".." not in uri[len(HOSTILE_CATALOG) :].split("/")


def test_registry_writes_stop_at_the_first_error() -> None:
    """With the store gone, the calls not yet started are cancelled instead of each waiting out retries."""
    started: list[int] = []

    def write(i: int) -> None:
        started.append(i)
        if i == 0:
            raise StoreError(f"s3://bucket/catalog/_registry/{i}.json", "connection refused")
        time.sleep(0.05)

    with pytest.raises(StoreError, match="connection refused"):
        run_all(write, range(200))
    assert 0 in started and len(started) < 200
