"""One storage interface over a local folder or an S3 prefix, chosen by URI scheme.

Everything the pipeline reads or writes goes through a `Store`: listing an
inbox, heading an object for its version, reading and atomically writing
catalog files, and telling rasterio how to open an object in place.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Protocol
from urllib.parse import urlparse

from tile_assets.core.errors import SourceChangedError, StoreError
from tile_assets.core.types import ObjectInfo

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".tif", ".tiff", ".jpg", ".jpeg", ".png", ".jp2", ".vrt"})


def is_image_name(name: str) -> bool:
    """Whether a key or path names an image the pipeline should look at (by suffix)."""
    return Path(name.rstrip("/")).suffix.lower() in IMAGE_SUFFIXES


def is_s3_uri(uri: str) -> bool:
    return uri.startswith("s3://")


def join_uri(base: str, *parts: str) -> str:
    """Join path parts onto a local path or URI with `/`."""
    out = base.rstrip("/")
    for part in parts:
        out = f"{out}/{part.strip('/')}"
    return out


def local_path(uri: str) -> Path:
    """The filesystem path of a plain path or `file://` URI."""
    if uri.startswith("file://"):
        return Path(urlparse(uri).path)
    return Path(uri)


class Store(Protocol):
    """List, head, read and atomically write objects under URIs of one kind."""

    def list(self, prefix: str, start_after: str = "") -> Iterator[ObjectInfo]:
        """Objects under `prefix` in lexicographic URI order, after `start_after`."""
        ...

    def head(self, uri: str) -> ObjectInfo: ...

    def exists(self, uri: str) -> bool: ...

    def read_bytes(self, uri: str) -> bytes: ...

    def open_read(self, uri: str) -> BinaryIO:
        """`uri` as a seekable binary file (the caller closes it), for readers that decode a big
        object a part at a time (Parquet row groups): they hold only the parts they read."""
        ...

    def write_bytes(self, uri: str, data: bytes, content_type: str = "") -> None:
        """Write all of `data` or nothing: readers never see a partial object."""
        ...

    def delete(self, uri: str) -> None: ...

    def raster_path(self, uri: str) -> str:
        """The path rasterio/GDAL opens for `uri` (a local path, or `/vsis3/...`)."""
        ...

    def raster_env(self) -> AbstractContextManager[Any]:
        """A context in which `raster_path` results open (GDAL/AWS config)."""
        ...

    def fingerprint(self, uri: str) -> str:
        """A content version: sha256 for local files, the ETag on S3."""
        ...


@dataclass(frozen=True)
class LocalStore:
    """A `Store` over the local filesystem; writes go to a temp file then rename."""

    def list(self, prefix: str, start_after: str = "") -> Iterator[ObjectInfo]:
        root = local_path(prefix)
        if not root.exists():
            raise StoreError(prefix, "folder does not exist")
        after = str(local_path(start_after)) if start_after else ""
        paths = sorted(str(p) for p in root.rglob("*") if p.is_file())
        for path in paths:
            if after and path <= after:
                continue
            stat = os.stat(path)
            yield ObjectInfo(
                uri=path, size=stat.st_size, etag=_stat_etag(stat), last_modified=stat.st_mtime
            )

    def head(self, uri: str) -> ObjectInfo:
        path = local_path(uri)
        try:
            stat = path.stat()
        except FileNotFoundError as exc:
            raise StoreError(uri, "no such file") from exc
        return ObjectInfo(
            uri=str(path), size=stat.st_size, etag=_stat_etag(stat), last_modified=stat.st_mtime
        )

    def exists(self, uri: str) -> bool:
        return local_path(uri).exists()

    def read_bytes(self, uri: str) -> bytes:
        try:
            return local_path(uri).read_bytes()
        except FileNotFoundError as exc:
            raise StoreError(uri, "no such file") from exc

    def open_read(self, uri: str) -> BinaryIO:
        try:
            return local_path(uri).open("rb")
        except FileNotFoundError as exc:
            raise StoreError(uri, "no such file") from exc

    def write_bytes(self, uri: str, data: bytes, content_type: str = "") -> None:
        path = local_path(uri)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            try:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(data)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide published files from readers
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError as exc:
            raise StoreError(uri, f"write failed: {exc.strerror or exc}") from exc

    def delete(self, uri: str) -> None:
        local_path(uri).unlink(missing_ok=True)

    def raster_path(self, uri: str) -> str:
        return str(local_path(uri))

    def raster_env(self) -> AbstractContextManager[Any]:
        return nullcontext()

    def fingerprint(self, uri: str) -> str:
        digest = hashlib.sha256()
        try:
            with local_path(uri).open("rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(chunk)
        except FileNotFoundError as exc:
            raise StoreError(uri, "no such file") from exc
        return f"sha256:{digest.hexdigest()}"


@dataclass
class VersionGuard:
    """Tells whether an object is still the version a run started on, before its pixels are trusted.

    Reads of one scene are spread over steps and minutes; an object
    overwritten in between would mix two versions in one output. `check` is
    one `head` (a stat locally, a HEAD on S3) compared with the listing
    version recorded when the scene was described; only when that differs is
    the content fingerprint recomputed, so a local file touched but not
    changed still passes (and its new listing version is accepted).
    """

    store: Store
    uri: str
    version: str
    """Listing version the run started on; empty: not recorded, never checked."""
    fingerprint: str

    def check(self) -> None:
        """Raise `SourceChangedError` naming the object if it changed (or `StoreError` if it is gone)."""
        if not self.version:
            return
        current = self.store.head(self.uri).etag
        if current == self.version:
            return
        if self.store.fingerprint(self.uri) != self.fingerprint:
            raise SourceChangedError(
                self.uri,
                f"the object changed while it was being processed (version {self.version} when the run "
                f"started, {current} now); stopped so that no output mixes two versions",
            )
        self.version = current


def _stat_etag(stat: os.stat_result) -> str:
    """A cheap local version tag for listings: size and nanosecond mtime."""
    return f"{stat.st_size:x}-{stat.st_mtime_ns:x}"


@dataclass(frozen=True)
class S3Settings:
    """How to reach S3 or an S3-compatible server; secrets never appear in repr or logs.

    Unset fields fall back to boto3's own resolution (``AWS_ENDPOINT_URL``,
    ``AWS_REGION``, the credential chain), so the same code runs on AWS and on
    a local server. ``use_ssl`` picks the scheme of an endpoint given without one.
    """

    endpoint_url: str | None = None
    region: str | None = None
    use_ssl: bool = True
    access_key_id: str | None = field(default=None, repr=False)
    secret_access_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)

    def resolved_endpoint(self) -> str | None:
        """The endpoint URL with a scheme, or None to let boto3 decide."""
        if not self.endpoint_url:
            return None
        if "://" in self.endpoint_url:
            return self.endpoint_url
        return f"{'https' if self.use_ssl else 'http'}://{self.endpoint_url}"


def open_store(uri: str, s3: S3Settings | None = None) -> Store:
    """The store for a URI's scheme: `s3://` gives an S3Store, a path or `file://` a LocalStore."""
    if is_s3_uri(uri):
        # Imported here so that local-only use never imports boto3.
        from tile_assets.core.s3store import S3Store

        return S3Store.from_settings(s3 or S3Settings())
    if "://" in uri and not uri.startswith("file://"):
        raise StoreError(uri, "unsupported URI scheme (use a path, file:// or s3://)")
    return LocalStore()
