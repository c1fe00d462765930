"""A `Store` over S3 or any S3-compatible server, with GDAL configured to read in place.

Built from a boto3 client (so the Dagster layer can hand in dagster-aws's
client) plus the few settings GDAL needs to reach the same endpoint: rasterio
opens objects as `/vsis3/bucket/key` and fetches only the byte ranges a
windowed read touches, so pixels are never downloaded whole.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, BinaryIO
from urllib.parse import urlparse

import boto3
import rasterio
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    HTTPClientError,
    IncompleteReadError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError
from rasterio.session import AWSSession

from tile_assets.core.errors import StoreError, TransientStoreError
from tile_assets.core.store import S3Settings
from tile_assets.core.types import ObjectInfo

log = logging.getLogger(__name__)

_NOT_FOUND_CODES = frozenset({"404", "NoSuchKey", "NotFound"})
_TRANSIENT_CODES = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "RequestTimeout",
        "ServiceUnavailable",
        "InternalError",
        "500",
        "502",
        "503",
        "504",
    }
)
_TRANSIENT_STATUS = frozenset({500, 502, 503, 504})
_TRANSIENT_BOTOCORE = (BotoConnectionError, HTTPClientError, IncompleteReadError)


def split_s3_uri(uri: str) -> tuple[str, str]:
    """(bucket, key) of `s3://bucket/key`; the key keeps spaces, commas and unicode as is."""
    if not uri.startswith("s3://"):
        raise StoreError(uri, "not an s3:// URI")
    bucket, _, key = uri[len("s3://") :].partition("/")
    if not bucket:
        raise StoreError(uri, "s3 URI has no bucket")
    return bucket, key


def s3_uri(bucket: str, key: str) -> str:
    return f"s3://{bucket}/{key}"


def store_error(uri: str, exc: Exception) -> StoreError:
    """The typed error for a botocore failure: transient ones are `TransientStoreError`.

    Messages carry the S3 error code and HTTP status, never credentials.
    """
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        if code in _NOT_FOUND_CODES or (status == 404 and code != "NoSuchBucket"):
            return StoreError(uri, "no such object")
        if code == "NoSuchBucket":
            return StoreError(uri, "no such bucket")
        if code in _TRANSIENT_CODES or status in _TRANSIENT_STATUS:
            return TransientStoreError(uri, f"S3 {code or 'error'} (HTTP {status})")
        return StoreError(uri, f"S3 {code or 'error'} (HTTP {status})")
    if isinstance(exc, _TRANSIENT_BOTOCORE):
        return TransientStoreError(uri, f"{type(exc).__name__}: {exc}")
    return StoreError(uri, f"{type(exc).__name__}: {exc}")


def _is_aws_host(host: str) -> bool:
    return host.endswith((".amazonaws.com", ".amazonaws.com.cn"))


@dataclass(frozen=True)
class S3Store:
    """A `Store` for `s3://bucket/key` URIs through one boto3 client.

    `settings` only has to say what the client cannot tell GDAL: credentials
    when they are not in boto3's default chain. The endpoint and region are
    taken from the client when the settings leave them unset, so an endpoint
    from `AWS_ENDPOINT_URL` reaches GDAL as well.
    """

    client: Any = field(repr=False)
    settings: S3Settings = field(default_factory=S3Settings)

    @classmethod
    def from_settings(cls, settings: S3Settings, config: Config | None = None) -> S3Store:
        """A store with its own boto3 client built from `settings` (standard retry mode)."""
        client = boto3.client(
            "s3",
            endpoint_url=settings.resolved_endpoint(),
            region_name=settings.region,
            use_ssl=settings.use_ssl,
            aws_access_key_id=settings.access_key_id,
            aws_secret_access_key=settings.secret_access_key,
            aws_session_token=settings.session_token,
            config=config or Config(retries={"mode": "standard", "max_attempts": 5}),
        )
        return cls(client=client, settings=settings)

    def list(self, prefix: str, start_after: str = "") -> Iterator[ObjectInfo]:
        """Objects under the folder `prefix` in the server's key order, after `start_after`.

        `s3://b/inbox` lists `inbox/...` (never `inbox2/...`), like a local
        folder. Folder markers (keys ending in `/`) are skipped. Pages of up to
        1,000 keys are fetched lazily, so a caller can stop early.

        AWS lists in UTF-8 byte order. SeaweedFS walks folders: it lists
        `a/b` where `a` sorts, before a sibling `a-c`. Either way the server
        applies `start_after` in its own order, so resume through
        `start_after`, never by comparing URIs client-side.
        """
        bucket, key_prefix = split_s3_uri(prefix)
        if key_prefix and not key_prefix.endswith("/"):
            key_prefix += "/"
        params: dict[str, Any] = {"Bucket": bucket, "Prefix": key_prefix}
        if start_after:
            after_bucket, after_key = split_s3_uri(start_after)
            if after_bucket != bucket:
                raise StoreError(start_after, f"start_after is not in bucket {bucket}")
            params["StartAfter"] = after_key
        pages = self.client.get_paginator("list_objects_v2").paginate(**params)
        try:
            for page in pages:
                for obj in page.get("Contents", []):
                    key = obj["Key"]
                    if key.endswith("/"):
                        continue
                    yield ObjectInfo(
                        uri=s3_uri(bucket, key),
                        size=int(obj["Size"]),
                        etag=_etag(obj.get("ETag", "")),
                        last_modified=_epoch(obj.get("LastModified")),
                    )
        except (ClientError, BotoCoreError) as exc:
            raise store_error(prefix, exc) from exc

    def head(self, uri: str) -> ObjectInfo:
        bucket, key = split_s3_uri(uri)
        try:
            resp = self.client.head_object(Bucket=bucket, Key=key)
        except (ClientError, BotoCoreError) as exc:
            raise store_error(uri, exc) from exc
        return ObjectInfo(
            uri=uri,
            size=int(resp["ContentLength"]),
            etag=_etag(resp.get("ETag", "")),
            last_modified=_epoch(resp.get("LastModified")),
        )

    def exists(self, uri: str) -> bool:
        try:
            self.head(uri)
        except StoreError as exc:
            if exc.reason == "no such object":
                return False
            raise
        return True

    def read_bytes(self, uri: str) -> bytes:
        bucket, key = split_s3_uri(uri)
        try:
            resp = self.client.get_object(Bucket=bucket, Key=key)
            data: bytes = resp["Body"].read()
        except (ClientError, BotoCoreError) as exc:
            raise store_error(uri, exc) from exc
        return data

    def open_read(self, uri: str) -> BinaryIO:
        """The object downloaded to a local temporary file (deleted when closed), not into memory."""
        bucket, key = split_s3_uri(uri)
        local = tempfile.TemporaryFile(prefix="tile-assets-")
        try:
            self.client.download_fileobj(bucket, key, local)
        except (ClientError, BotoCoreError) as exc:
            local.close()
            raise store_error(uri, exc) from exc
        local.seek(0)
        return local

    def write_bytes(self, uri: str, data: bytes, content_type: str = "") -> None:
        """One PutObject: S3 makes it visible whole or not at all, so no temp key is needed."""
        bucket, key = split_s3_uri(uri)
        extra = {"ContentType": content_type} if content_type else {}
        try:
            self.client.put_object(Bucket=bucket, Key=key, Body=data, **extra)
        except (ClientError, BotoCoreError) as exc:
            raise store_error(uri, exc) from exc
        log.debug("wrote %d bytes to %s", len(data), uri)

    def delete(self, uri: str) -> None:
        """Remove the object; deleting a missing key is not an error (as on S3 itself)."""
        bucket, key = split_s3_uri(uri)
        try:
            self.client.delete_object(Bucket=bucket, Key=key)
        except (ClientError, BotoCoreError) as exc:
            raise store_error(uri, exc) from exc

    def raster_path(self, uri: str) -> str:
        bucket, key = split_s3_uri(uri)
        return f"/vsis3/{bucket}/{key}"

    def raster_env(self) -> AbstractContextManager[Any]:
        """A rasterio.Env that lets GDAL read `/vsis3/` paths from this store's endpoint.

        Credentials come from the settings, else from boto3's default chain
        (resolved afresh on each call, so rotated credentials are picked up).
        A custom endpoint gets path-style addressing and its own scheme.
        """
        env: AbstractContextManager[Any] = rasterio.Env(
            session=self._aws_session(), **self.gdal_options()
        )
        return env

    def gdal_options(self) -> dict[str, str]:
        """GDAL config options (no secrets) for reaching this store's endpoint.

        GDAL keeps what it fetched from `/vsis3/` (size, header, byte ranges)
        for the life of the process, across opens: a long-lived process (CLI,
        run worker, Celery worker) reading an object again after it was
        overwritten got the old pixels under the new ETag. `NON_CACHED` drops
        that cache when a dataset closes; reads within one open stay cached.
        """
        options = {"GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR", "CPL_VSIL_CURL_NON_CACHED": "/vsis3/"}
        endpoint = urlparse(self._endpoint_url())
        if endpoint.hostname and not _is_aws_host(endpoint.hostname):
            options["AWS_VIRTUAL_HOSTING"] = "FALSE"
            options["AWS_HTTPS"] = "YES" if endpoint.scheme == "https" else "NO"
        return options

    def fingerprint(self, uri: str) -> str:
        return f"etag:{self.head(uri).etag}"

    def _endpoint_url(self) -> str:
        return self.settings.resolved_endpoint() or str(self.client.meta.endpoint_url)

    def _region(self) -> str:
        return self.settings.region or self.client.meta.region_name or "us-east-1"

    def _aws_session(self) -> AWSSession:
        endpoint = urlparse(self._endpoint_url())
        custom = endpoint.hostname is not None and not _is_aws_host(endpoint.hostname)
        return AWSSession(
            aws_access_key_id=self.settings.access_key_id,
            aws_secret_access_key=self.settings.secret_access_key,
            aws_session_token=self.settings.session_token,
            region_name=self._region(),
            endpoint_url=endpoint.netloc if custom else None,
        )


def _etag(raw: str) -> str:
    return raw.strip('"')


def _epoch(value: datetime | None) -> float:
    return value.timestamp() if value is not None else 0.0
