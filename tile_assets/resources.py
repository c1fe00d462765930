"""Resources: where images come from, where the catalog goes, and how S3 is reached.

The store behind each URI (local folder or S3) is chosen here, once, from the
URI scheme; S3 endpoint, region and credentials come from dagster-aws's
`S3Resource`, configured from environment variables by `definitions.py`.
"""


import json
from typing import Any

import dagster as dg
from dagster_aws.s3 import S3Resource

from tile_assets.core.models.base import TileModel
from tile_assets.core.models.registry import load_model
from tile_assets.core.store import S3Settings, Store, join_uri, open_store


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

    name: str = "classical"
    params_json: str = "{}"

    def load(self) -> TileModel:
        return load_model(self.name, json.loads(self.params_json))
