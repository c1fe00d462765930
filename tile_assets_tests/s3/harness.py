"""Shared by the S3 tests: sample images uploaded under an inbox prefix, the AWS
environment pointing at the test server, and `new_images_sensor` driven tick by tick
as the daemon would drive it."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from botocore.config import Config

from tile_assets.core.keys import scene_key
from tile_assets.definitions import build_definitions
from tile_assets.jobs import process_scene
from tile_assets.sensors import new_images_sensor
from tile_assets.settings import Settings
from tile_assets_tests.fixtures.s3 import SeaweedServer, fast_fail_config

INBOX = Path(__file__).resolve().parents[2] / "data" / "inbox"
SAMPLES = {
    "inbox/rgb-byte-tenth.tif": "rgb-byte-tenth.tif",
    "inbox/flights/2018/colorado aerial, ünïcødé.tif": "colorado_aerial_cl1.tif",
    "inbox/docs/scans/page_text.png": "page_text.png",
}
"""Keys under the bucket -> real sample images: nested prefixes, spaces, commas, unicode."""
NOT_IMAGES = {
    "inbox/docs/": b"",
    "inbox/notes.txt": b"not an image",
    "inbox/empty.tif": b"",
    "inbox/docs/readme.md": b"# readme",
}
"""A folder marker, a text file, a zero-byte .tif and a non-image suffix: all ignored."""
UPLOAD_THREADS = 32


def new_secret() -> str:
    """A secret key value unique to a test module, so finding it anywhere means it leaked."""
    return f"tile-assets-secret-{uuid.uuid4().hex}"


@contextmanager
def aws_environment(server: SeaweedServer, secret: str) -> Iterator[pytest.MonkeyPatch]:
    """The standard AWS variables pointing at `server`, restored afterwards.

    SeaweedFS without identities accepts any signature, so a unique secret
    works and can be searched for.
    """
    with pytest.MonkeyPatch.context() as env:
        env.setenv("AWS_ENDPOINT_URL", server.endpoint_url)
        env.setenv("AWS_ACCESS_KEY_ID", server.access_key)
        env.setenv("AWS_SECRET_ACCESS_KEY", secret)
        env.setenv("AWS_REGION", server.region)
        for name in ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_DEFAULT_REGION"):
            env.delenv(name, raising=False)
        yield env


def upload_samples(client: Any, bucket: str) -> None:
    """The sample images and the objects the sensor must ignore."""
    for key, name in SAMPLES.items():
        client.put_object(Bucket=bucket, Key=key, Body=(INBOX / name).read_bytes())
    for key, body in NOT_IMAGES.items():
        client.put_object(Bucket=bucket, Key=key, Body=body)


def put_many(server: SeaweedServer, bucket: str, bodies: dict[str, bytes]) -> None:
    """Upload many small objects with parallel PUTs (many end up with equal LastModified)."""
    client = server.client(fast_fail_config().merge(Config(max_pool_connections=UPLOAD_THREADS)))
    with ThreadPoolExecutor(UPLOAD_THREADS) as pool:
        for _ in pool.map(lambda item: client.put_object(Bucket=bucket, Key=item[0], Body=item[1]), bodies.items()):
            pass


def bucket_keys(client: Any, bucket: str, prefix: str = "") -> list[str]:
    """Every key under `prefix`, through boto3's paginator."""
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return [obj["Key"] for page in pages for obj in page.get("Contents", [])]


def key_of(bucket: str, key: str) -> str:
    """The partition key the sensor gives `s3://bucket/key`."""
    return scene_key(f"s3://{bucket}/{key}")


@dataclass
class SensorDriver:
    """`new_images_sensor` with the project's real resources, its cursor carried from tick to tick."""

    instance: dg.DagsterInstance
    defs: dg.Definitions
    cursor: str | None = None
    results: list[dg.SensorResult | dg.SkipReason] = field(default_factory=list)

    @classmethod
    def from_environment(cls, instance: dg.DagsterInstance) -> SensorDriver:
        """Definitions built as `workspace.yaml` builds them: `Settings.from_environment()`."""
        return cls(instance, build_definitions(Settings.from_environment()))

    def evaluate(self) -> dg.SensorResult | dg.SkipReason:
        """One evaluation; the cursor is left alone (a skipped tick does not move it)."""
        with dg.build_sensor_context(
            instance=self.instance, cursor=self.cursor, resources=self.defs.resources
        ) as context:
            result = new_images_sensor(context)
            assert isinstance(result, dg.SensorResult | dg.SkipReason), result
            assert context.cursor == self.cursor  # the sensor reports its cursor only in the result
        self.results.append(result)
        return result

    def tick(self) -> dg.SensorResult:
        """Evaluate, apply the partition requests as the daemon does, keep the new cursor."""
        result = self.evaluate()
        assert isinstance(result, dg.SensorResult), result
        self.apply(result)
        return result

    def apply(self, result: dg.SensorResult) -> None:
        """What the daemon does with a result: add and delete partitions, store the cursor."""
        for request in result.dynamic_partitions_requests or []:
            if isinstance(request, dg.AddDynamicPartitionsRequest):
                self.instance.add_dynamic_partitions(request.partitions_def_name, request.partition_keys)
            else:
                for key in request.partition_keys:
                    self.instance.delete_dynamic_partition(request.partitions_def_name, key)
        self.cursor = result.cursor


def scene_requests(result: dg.SensorResult) -> list[dg.RunRequest]:
    return [r for r in result.run_requests or [] if r.job_name == process_scene.name]


def added_keys(result: dg.SensorResult) -> list[str]:
    return [
        key
        for request in result.dynamic_partitions_requests or []
        if isinstance(request, dg.AddDynamicPartitionsRequest)
        for key in request.partition_keys
    ]


def deleted_keys(result: dg.SensorResult) -> list[str]:
    return [
        key
        for request in result.dynamic_partitions_requests or []
        if isinstance(request, dg.DeleteDynamicPartitionsRequest)
        for key in request.partition_keys
    ]
