"""Faults in the middle of a run: storage gone, a source overwritten, a full disk, a hung model.

Each fault is injected into a real run (real SeaweedFS, real files, a real
Dagster instance) at the moment it hurts most, through `ProbeModel`: a tile
model whose one finding per tile carries the mean of the pixels it was given,
so an output shows which version of a source it was read from, and which can
run a test's hook on its first predict (stop the S3 server, overwrite the
source) or hang on chosen tiles.

Covered elsewhere, not repeated here: the S3 server dying in the middle of a
sensor tick (tile_assets_tests/s3/test_s3_sensor.py), a step process killed
with SIGKILL and its run re-executed (tile_assets_tests/fanout/test_reexecution.py),
a model raising on some tiles, permanently or transiently
(tile_assets_tests/fanout/test_retries.py), and `LocalStore` writes failing
into a read-only folder or halfway (tile_assets_tests/core/test_store.py).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import resource
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import dagster as dg
import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import pyarrow.parquet as pq
import rasterio
from PIL import Image
from rasterio.io import MemoryFile
from rasterio.windows import Window

from tile_assets import cli
from tile_assets.core.cache import CHUNK_METADATA, TILE_KEY
from tile_assets.core.errors import SourceChangedError, StoreError, TransientStoreError
from tile_assets.core.image import TileImage
from tile_assets.core.keys import scene_key
from tile_assets.core.models.base import TilePrediction
from tile_assets.core.raster import open_raster
from tile_assets.core.registry import register_scene
from tile_assets.core.s3store import S3Store
from tile_assets.core.store import LocalStore, S3Settings, Store, VersionGuard
from tile_assets.core.types import Finding
from tile_assets.definitions import build_definitions
from tile_assets.jobs import process_scene
from tile_assets.partitions import scenes
from tile_assets.settings import Settings
from tile_assets_tests.fixtures.s3 import SeaweedServer
from tile_assets_tests.reliability.corpus import NAIP, SAMPLES

PROBE = "tile_assets_tests.reliability.test_faults:ProbeModel"
FIRST_PREDICT_HOOKS: dict[str, Callable[[], None]] = {}
"""What a test wants done the first time a `ProbeModel` predicts (in this process), by name."""
S3_FIELDS = ("endpoint_url", "region_name", "aws_access_key_id", "aws_secret_access_key")


@dataclass(frozen=True)
class ProbeModel:
    """One 1-px finding at each tile's centre (none ever merge) whose `mean` is the mean of the tile's pixels.

    `hook` names an entry of `FIRST_PREDICT_HOOKS`, run (and removed) on the
    first predict; tiles in `hang_tiles` sleep `hang_s` seconds, far beyond
    any predict timeout a test sets.
    """

    name: ClassVar[str] = "probe"
    version: ClassVar[str] = "1"

    hook: str = ""
    hang_tiles: Sequence[str] = ()
    hang_s: float = 30.0

    def params(self) -> dict[str, Any]:
        return {}

    def predict(self, tiles: Sequence[TileImage]) -> list[TilePrediction]:
        hook = FIRST_PREDICT_HOOKS.pop(self.hook, None)
        if hook is not None:
            hook()
        predictions = []
        for tile in tiles:
            if tile.window.tile_id in self.hang_tiles:
                time.sleep(self.hang_s)
            x, y = tile.window.width // 2, tile.window.height // 2
            mean = float(tile.data.mean())
            finding = Finding("probe", 1.0, (x, y, x + 1.0, y + 1.0), area_px=1.0, attributes={"mean": mean})
            predictions.append(TilePrediction(findings=(finding,)))
        return predictions


def run_config(
    model: dict[str, Any], *, tile_size: int = 256, target_steps: int = 4, timeout_s: float = 300.0
) -> dict[str, Any]:
    """`process_scene` in process: a grid without overlap (no probe finding merges), the probe model."""
    return {
        "execution": {"config": {"in_process": {}}},
        "ops": {
            "tiles": {"config": {"tile_size": tile_size, "overlap": 0}},
            "tile_findings": {"ops": {"plan_batches": {"config": {"target_steps": target_steps}}}},
        },
        "resources": {
            "tile_model": {"config": {"name": PROBE, "params_json": json.dumps(model), "predict_timeout_s": timeout_s}}
        },
    }


def inverted(image: Path) -> bytes:
    """The same GeoTIFF (profile, size, georeferencing) with every pixel inverted: a new version of it."""
    with rasterio.open(image) as src:
        profile, data = src.profile, src.read()
    with MemoryFile() as memory:
        # MINISBLACK as in the source: GDAL would make 4 x uint8 RGB + alpha by default.
        with memory.open(**profile, photometric="MINISBLACK") as dst:
            dst.write(255 - data)
        return memory.read()


def window_means(image: bytes, manifest: pd.DataFrame) -> dict[str, float]:
    """The mean of every band's pixels in each tile window of `manifest`, read straight from `image`."""
    with MemoryFile(image) as memory, memory.open() as src:
        return {
            row.tile_id: float(src.read(window=Window(row.col_off, row.row_off, row.width, row.height)).mean())
            for row in manifest.itertuples()
        }


