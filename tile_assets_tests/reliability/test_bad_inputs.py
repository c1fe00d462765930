"""The hostile inbox through the real pipeline: `tile-assets run` over every corpus file, and the sensor over it.

Each file completes, or its scene is rejected or failed with a reason that
names the object; the good scenes next to them complete; nothing is written
outside the catalog root and the Dagster home (no `.aux.xml` beside the
sources); partition keys stay short and safe. The same holds for hostile
keys on S3 (long, nested, spaces, unicode, doubled slashes). The sensor,
fed the same inbox plus things that are not files (a FIFO, a dangling
symlink, a folder named like an image), returns a result and never raises.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import geopandas as gpd
import pandas as pd
import pytest

from tile_assets import cli
from tile_assets.core.keys import scene_key
from tile_assets.definitions import build_definitions
from tile_assets.jobs import process_scene
from tile_assets.partitions import scenes
from tile_assets.sensors import new_images_sensor
from tile_assets.settings import Settings
from tile_assets_tests.fixtures.s3 import SeaweedServer
from tile_assets_tests.reliability.corpus import CASES, Case, build_corpus, rgb

SCENE_FILES = (
    "source.json", "tiles.parquet", "findings.parquet", "tile_results.parquet",
    "synthesis.json", "item.json", "preview.png", "status.json",
)
SAFE_KEY = re.compile(r"^[A-Za-z0-9._-]{1,60}$")
RUN_ARGS = ("--tile-size", "256", "--target-steps", "2")
"""Every generated image is one 256-px tile: bad inputs, not big ones, are the point here."""
BY_NAME = {case.name: case for case in CASES}


def tree(root: Path, skip: tuple[Path, ...]) -> dict[str, tuple[int, int]]:
    """Every path under `root` (outside `skip`) with its size and mtime, to see what a run wrote."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = [d for d in dirnames if here / d not in skip]
        for name in [*dirnames, *filenames]:
            stat = (here / name).lstat()
            found[str(here / name)] = (stat.st_size, stat.st_mtime_ns)
    return found


@dataclass
class CliRun:
    """One `tile-assets run` over an inbox, with what it printed and what the file tree looked like."""

    root: Path
    inbox: str
    catalog: Path
    home: Path
    code: int
    out: str
    err: str
    before: dict[str, tuple[int, int]]
    after: dict[str, tuple[int, int]]

    def key(self, uri: str) -> str:
        return scene_key(uri)

    def scene(self, uri: str) -> Path:
        return self.catalog / "scenes" / self.key(uri)

    def status(self, uri: str) -> dict:
        return json.loads((self.scene(uri) / "status.json").read_text())

    def table(self) -> pd.DataFrame:
        return gpd.read_parquet(self.catalog / "scenes.parquet").set_index("id")

    def partitions(self) -> set[str]:
        with dg.DagsterInstance.from_config(str(self.home)) as instance:
            return set(instance.get_dynamic_partitions(scenes.name))

    def summary_line(self, uri: str) -> str:
        return next(line for line in self.out.splitlines() if self.key(uri) in line)


def run_cli(root: Path, inbox: str, *extra_env: tuple[str, str]) -> CliRun:
    """`tile-assets run inbox --catalog root/catalog` in process, DAGSTER_HOME and cwd under `root`."""
    catalog, home, cwd = root / "catalog", root / "home", root / "cwd"
    cwd.mkdir(parents=True, exist_ok=True)
    before = tree(root, (catalog, home))
    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as env:
        for name, value in (("DAGSTER_HOME", str(home)), ("COLUMNS", "250"), *extra_env):
            env.setenv(name, value)
        for name in ("TILE_ASSETS_INBOX", "TILE_ASSETS_CATALOG"):
            env.setenv(name, "unset")  # the CLI sets them; restored afterwards
        env.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = cli.main(["run", inbox, "--catalog", str(catalog), *RUN_ARGS])
    return CliRun(root, inbox, catalog, home, code, out.getvalue(), err.getvalue(), before, tree(root, (catalog, home)))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build_corpus(tmp_path_factory.mktemp("hostile") / "inbox")


@pytest.fixture(scope="module")
def hostile(corpus: dict[str, Path]) -> CliRun:
    inbox = next(iter(corpus.values())).parent.resolve()
    return run_cli(inbox.parent, str(inbox))


def uri_of(corpus: dict[str, Path], case: Case) -> str:
    return str(corpus[case.name].resolve())


def test_the_run_reports_failure_and_writes_only_under_the_catalog_and_home(hostile: CliRun) -> None:
    assert hostile.code == 1
    assert hostile.after == hostile.before, "files appeared, changed or vanished outside the catalog"
    assert not list(hostile.root.rglob("*.aux.xml"))
    assert not list(hostile.catalog.rglob("*.tmp")), "a temp file of an atomic write was left behind"


def test_partition_keys_are_short_safe_and_unique(hostile: CliRun, corpus: dict[str, Path]) -> None:
    processed = [uri_of(corpus, c) for c in CASES if c.outcome != "ignored"]
    keys = [hostile.key(uri) for uri in processed]
    assert all(SAFE_KEY.match(key) for key in keys), [k for k in keys if not SAFE_KEY.match(k)]
    assert len(set(keys)) == len(keys)
    assert hostile.partitions() == set(keys)


