"""S3Store against a real SeaweedFS server: listing, objects, GDAL reads, byte counts, faults."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import rasterio
from botocore.config import Config
from botocore.exceptions import ClientError, EndpointConnectionError, ReadTimeoutError
from rasterio.windows import Window

from tile_assets.core.errors import StoreError, TransientStoreError
from tile_assets.core.s3store import S3Store, split_s3_uri, store_error
from tile_assets.core.store import LocalStore, S3Settings, open_store
from tile_assets_tests.fixtures.s3 import SeaweedServer

NAIP = Path(__file__).resolve().parents[2] / "data" / "inbox" / "naip_2018.tif"
ODD_KEYS = (
    "odd/a b.tif",
    "odd/ünïcødé.tif",
    "odd/x,y,z.tif",
    "odd/deep/nested/scene 1,ü.tif",
    "odd/deep-er.tif",
)


def make_store(server: SeaweedServer, endpoint_url: str | None = None) -> S3Store:
    settings = S3Settings(
        endpoint_url=endpoint_url or server.endpoint_url,
        region=server.region,
        access_key_id=server.access_key,
        secret_access_key=server.secret_key,
    )
    return S3Store(client=server.client(), settings=settings)


@pytest.fixture
def store(s3_server: SeaweedServer) -> S3Store:
    return make_store(s3_server)


def put_many(server: SeaweedServer, bucket: str, keys: list[str], body: bytes = b"x") -> None:
    client = server.client()
    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(lambda k: client.put_object(Bucket=bucket, Key=k, Body=body), keys))


def test_list_2500_objects_in_order_across_pages(
    s3_server: SeaweedServer, s3_bucket: str, store: S3Store
) -> None:
    keys = [f"inbox/{i:05d}.tif" for i in range(2500)]
    put_many(s3_server, s3_bucket, keys + ["inbox2/not-under-prefix.tif"])
    s3_server.client().put_object(Bucket=s3_bucket, Key="inbox/folder/", Body=b"")

    listed = list(store.list(f"s3://{s3_bucket}/inbox"))

    uris = [o.uri for o in listed]
    assert uris == [f"s3://{s3_bucket}/{k}" for k in sorted(keys)]
    assert all(o.size == 1 and len(o.etag) == 32 and '"' not in o.etag for o in listed)
    assert all(o.last_modified > 1e9 for o in listed)

    resumed = [o.uri for o in store.list(f"s3://{s3_bucket}/inbox/", start_after=uris[1234])]
    assert resumed == uris[1235:]
    assert list(store.list(f"s3://{s3_bucket}/inbox", start_after=uris[-1])) == []


def test_odd_keys_round_trip(s3_bucket: str, store: S3Store) -> None:
    for i, key in enumerate(ODD_KEYS):
        store.write_bytes(f"s3://{s3_bucket}/{key}", f"body {i}".encode())

    listed = [o.uri for o in store.list(f"s3://{s3_bucket}/odd")]

    # Each once; the order is the server's (SeaweedFS lists `deep/...` where
    # `deep` sorts, before `deep-er`; AWS uses byte order), and start_after
    # resumes in that same order from every position.
    assert sorted(listed) == sorted(f"s3://{s3_bucket}/{k}" for k in ODD_KEYS)
    assert len(set(listed)) == len(ODD_KEYS)
    for i, uri in enumerate(listed):
        assert [o.uri for o in store.list(f"s3://{s3_bucket}/odd", start_after=uri)] == listed[i + 1 :]
    for i, key in enumerate(ODD_KEYS):
        uri = f"s3://{s3_bucket}/{key}"
        assert split_s3_uri(uri) == (s3_bucket, key)
        assert store.read_bytes(uri) == f"body {i}".encode()
        assert store.head(uri).size == len(f"body {i}")
        assert store.raster_path(uri) == f"/vsis3/{s3_bucket}/{key}"


def test_write_read_head_exists_delete(s3_bucket: str, store: S3Store) -> None:
    uri = f"s3://{s3_bucket}/catalog/items/a.json"
    assert not store.exists(uri)

    store.write_bytes(uri, b'{"a": 1}', content_type="application/json")
    first = store.head(uri)
    assert store.exists(uri)
    assert store.read_bytes(uri) == b'{"a": 1}'
    with store.open_read(uri) as downloaded:  # a local temporary file, seekable
        downloaded.seek(6)
        assert downloaded.read() == b"1}"
    assert first.size == 8 and first.uri == uri
    assert store.fingerprint(uri) == f"etag:{first.etag}"
    assert store.client.head_object(Bucket=s3_bucket, Key="catalog/items/a.json")[
        "ContentType"
    ] == "application/json"

    store.write_bytes(uri, b'{"a": 2}')
    assert store.head(uri).etag != first.etag
    assert store.fingerprint(uri) != f"etag:{first.etag}"

    store.delete(uri)
    assert not store.exists(uri)
    store.delete(uri)  # deleting a missing object is not an error


def test_missing_object_and_bucket_are_store_errors(s3_bucket: str, store: S3Store) -> None:
    missing = f"s3://{s3_bucket}/nope.tif"
    for call in (store.head, store.read_bytes, store.open_read, store.fingerprint):
        with pytest.raises(StoreError) as info:
            call(missing)
        assert not isinstance(info.value, TransientStoreError)
        assert info.value.reason == "no such object"
        assert info.value.obj == missing
    with pytest.raises(StoreError, match="no such bucket"):
        list(store.list("s3://no-such-bucket-tile-assets/x"))


def test_raster_env_reads_a_window_of_an_odd_key(s3_bucket: str, store: S3Store) -> None:
    uri = f"s3://{s3_bucket}/scenes/naip 2018, ünïcødé.tif"
    store.write_bytes(uri, NAIP.read_bytes())
    window = Window(256, 128, 300, 200)
    with rasterio.open(NAIP) as local:
        expected = local.read(window=window)
        profile = (local.width, local.height, local.count, local.crs)

    with store.raster_env(), rasterio.open(store.raster_path(uri)) as remote:
        assert (remote.width, remote.height, remote.count, remote.crs) == profile
        got = remote.read(window=window)

    np.testing.assert_array_equal(got, expected)


def test_endpoint_from_environment_reaches_boto3_and_gdal(s3_env: SeaweedServer) -> None:
    bucket = s3_env.make_bucket("env")
    store = open_store(f"s3://{bucket}/x")
    assert isinstance(store, S3Store)
    uri = f"s3://{bucket}/naip.tif"
    store.write_bytes(uri, NAIP.read_bytes())
    assert store.gdal_options()["AWS_HTTPS"] == "NO"
    with store.raster_env(), rasterio.open(store.raster_path(uri)) as ds:
        assert ds.read(1, window=Window(0, 0, 64, 64)).shape == (64, 64)


def test_open_store_by_scheme(tmp_path: Path) -> None:
    assert isinstance(open_store(str(tmp_path)), LocalStore)
    assert isinstance(open_store(f"file://{tmp_path}"), LocalStore)
    with pytest.raises(StoreError, match="unsupported URI scheme"):
        open_store("gs://bucket/x")


def test_secrets_stay_out_of_repr() -> None:
    settings = S3Settings(
        endpoint_url="http://127.0.0.1:1",
        access_key_id="AKIDSECRETID",
        secret_access_key="very-secret-key",
        session_token="very-secret-token",
    )
    store = S3Store.from_settings(settings)
    for text in (repr(settings), repr(store)):
        assert "very-secret" not in text and "AKIDSECRETID" not in text
    assert "very-secret" not in str(store.gdal_options())


@pytest.mark.parametrize(
    ("code", "status", "transient", "reason"),
    [
        ("NoSuchKey", 404, False, "no such object"),
        ("404", 404, False, "no such object"),
        ("AccessDenied", 403, False, "S3 AccessDenied (HTTP 403)"),
        ("SlowDown", 503, True, "S3 SlowDown (HTTP 503)"),
        ("RequestTimeout", 400, True, "S3 RequestTimeout (HTTP 400)"),
        ("Throttling", 400, True, "S3 Throttling (HTTP 400)"),
        ("ServiceUnavailable", 503, True, "S3 ServiceUnavailable (HTTP 503)"),
    ],
)
def test_client_errors_map_to_typed_errors(
    code: str, status: int, transient: bool, reason: str
) -> None:
    exc = ClientError(
        {"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}},
        "GetObject",
    )
    err = store_error("s3://b/k", exc)
    assert isinstance(err, StoreError)
    assert isinstance(err, TransientStoreError) is transient
    assert err.reason == reason


def test_connection_errors_are_transient() -> None:
    for exc in (
        EndpointConnectionError(endpoint_url="http://127.0.0.1:1"),
        ReadTimeoutError(endpoint_url="http://127.0.0.1:1"),
    ):
        assert isinstance(store_error("s3://b/k", exc), TransientStoreError)


class CountingProxy:
    """A TCP relay 127.0.0.1:port → target that counts the bytes the server sends back."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.server_to_client = 0
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            threading.Thread(target=self._pipe, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, True), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, count: bool) -> None:
        try:
            while chunk := src.recv(65536):
                if count:
                    with self._lock:
                        self.server_to_client += len(chunk)
                dst.sendall(chunk)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self._listener.close()


