"""Resources: where images come from, where the catalog goes, and how S3 is reached.

The store behind each URI (local folder or S3) is chosen here, once, from the
URI scheme; S3 endpoint, region and credentials come from dagster-aws's
`S3Resource`, configured from environment variables by `definitions.py`.
"""


import json
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal, TypeVar

import boto3
import dagster as dg
from botocore.config import Config as BotoConfig
from dagster_aws.s3 import S3Resource
from pydantic import Field

from tile_assets.core.errors import PolicyError, StoreError
from tile_assets.core.gate.area import AreaPolicyCheck, load_areas
from tile_assets.core.gate.base import Gate, GateCheck, policy_fingerprint
from tile_assets.core.gate.blocklist import DEFAULT_MAX_DISTANCE, BlocklistCheck, parse_blocklist
from tile_assets.core.gate.moderation import ModerationCheck
from tile_assets.core.inference import PREDICT_CHUNK
from tile_assets.core.models.base import TileModel
from tile_assets.core.models.registry import DEFAULT_MODEL, load_model
from tile_assets.core.source_version import Fingerprint, described_fingerprint
from tile_assets.core.store import S3Settings, Store, join_uri, open_store

SCENE_READERS = 8
"""Scenes `ImageryStore.read_scenes` reads at once: one GET after another is a round trip each (a
few ms on a local S3 server, tens on AWS), and boto3's client pools 10 connections."""
T = TypeVar("T")


class ImageryStore(dg.ConfigurableResource):
    """The inbox prefix watched for images and the catalog root outputs go to."""

    inbox: str
    catalog: str
    s3: dg.ResourceDependency[S3Resource]

    def s3_settings(self) -> S3Settings:
        return S3Settings(
            endpoint_url=self.s3.endpoint_url,
            region=self.s3.region_name,
            use_ssl=self.s3.use_ssl,
            access_key_id=self.s3.aws_access_key_id,
            secret_access_key=self.s3.aws_secret_access_key,
            session_token=self.s3.aws_session_token,
        )

    def store_for(self, uri: str) -> Store:
        """The store that reads and writes `uri` (local path or s3://)."""
        return open_store(uri, self.s3_settings())

    def inbox_store(self) -> Store:
        return self.store_for(self.inbox)

    def catalog_store(self) -> Store:
        return self.store_for(self.catalog)

    def scene_uri(self, partition_key: str, name: str) -> str:
        """Where a scene's output file lives: `<catalog>/scenes/<key>/<name>`."""
        return join_uri(self.catalog, "scenes", partition_key, name)

    def catalog_uri(self, name: str) -> str:
        return join_uri(self.catalog, name)

    def read_scenes(self, keys: Sequence[str], read: Callable[[Store, str], T]) -> list[T]:
        """`read(store, key)` for every scene, in `keys`' order, `SCENE_READERS` at a time through one
        catalog store (an S3 store builds its own boto3 client, ~10 ms)."""
        store = self.catalog_store()
        with ThreadPoolExecutor(SCENE_READERS, thread_name_prefix="scene-read") as pool:
            return list(pool.map(lambda key: read(store, key), keys))

    def recorded_fingerprints(self, partition_key: str, registered: Fingerprint | None) -> list[Fingerprint]:
        """The content hashes the catalog holds for a scene: its description's and `registered`, its registration's."""
        described = described_fingerprint(self.catalog_store(), self.scene_uri(partition_key, "source.json"))
        return [f for f in (described, registered) if f is not None]


class CatalogJsonIOManager(dg.ConfigurableIOManager):
    """Hands small JSON descriptors between steps, kept under `<catalog>/_dagster/`.

    Assets write their own data files (Parquet, PNG, STAC) and return a small
    JSON-able dict; ops hand on batch plans and reports. Nothing is pickled, and
    because the files live with the catalog (local or S3), re-execution and
    workers on other machines find them.
    """

    imagery: dg.ResourceDependency[ImageryStore]

    def _uri(self, parts: list[str], name: str) -> str:
        return join_uri(self.imagery.catalog, "_dagster", *parts, f"{name}.json")

    def _asset_uri(self, context: dg.OutputContext | dg.InputContext) -> str:
        name = context.asset_partition_key if context.has_asset_partitions else "all"
        return self._uri(["assets", *context.asset_key.path], name)

    def _op_uri(self, context: dg.OutputContext) -> str:
        identifier = list(context.get_identifier())
        return self._uri(["runs", *identifier[:-1]], identifier[-1])

    def handle_output(self, context: dg.OutputContext, obj: Any) -> None:
        if obj is None:
            return
        uri = self._asset_uri(context) if context.has_asset_key else self._op_uri(context)
        self.imagery.catalog_store().write_bytes(
            uri, json.dumps(obj, sort_keys=True, default=str).encode(), "application/json"
        )

    def load_input(self, context: dg.InputContext) -> Any:
        if context.has_asset_key:
            uri = self._asset_uri(context)
        else:
            uri = self._op_uri(context.upstream_output)
        return json.loads(self.imagery.catalog_store().read_bytes(uri))