@pytest.mark.parametrize("case", [c for c in CASES if c.outcome == "complete"], ids=lambda c: c.name)
def test_usable_inputs_complete(hostile: CliRun, corpus: dict[str, Path], case: Case) -> None:
    uri = uri_of(corpus, case)
    folder = hostile.scene(uri)
    assert hostile.status(uri)["status"] == "complete", hostile.status(uri)
    assert all((folder / name).is_file() for name in SCENE_FILES)
    source = json.loads((folder / "source.json").read_text())
    assert source["uri"] == uri
    manifest = pd.read_parquet(folder / "tiles.parquet")
    results = pd.read_parquet(folder / "tile_results.parquet")
    assert sorted(results["tile_id"]) == sorted(manifest["tile_id"])  # every tile exactly once
    assert set(results["status"]) == {"ok"}
    findings = gpd.read_parquet(folder / "findings.parquet")
    synthesis = json.loads((folder / "synthesis.json").read_text())
    assert synthesis["counts_by_label"] == findings["label"].value_counts().to_dict()
    assert json.loads((folder / "item.json").read_text())["id"] == hostile.key(uri)
    assert "ok" in hostile.summary_line(uri)
    assert hostile.table().loc[hostile.key(uri), "status"] == "complete"


@pytest.mark.parametrize("case", [c for c in CASES if c.outcome in ("rejected", "failed")], ids=lambda c: c.name)
def test_unusable_inputs_fail_naming_the_object_and_the_reason(
    hostile: CliRun, corpus: dict[str, Path], case: Case
) -> None:
    uri = uri_of(corpus, case)
    status = hostile.status(uri)
    assert status["status"] == case.outcome
    assert status["object"] == uri
    assert case.reason in status["reason"]
    if case.outcome == "rejected":
        assert (status["stage"], status["check"]) == ("source_images", "validation")
        assert not (hostile.scene(uri) / "tiles.parquet").exists()
    else:
        assert status["stage"] == case.stage
    assert not (hostile.scene(uri) / "synthesis.json").exists()
    line = hostile.summary_line(uri)
    assert ("rejected by validation" if case.outcome == "rejected" else "failed") in line
    row = hostile.table().loc[hostile.key(uri)]
    assert row["status"] == case.outcome and case.reason in row["description"]


@pytest.mark.parametrize("case", [c for c in CASES if c.outcome == "ignored"], ids=lambda c: c.name)
def test_objects_that_are_not_images_are_skipped_and_said_so(
    hostile: CliRun, corpus: dict[str, Path], case: Case
) -> None:
    uri = uri_of(corpus, case)
    assert hostile.key(uri) not in hostile.partitions()
    assert not hostile.scene(uri).exists()
    assert f"skipped {uri}: {case.reason}" in " ".join(hostile.err.split())


def test_odd_but_valid_rasters_are_described_as_they_are(hostile: CliRun, corpus: dict[str, Path]) -> None:
    def source(name: str) -> dict:
        return json.loads((hostile.scene(uri_of(corpus, BY_NAME[name])) / "source.json").read_text())

    def manifest(name: str) -> pd.DataFrame:
        return pd.read_parquet(hostile.scene(uri_of(corpus, BY_NAME[name])) / "tiles.parquet")

    assert {n: source(n)["dtype"] for n in ("uint16.tif", "int16.tif", "float32.tif")} == {
        "uint16.tif": "uint16", "int16.tif": "int16", "float32.tif": "float32",
    }
    assert [source(n)["count"] for n in ("one-band.tif", "two-band.tif", "six-band.tif")] == [1, 2, 6]
    nan = source("float32-nan-nodata.tif")
    assert nan["nodata"] == "nan"
    assert 0.7 < manifest("float32-nan-nodata.tif")["valid_fraction"].item() < 0.8  # the NaN quarter is masked
    gcps = source("gcps.tif")
    assert gcps["transform"] is None and gcps["crs"] == "EPSG:26914" and gcps["bounds_wgs84"] is not None
    rotated = source("rotated.tif")
    assert rotated["transform"][1] != 0 and rotated["crs"] == "EPSG:26914"
    assert (source("one-pixel.tif")["width"], source("one-pixel.tif")["height"]) == (1, 1)
    assert manifest("one-pixel.tif")[["width", "height"]].values.tolist() == [[1, 1]]
    # EXIF orientation is not applied: pixels, boxes and preview stay in the stored grid, as GDAL reads it.
    assert (source("exif-rotated.jpg")["width"], source("exif-rotated.jpg")["height"]) == (400, 300)
    assert source("png-named.tif")["driver"] == "PNG"