@pytest.fixture
def counting_proxy(s3_server: SeaweedServer) -> Iterator[CountingProxy]:
    proxy = CountingProxy(s3_server.s3_port)
    yield proxy
    proxy.close()


def test_windowed_read_fetches_ranges_not_the_object(
    s3_server: SeaweedServer,
    s3_bucket: str,
    store: S3Store,
    counting_proxy: CountingProxy,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    size_px, block = 4096, 512
    path = tmp_path / "big.tif"
    rng = np.random.default_rng(7)
    profile = {
        "driver": "GTiff",
        "width": size_px,
        "height": size_px,
        "count": 3,
        "dtype": "uint8",
        "tiled": True,
        "blockxsize": block,
        "blockysize": block,
        "compress": "deflate",
        "crs": "EPSG:32614",
        "transform": rasterio.transform.from_origin(500000, 5200000, 1.0, 1.0),
    }
    with rasterio.open(path, "w", **profile) as dst:
        for row in range(0, size_px, block):
            strip = rng.integers(0, 256, size=(3, block, size_px), dtype=np.uint8)
            dst.write(strip, window=Window(0, row, size_px, block))
    object_size = path.stat().st_size
    uri = f"s3://{s3_bucket}/big/noise.tif"
    patient = Config(read_timeout=60, retries={"mode": "standard", "max_attempts": 5})
    s3_server.client(patient).upload_file(str(path), s3_bucket, "big/noise.tif")
    assert store.head(uri).size == object_size

    window = Window(3 * block, 5 * block, block, block)
    with rasterio.open(path) as local:
        expected = local.read(window=window)
    through_proxy = make_store(s3_server, endpoint_url=f"http://127.0.0.1:{counting_proxy.port}")
    with through_proxy.raster_env(), rasterio.open(through_proxy.raster_path(uri)) as remote:
        got = remote.read(window=window)

    np.testing.assert_array_equal(got, expected)
    fetched = counting_proxy.server_to_client
    fraction = fetched / object_size
    with capsys.disabled():
        print(
            f"\n[s3 window read] object {object_size / 1e6:.1f} MB, "
            f"one {block}x{block}x3 window fetched {fetched / 1e6:.2f} MB = {fraction:.2%}"
        )
    assert fetched > block * block * 3 * 0.9  # it really read the block through the proxy
    assert fraction < 0.10


@pytest.mark.slow
def test_stopped_server_raises_transient_then_recovers(
    s3_server: SeaweedServer, s3_bucket: str, store: S3Store
) -> None:
    uri = f"s3://{s3_bucket}/fault/a.tif"
    store.write_bytes(uri, b"before")
    s3_server.stop()
    try:
        with pytest.raises(TransientStoreError):
            store.head(uri)
        with pytest.raises(TransientStoreError):
            list(store.list(f"s3://{s3_bucket}/fault"))
        with pytest.raises(TransientStoreError):
            store.read_bytes(uri)
    finally:
        s3_server.start()
    assert store.read_bytes(uri) == b"before"
    assert [o.uri for o in store.list(f"s3://{s3_bucket}/fault")] == [uri]