def probe_means(findings: pd.DataFrame) -> dict[str, float]:
    """tile id -> the mean the probe saw, from findings (GeoParquet rows or cached results)."""
    return {row.tile_id: json.loads(row.attributes)["mean"] for row in findings.itertuples()}


def step_retries(events: Sequence[dg.DagsterEvent]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for event in events:
        if event.event_type == dg.DagsterEventType.STEP_UP_FOR_RETRY:
            counts[event.step_key or ""] = counts.get(event.step_key or "", 0) + 1
    return counts


@dataclass
class Lab:
    """A source (local file or S3 object), a local catalog and a temporary instance."""

    root: Path
    instance: dg.DagsterInstance
    uri: str
    store: Store
    settings: Settings
    overwrite: Callable[[bytes], None]

    @property
    def catalog(self) -> Path:
        return Path(self.settings.catalog)

    @property
    def key(self) -> str:
        return scene_key(self.uri)

    def register(self) -> str:
        register_scene(LocalStore(), str(self.catalog), self.key, self.store.head(self.uri))
        self.instance.add_dynamic_partitions(scenes.name, [self.key])
        return self.key

    def run(self, config: dict[str, Any]) -> dg.ExecuteInProcessResult:
        job = build_definitions(self.settings).resolve_job_def(process_scene.name)
        return job.execute_in_process(
            run_config=config, instance=self.instance, partition_key=self.key, raise_on_error=False
        )

    def file(self, name: str) -> Path:
        return self.catalog / "scenes" / self.key / name

    def status(self) -> dict[str, Any]:
        return json.loads(self.file("status.json").read_text())


def local_lab(root: Path, instance: dg.DagsterInstance, image: Path) -> Lab:
    source = root / "inbox" / image.name
    source.parent.mkdir(parents=True)
    source.write_bytes(image.read_bytes())
    settings = Settings(inbox=str(source.parent), catalog=str(root / "catalog"))
    return Lab(root, instance, str(source), LocalStore(), settings, source.write_bytes)  # in place, same inode


def s3_lab(root: Path, instance: dg.DagsterInstance, image: Path, server: SeaweedServer) -> Lab:
    bucket = server.make_bucket("faults")
    client = server.client()
    key = f"inbox/{image.name}"
    client.put_object(Bucket=bucket, Key=key, Body=image.read_bytes())
    store = S3Store.from_settings(
        S3Settings(server.endpoint_url, server.region, False, server.access_key, server.secret_key)
    )
    settings = Settings(f"s3://{bucket}/inbox", str(root / "catalog"), S3_FIELDS, s3_use_ssl=False)
    return Lab(
        root, instance, f"s3://{bucket}/{key}", store, settings,
        lambda body: client.put_object(Bucket=bucket, Key=key, Body=body),
    )


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as opened:
        yield opened


@pytest.fixture(params=["local", "s3"])
def source_lab(request: pytest.FixtureRequest, tmp_path: Path, instance: dg.DagsterInstance) -> Lab:
    if request.param == "local":
        return local_lab(tmp_path, instance, NAIP)
    server = request.getfixturevalue("s3_env")
    return s3_lab(tmp_path, instance, NAIP, server)


def test_an_overwritten_source_fails_the_run_and_its_new_version_is_analyzed_whole(source_lab: Lab) -> None:
    lab = source_lab
    old, new = NAIP.read_bytes(), inverted(NAIP)
    old_fingerprint = lab.store.fingerprint(lab.uri)
    lab.register()
    FIRST_PREDICT_HOOKS["overwrite"] = lambda: lab.overwrite(new)

    first = lab.run(run_config({"hook": "overwrite"}))

    assert "overwrite" not in FIRST_PREDICT_HOOKS  # the source changed during the first batch
    assert not first.success
    status = lab.status()
    assert (status["status"], status["stage"], status["error_type"]) == ("failed", "tile_findings", "SourceChangedError")
    assert status["object"] == lab.uri and "changed while it was being processed" in status["reason"]
    assert not step_retries(first.all_events)  # a changed source is final for the run, never retried
    for name in ("findings.parquet", "tile_results.parquet", "synthesis.json", "item.json", "preview.png"):
        assert not lab.file(name).exists(), name
    # What the first batch cached under the old version was read before the change: old pixels only.
    manifest = pd.read_parquet(lab.file("tiles.parquet"))
    cached = []
    for p in lab.catalog.glob(f"cache/*/{old_fingerprint.replace(':', '-')}/**/*.parquet"):
        tiles = json.loads(pq.read_metadata(p).metadata[CHUNK_METADATA])["tiles"]
        for row in pq.read_table(p, columns=[TILE_KEY, "attributes"]).to_pylist():
            cached.append((tiles[row[TILE_KEY]]["tile_id"], json.loads(row["attributes"])["mean"]))
    assert cached
    old_means = window_means(old, manifest)
    assert len(cached) == len({tile_id for tile_id, _ in cached})  # one finding per tile
    for tile_id, mean in cached:
        assert mean == pytest.approx(old_means[tile_id])

    second = lab.run(run_config({}))  # what the sensor starts for the new version

    assert second.success
    assert lab.status()["status"] == "complete"
    source = json.loads(lab.file("source.json").read_text())
    assert source["fingerprint"] == lab.store.fingerprint(lab.uri) != old_fingerprint
    results = pd.read_parquet(lab.file("tile_results.parquet"))
    assert sorted(results["tile_id"]) == sorted(manifest["tile_id"]) and not results["from_cache"].any()
    seen = probe_means(gpd.read_parquet(lab.file("findings.parquet")))
    new_means = window_means(new, manifest)
    assert seen.keys() == new_means.keys()
    assert all(seen[t] == pytest.approx(new_means[t]) for t in seen), "an output mixes two versions"


def test_storage_going_away_mid_run_is_retried_then_fails_clearly_and_resume_finishes(
    s3_env: SeaweedServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The S3 server stops while the first batch predicts; the second batch cannot read its tiles."""
    bucket = s3_env.make_bucket("outage")
    s3_env.client().put_object(Bucket=bucket, Key="inbox/naip.tif", Body=NAIP.read_bytes())
    uri, catalog = f"s3://{bucket}/inbox/naip.tif", tmp_path / "catalog"
    folder = catalog / "scenes" / scene_key(uri)
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TILE_ASSETS_INBOX", "unset")  # set by the CLI, restored afterwards
    monkeypatch.setenv("TILE_ASSETS_CATALOG", "unset")
    monkeypatch.chdir(tmp_path)
    FIRST_PREDICT_HOOKS["stop"] = s3_env.stop
    try:
        code = cli.main([
            "run", f"s3://{bucket}/inbox", "--catalog", str(catalog), "--tile-size", "256", "--overlap", "0",
            "--target-steps", "2", "--model", PROBE, "--model-params", json.dumps({"hook": "stop"}),
        ])
    finally:
        s3_env.start()
    assert code == 1 and "stop" not in FIRST_PREDICT_HOOKS
    with dg.DagsterInstance.get() as instance:
        [run] = instance.get_runs(filters=dg.RunsFilter(job_name=process_scene.name))
        events = [record.get_dagster_event() for record in instance.all_logs(run.run_id) if record.is_dagster_event]
    assert run.is_failure
    assert step_retries(events) == {"tile_findings.infer_batch[b00001]": 3}
    status = json.loads((folder / "status.json").read_text())
    assert (status["status"], status["stage"], status["error_type"]) == ("failed", "tile_findings", "TransientStoreError")
    assert status["object"] == uri and "still failing on the last retry" in status["reason"]
    assert gpd.read_parquet(catalog / "scenes.parquet").set_index("id").loc[scene_key(uri), "status"] == "failed"

    assert cli.main(["resume", run.run_id]) == 0

    with dg.DagsterInstance.get() as instance:
        [child] = [r for r in instance.get_runs(filters=dg.RunsFilter(job_name=process_scene.name)) if r.run_id != run.run_id]
        started = {
            record.step_key for record in instance.all_logs(child.run_id, of_type=dg.DagsterEventType.STEP_START)
        }
    assert {step for step in started if "infer_batch" in (step or "")} == {"tile_findings.infer_batch[b00001]"}
    manifest = pd.read_parquet(folder / "tiles.parquet")
    results = pd.read_parquet(folder / "tile_results.parquet")
    findings = gpd.read_parquet(folder / "findings.parquet")
    assert sorted(results["tile_id"]) == sorted(manifest["tile_id"]) and set(results["status"]) == {"ok"}
    assert sorted(findings["tile_id"]) == sorted(manifest["tile_id"])  # every tile's finding exactly once
    assert json.loads((folder / "status.json").read_text())["status"] == "complete"


def test_gdal_never_serves_an_overwritten_or_unreachable_s3_object_from_its_cache(s3_env: SeaweedServer) -> None:
    bucket = s3_env.make_bucket("gdal")
    client = s3_env.client()
    client.put_object(Bucket=bucket, Key="naip.tif", Body=NAIP.read_bytes())
    store = S3Store.from_settings(
        S3Settings(s3_env.endpoint_url, s3_env.region, False, s3_env.access_key, s3_env.secret_key)
    )
    uri, window = f"s3://{bucket}/naip.tif", Window(0, 0, 256, 256)
    with open_raster(store, uri) as ds:
        before = ds.read(window=window)
    client.put_object(Bucket=bucket, Key="naip.tif", Body=inverted(NAIP))
    with open_raster(store, uri) as ds:
        assert np.array_equal(ds.read(window=window), 255 - before)
    s3_env.stop()
    try:
        with pytest.raises(TransientStoreError, match="CURL error"), open_raster(store, uri) as ds:
            ds.read(window=window)
    finally:
        s3_env.start()


def test_the_version_guard_passes_a_touched_file_and_stops_a_changed_one(tmp_path: Path) -> None:
    source = tmp_path / "scene.tif"
    source.write_bytes(NAIP.read_bytes())
    store = LocalStore()
    guard = VersionGuard(store, str(source), store.head(str(source)).etag, store.fingerprint(str(source)))
    guard.check()
    os.utime(source, ns=(time.time_ns(), time.time_ns() + 10**9))
    guard.check()
    assert guard.version == store.head(str(source)).etag  # the touched file's listing version is accepted
    source.write_bytes(inverted(NAIP))
    with pytest.raises(SourceChangedError, match="changed while it was being processed") as raised:
        guard.check()
    assert raised.value.obj == str(source)
    source.unlink()
    with pytest.raises(StoreError, match="no such file"):
        guard.check()
    VersionGuard(store, str(source), "", "sha256:x").check()  # descriptors without a version are not checked


def test_a_hung_model_times_out_is_retried_and_its_tile_is_reported(tmp_path: Path, instance: dg.DagsterInstance) -> None:
    """Colorado at 128 px: six tiles in two batches of three; one tile of the second hangs.

    Each attempt's predict call (the whole batch: one chunk) times out; the last
    attempt tries the batch's tiles one by one, so only the hung tile fails.
    """
    lab = local_lab(tmp_path, instance, SAMPLES / "colorado_aerial_cl1.tif")
    lab.register()

    result = lab.run(
        run_config({"hang_tiles": ["r001c001"]}, tile_size=128, target_steps=2, timeout_s=1.0)
    )

    assert result.success  # the scene completes on the tiles that answered
    assert step_retries(result.all_events) == {"tile_findings.infer_batch[b00001]": 3}
    results = pd.read_parquet(lab.file("tile_results.parquet")).set_index("tile_id")
    assert results.loc["r001c001", "error_type"] == "ModelTimeoutError"
    assert "predict on 1 tile(s) (r001c001) did not return within 1 s" in results.loc["r001c001", "error_message"]
    assert set(results.drop(index="r001c001")["status"]) == {"ok"}  # its batch-mates r000c002, r001c002 too
    synthesis = json.loads(lab.file("synthesis.json").read_text())
    assert synthesis["coverage"] == 0.8333  # 5 of 6 tiles
    assert [t["tile_id"] for t in synthesis["failed_tiles"]] == ["r001c001"]
    [coverage] = [c for c in result.get_asset_check_evaluations() if c.check_name == "tile_coverage"]
    assert not coverage.passed


FILE_SIZE_LIMIT = 64 * 1024
"""Bigger than every step hand-off and table of the scene below, smaller than its preview."""


def run_on_a_full_disk(settings: Settings, key: str, config: dict[str, Any], report: str) -> None:
    """In a spawned process: the scene's run with files capped at `FILE_SIZE_LIMIT` (as a full disk).

    The kernel fails a write past the limit with EFBIG; SIGXFSZ would kill
    the process, so it is ignored. Output goes to /dev/null (a device has no
    size limit); the failed steps' messages go to `report`, a small file.
    """
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_SIZE_LIMIT, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(scenes.name, [key])
    job = build_definitions(settings).resolve_job_def(process_scene.name)
    result = job.execute_in_process(run_config=config, instance=instance, partition_key=key, raise_on_error=False)
    failures = [e.event_specific_data.error.to_string() for e in result.all_events if e.is_step_failure]
    Path(report).write_text(json.dumps({"success": result.success, "failures": failures}))
    sys.exit(0)


def assert_every_file_is_whole(catalog: Path) -> list[str]:
    """Every file under the catalog parses completely; returns their names."""
    names = []
    for path in sorted(p for p in catalog.rglob("*") if p.is_file()):
        assert not path.name.endswith(".tmp"), f"temp file left behind: {path}"
        if path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".parquet":
            pd.read_parquet(path)
        elif path.suffix == ".png":
            with Image.open(path) as image:
                image.load()
        names.append(path.name)
    return names


def test_a_full_disk_mid_run_leaves_no_partial_file_and_a_rerun_completes(tmp_path: Path, instance: dg.DagsterInstance) -> None:
    lab = local_lab(tmp_path, instance, SAMPLES / "colorado_aerial_cl1.tif")
    key = lab.register()
    config = run_config({}, tile_size=128)
    report = tmp_path / "report.json"
    child = multiprocessing.get_context("spawn").Process(
        target=run_on_a_full_disk, args=(lab.settings, key, config, str(report))
    )
    child.start()
    child.join(timeout=300)
    assert child.exitcode == 0, "the child crashed instead of failing the run"
    outcome = json.loads(report.read_text())
    assert not outcome["success"]
    assert any("File too large" in message for message in outcome["failures"]), outcome["failures"]
    written = assert_every_file_is_whole(lab.catalog)
    assert "preview.png" not in written and "status.json" not in written
    assert "tile_results.parquet" in written  # the run got as far as the synthesis

    assert lab.run(config).success
    assert {"preview.png", "item.json", "status.json"} <= set(assert_every_file_is_whole(lab.catalog))
    assert lab.status()["status"] == "complete"