def test_the_same_image_under_two_keys_is_two_scenes_each_analyzed_once(
    hostile: CliRun, corpus: dict[str, Path]
) -> None:
    first, second = (uri_of(corpus, BY_NAME[f"same/{n}.tif"]) for n in ("first", "second"))
    assert hostile.key(first) != hostile.key(second)
    frames = [gpd.read_parquet(hostile.scene(uri) / "findings.parquet") for uri in (first, second)]
    columns = ["label", "score", "px_x0", "px_y0", "px_x1", "px_y1"]
    assert frames[0][columns].equals(frames[1][columns]) and len(frames[0]) > 0
    assert set(frames[0]["scene_key"]) == {hostile.key(first)} and set(frames[1]["scene_key"]) == {hostile.key(second)}


S3_KEYS = {
    "inbox/" + "/".join(c * 245 for c in "abcd") + ".tif": rgb,
    "inbox/spaces, commas/ünïcødé 画像.tif": rgb,
    "inbox/bomb-100000x100000.png": BY_NAME["bomb-100000x100000.png"].build,
    "inbox/text-named.jpg": BY_NAME["text-named.jpg"].build,
}
"""A 993-character key (S3's limit is 1,024 bytes; SeaweedFS's 255 per segment), spaces, commas, unicode, two bad files."""
S3_NORMALIZED = {"inbox//double-slash.tif": "inbox/double-slash.tif", "/inbox/leading-slash.tif": "inbox/leading-slash.tif"}
"""Keys SeaweedFS stores normalized (AWS would keep them); it refuses keys with `..` segments (InvalidRequest)."""


@pytest.fixture(scope="module")
def s3_hostile(s3_server: SeaweedServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[CliRun, str]]:
    root = tmp_path_factory.mktemp("hostile-s3")
    bucket = s3_server.make_bucket("hostile")
    client = s3_server.client()
    scratch = root / "scratch"
    scratch.mkdir()
    for number, (key, build) in enumerate([*S3_KEYS.items(), *((k, rgb) for k in S3_NORMALIZED)]):
        build(scratch / f"{number}.bin")
        client.put_object(Bucket=bucket, Key=key, Body=(scratch / f"{number}.bin").read_bytes())
    shutil.rmtree(scratch)
    env = (
        ("AWS_ENDPOINT_URL", s3_server.endpoint_url), ("AWS_ACCESS_KEY_ID", s3_server.access_key),
        ("AWS_SECRET_ACCESS_KEY", s3_server.secret_key), ("AWS_REGION", s3_server.region),
    )
    yield run_cli(root, f"s3://{bucket}/inbox", *env), bucket


def test_hostile_s3_keys_are_processed_or_rejected_with_short_keys(s3_hostile: tuple[CliRun, str]) -> None:
    run, bucket = s3_hostile
    assert run.code == 1
    expected = {
        **{key: "complete" for key in list(S3_KEYS)[:2]},
        **{key: "rejected" for key in list(S3_KEYS)[2:]},
        **{stored: "complete" for stored in S3_NORMALIZED.values()},
    }
    for key, outcome in expected.items():
        uri = f"s3://{bucket}/{key}"
        status = run.status(uri)
        assert status["status"] == outcome, (key[:40], status)
        assert SAFE_KEY.match(run.key(uri))
        if outcome == "complete":
            assert json.loads((run.scene(uri) / "source.json").read_text())["uri"] == uri
        else:
            assert status["object"] == uri
    assert run.partitions() == {run.key(f"s3://{bucket}/{key}") for key in expected}
    assert run.after == run.before and not list(run.root.rglob("*.aux.xml"))


def not_files(inbox: Path) -> None:
    """Entries a listing meets that must not be opened: a FIFO (opening it would block), a dangling
    symlink, a folder named like an image, and a symlink loop."""
    os.mkfifo(inbox / "fifo.tif")
    (inbox / "dangling.tif").symlink_to(inbox / "does-not-exist.tif")
    (inbox / "folder.tif").mkdir()
    (inbox / "loop").symlink_to(inbox, target_is_directory=True)


def test_the_sensor_survives_the_hostile_inbox(tmp_path: Path) -> None:
    inbox, catalog = tmp_path / "inbox", tmp_path / "catalog"
    corpus = build_corpus(inbox)
    not_files(inbox)
    defs = build_definitions(Settings(inbox=str(inbox), catalog=str(catalog)))
    expected = {scene_key(str(corpus[c.name])) for c in CASES if c.outcome != "ignored"}
    with dg.instance_for_test() as instance:
        cursor = None
        for tick in range(2):
            with dg.build_sensor_context(instance=instance, cursor=cursor, resources=defs.resources) as context:
                result = new_images_sensor(context)
            assert isinstance(result, dg.SensorResult), result
            requests = [r for r in result.run_requests or [] if r.job_name == process_scene.name]
            if tick == 0:
                assert {r.partition_key for r in requests} == expected
                assert len({r.run_key for r in requests}) == len(requests)
                for request in result.dynamic_partitions_requests or []:
                    instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
            else:
                assert requests == []  # nothing is requested twice
            cursor = result.cursor
        assert set(instance.get_dynamic_partitions(scenes.name)) == expected
    registered = {p.stem for p in (catalog / "_registry").iterdir()}
    assert registered == expected
    assert {p.name for p in tmp_path.iterdir()} == {"inbox", "catalog"}