class TileModelResource(dg.ConfigurableResource):
    """The per-tile model, chosen per run: a name from the `tile_assets.models` entry points and its params."""

    name: str = DEFAULT_MODEL
    params_json: str = "{}"
    predict_timeout_s: float = Field(
        300.0,
        description=f"a predict call (up to {PREDICT_CHUNK} tiles) running longer fails its tiles transiently, "
        "so the step is retried (on the last attempt they are tried one by one); 0: no limit. "
        "A hung call's thread lingers until its process ends",
    )

    def timeout(self) -> float | None:
        """The predict timeout in seconds, None when there is none."""
        return self.predict_timeout_s if self.predict_timeout_s > 0 else None

    def load(self) -> TileModel:
        return load_model(self.name, json.loads(self.params_json))


class GateResource(dg.ConfigurableResource):
    """The content gate every image passes before any tile is planned, and its policy.

    The format and size validation always runs. The other checks run when
    configured, cheapest first: `area_policy` (a GeoJSON of allowed/denied
    areas), `blocklist` (checksums and perceptual hashes) and `moderation`
    (Amazon Rekognition, off by default: the default gate needs no cloud).
    Policy files are paths or s3:// URIs.
    """

    area_policy_path: str = Field("", description="GeoJSON of allowed/denied areas; empty: no area check")
    area_mode: Literal["deny", "allow"] = Field(
        "deny", description="rule of the areas whose feature has no `policy` property"
    )
    non_georeferenced: Literal["accept", "reject"] = Field(
        "accept", description="what the area check does with images that have no location"
    )
    blocklist_path: str = Field("", description="text file of sha256:/etag:/phash: entries; empty: none")
    blocklist_max_distance: int = Field(
        DEFAULT_MAX_DISTANCE, description="pHash bits a copy may differ by and still match"
    )
    moderation: bool = Field(False, description="run Amazon Rekognition DetectModerationLabels")
    moderation_min_confidence: float = Field(80.0, description="labels below this confidence (%) are ignored")
    moderation_reject_labels: list[str] = Field(
        default_factory=list, description="labels (or their parents) that reject; empty: any label"
    )
    moderation_region: str = Field("", description="Rekognition region; empty: AWS_REGION / the AWS chain")
    moderation_s3_reference: bool = Field(
        True, description="send JPEG/PNG objects on AWS S3 by reference instead of as bytes"
    )

    def _read(self, imagery: ImageryStore, path: str) -> bytes:
        try:
            return imagery.store_for(path).read_bytes(path)
        except StoreError as exc:
            raise PolicyError(path, f"cannot read the gate policy file: {exc.reason}") from exc

    def _policy_files(self, imagery: ImageryStore) -> dict[str, bytes]:
        paths = (self.area_policy_path, self.blocklist_path)
        return {path: self._read(imagery, path) for path in paths if path}

    def _fingerprint(self, files: dict[str, bytes]) -> str:
        return policy_fingerprint({name: getattr(self, name) for name in type(self).model_fields}, files)

    def fingerprint(self, imagery: ImageryStore) -> str:
        """Changes whenever the configuration or a policy file does: rejections are final until then."""
        return self._fingerprint(self._policy_files(imagery))

    def load(self, imagery: ImageryStore) -> Gate:
        """The configured checks, cheapest first, with the fingerprint of the policy they enforce."""
        files = self._policy_files(imagery)
        checks: list[GateCheck] = []
        if self.area_policy_path:
            areas = load_areas(files[self.area_policy_path], self.area_policy_path, self.area_mode)
            checks.append(AreaPolicyCheck(areas, self.non_georeferenced))
        if self.blocklist_path:
            text = files[self.blocklist_path].decode("utf-8", errors="replace")
            checks.append(
                BlocklistCheck(parse_blocklist(text, self.blocklist_path), self.blocklist_max_distance)
            )
        if self.moderation:
            settings = imagery.s3_settings()
            checks.append(
                ModerationCheck(
                    self.rekognition_client(self.moderation_region or settings.region),
                    self.moderation_min_confidence,
                    tuple(self.moderation_reject_labels),
                    # A custom S3 endpoint (MinIO, SeaweedFS) is not one Rekognition can read.
                    self.moderation_s3_reference and not settings.endpoint_url,
                )
            )
        return Gate(tuple(checks), self._fingerprint(files))

    def rekognition_client(self, region: str | None) -> Any:
        """A Rekognition client from boto3's standard credential chain, retrying throttles with backoff."""
        retries = BotoConfig(retries={"mode": "standard", "max_attempts": 5})
        return boto3.client("rekognition", region_name=region or None, config=retries)
