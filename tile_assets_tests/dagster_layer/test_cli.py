"""`tile-assets run` and `tile-assets resume` end to end, on real images and a real Dagster home.

The happy path runs the installed console script in a subprocess; the bad-input
and resume cases call `tile_assets.cli.main` in process (same code, no
interpreter start-up). Only the smallest sample images are used.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import geopandas as gpd
import pytest

from tile_assets import cli
from tile_assets.assets import findings as findings_assets
from tile_assets.core.keys import scene_key
from tile_assets.core.store import LocalStore
from tile_assets.jobs import process_scene, refresh_catalog
from tile_assets.partitions import scenes
from tile_assets_tests.dagster_layer.fixtures import (
    BAD,
    INBOX,
    SCENE_FILES,
    copy_images,
)

GOOD = ("rgb-byte-tenth.tif", "colorado_aerial_cl1.tif", "page_text.png")
CLI_TIMEOUT_S = 300


@dataclass
class CliRun:
    inbox: Path
    catalog: Path
    returncode: int
    output: str

    def key(self, name: str) -> str:
        return scene_key(str(self.inbox / name))

    def scene(self, name: str) -> Path:
        return self.catalog / "scenes" / self.key(name)

    def status(self, name: str) -> dict:
        return json.loads((self.scene(name) / "status.json").read_text())


@pytest.fixture
def dagster_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh $DAGSTER_HOME; the CLI's own changes to the environment are undone after the test."""
    home = tmp_path / "home"
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("TILE_ASSETS_INBOX", str(tmp_path / "inbox"))
    monkeypatch.setenv("TILE_ASSETS_CATALOG", str(tmp_path / "catalog"))
    monkeypatch.setenv("COLUMNS", "200")  # rich: one table line per scene
    return home


@pytest.fixture
def instance(dagster_home: Path) -> Iterator[dg.DagsterInstance]:
    """The instance the CLI writes to (opened after the CLI created $DAGSTER_HOME)."""
    cli.ensure_dagster_home()
    with dg.DagsterInstance.get() as opened:
        yield opened


def scene_runs(instance: dg.DagsterInstance) -> list[dg.DagsterRun]:
    return list(instance.get_runs(filters=dg.RunsFilter(job_name=process_scene.name)))


def assert_complete(run: CliRun, name: str) -> None:
    folder = run.scene(name)
    for file in SCENE_FILES:
        assert (folder / file).is_file(), f"{name}: {file}"
    assert run.status(name)["status"] == "complete"
    findings = gpd.read_parquet(folder / "findings.parquet")
    synthesis = json.loads((folder / "synthesis.json").read_text())
    assert synthesis["counts_by_label"] == findings["label"].value_counts().to_dict(), (
        name
    )
    assert synthesis["total_findings"] == len(findings) > 0, name


@pytest.fixture
def good_run(tmp_path: Path, dagster_home: Path) -> CliRun:
    inbox, catalog = tmp_path / "inbox", tmp_path / "catalog"
    copy_images(inbox, *(INBOX / name for name in GOOD))
    script = Path(sys.executable).parent / "tile-assets"
    proc = subprocess.run(
        [str(script), "run", str(inbox), "--catalog", str(catalog)],
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        env=os.environ.copy(),
        cwd=tmp_path,
        check=False,
    )
    return CliRun(inbox, catalog, proc.returncode, proc.stdout + proc.stderr)


def test_run_builds_the_catalog(good_run: CliRun, instance: dg.DagsterInstance) -> None:
    assert good_run.returncode == 0, good_run.output[-3000:]
    # No Python warning (Dagster's beta and preview notices for features used knowingly) reaches the user.
    assert not re.search(r"\w+Warning: ", good_run.output), good_run.output[-3000:]
    for name in GOOD:
        assert_complete(good_run, name)
        assert good_run.key(name) in good_run.output
    collection = json.loads((good_run.catalog / "collection.json").read_text())
    assert len([link for link in collection["links"] if link["rel"] == "item"]) == len(
        GOOD
    )
    table = gpd.read_parquet(good_run.catalog / "scenes.parquet")
    assert sorted(table["id"]) == sorted(good_run.key(name) for name in GOOD)
    assert set(table["status"]) == {"complete"}

    keys = {good_run.key(name) for name in GOOD}
    assert set(instance.get_dynamic_partitions(scenes.name)) == keys
    runs = scene_runs(instance)
    assert sorted(r.tags["dagster/partition"] for r in runs) == sorted(keys)
    assert all(r.is_success and r.tags["tile_assets/trigger"] == "cli" for r in runs)
    [catalog_run] = instance.get_runs(
        filters=dg.RunsFilter(job_name=refresh_catalog.name)
    )
    assert catalog_run.is_success


def test_run_with_bad_images(
    tmp_path: Path, dagster_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inbox, catalog = tmp_path / "inbox", tmp_path / "catalog"
    good = GOOD[:2]
    copy_images(
        inbox,
        *(INBOX / name for name in good),
        BAD / "corrupt.tif",
        BAD / "all-nodata.tif",
    )
    code = cli.main(["run", str(inbox), "--catalog", str(catalog)])
    printed = capsys.readouterr().out
    run = CliRun(inbox, catalog, code, printed)
    assert code == 1
    for name in good:
        assert_complete(run, name)
    expected = {
        "corrupt.tif": ("source_images", "RasterReadError", "IReadBlock failed"),
        "all-nodata.tif": ("tiles", "UnsupportedRasterError", "every pixel is nodata"),
    }
    table = gpd.read_parquet(catalog / "scenes.parquet").set_index("id")
    for name, (stage, error_type, reason) in expected.items():
        status = run.status(name)
        assert status["status"] == "failed"
        assert (status["stage"], status["error_type"]) == (stage, error_type)
        assert Path(status["object"]).name == name
        assert reason in status["reason"]
        assert not (run.scene(name) / "synthesis.json").exists()
        line = next(line for line in printed.splitlines() if run.key(name) in line)
        assert "failed" in line and reason in line
        assert table.loc[run.key(name), "status"] == "failed"
        assert reason in table.loc[run.key(name), "description"]
    assert set(table.loc[[run.key(name) for name in good], "status"]) == {"complete"}


def test_resume_completes_a_failed_run_from_any_shell(
    tmp_path: Path,
    instance: dg.DagsterInstance,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A scene run that failed on a corrupt image completes on resume once the image is replaced.

    `resume` runs from a fresh shell: no TILE_ASSETS_* variables, another
    working directory; the run's own config says where the catalog is.
    """
    inbox, catalog = tmp_path / "inbox", tmp_path / "catalog"
    [image] = copy_images(inbox, BAD / "corrupt.tif")
    assert cli.main(["run", str(inbox), "--catalog", str(catalog)]) == 1
    [parent] = scene_runs(instance)
    assert parent.is_failure
    key = parent.tags["dagster/partition"]
    assert key == scene_key(str(image))
    assert (
        json.loads((catalog / "scenes" / key / "status.json").read_text())["status"]
        == "failed"
    )

    copy_images(tmp_path / "fixed", INBOX / "rgb-byte-tenth.tif")[0].replace(image)
    monkeypatch.delenv("TILE_ASSETS_INBOX")
    monkeypatch.delenv("TILE_ASSETS_CATALOG")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    capsys.readouterr()
    assert cli.main(["resume", parent.run_id]) == 0
    assert "succeeded" in capsys.readouterr().out
    [child] = [run for run in scene_runs(instance) if run.run_id != parent.run_id]
    assert child.is_success
    assert child.parent_run_id == child.root_run_id == parent.run_id
    assert child.tags["dagster/partition"] == key
    assert child.tags["dagster/parent_run_id"] == parent.run_id
    assert child.tags["tile_assets/trigger"] == "cli"
    assert "dagster/failure_reason" not in child.tags
    folder = catalog / "scenes" / key
    assert json.loads((folder / "status.json").read_text())["status"] == "complete"
    assert all((folder / name).is_file() for name in SCENE_FILES)
    assert (
        list(elsewhere.iterdir()) == []
    )  # nothing went to a default catalog under the working directory


def test_resume_unknown_run(dagster_home: Path) -> None:
    assert cli.main(["resume", "00000000-0000-0000-0000-000000000000"]) == 2


def test_a_second_run_leaves_complete_scenes_alone(
    tmp_path: Path, instance: dg.DagsterInstance, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`run` again starts no run for a scene whose last run of the same image and options is
    complete, and reads no image whole to tell; other options, a changed image, failed tiles
    or `--force` run it again. A new or changed image is read whole once: the hash that
    versions it is registered and `source_images` reuses it."""
    inbox, catalog = tmp_path / "inbox", tmp_path / "catalog"
    first, second = copy_images(inbox, INBOX / "rgb-byte-tenth.tif", INBOX / "page_text.png")
    run = ["run", str(inbox), "--catalog", str(catalog)]
    hashed: list[str] = []
    fingerprint = LocalStore.fingerprint
    monkeypatch.setattr(LocalStore, "fingerprint", lambda store, uri: hashed.append(uri) or fingerprint(store, uri))

    def runs_by_scene(*args: str) -> dict[str, int]:
        capsys.readouterr()
        assert cli.main([*run, *args]) == 0
        return {
            name: sum(r.tags["dagster/partition"] == scene_key(str(inbox / name)) for r in scene_runs(instance))
            for name in (first.name, second.name)
        }

    assert runs_by_scene() == {first.name: 1, second.name: 1}
    assert sorted(hashed) == sorted([str(first), str(second)])  # by discover; source_images reuses it
    findings = (catalog / "scenes" / scene_key(str(first)) / "findings.parquet").stat().st_mtime_ns
    hashed.clear()
    assert runs_by_scene() == {first.name: 1, second.name: 1}
    assert not hashed
    printed = capsys.readouterr()
    assert "2 of 2 scenes up to date" in printed.err
    assert printed.out.count("up to date") == 2 and scene_key(str(first)) in printed.out
    assert (catalog / "scenes" / scene_key(str(first)) / "findings.parquet").stat().st_mtime_ns == findings

    assert runs_by_scene("--tile-size", "256") == {first.name: 2, second.name: 2}  # other options
    assert runs_by_scene("--tile-size", "256") == {first.name: 2, second.name: 2}
    assert runs_by_scene("--tile-size", "256", "--force") == {first.name: 3, second.name: 3}
    assert not hashed
    os.utime(first, ns=(first.stat().st_atime_ns, first.stat().st_mtime_ns + 10**9))  # same bytes: same version
    assert runs_by_scene("--tile-size", "256") == {first.name: 3, second.name: 3}
    assert hashed == [str(first)]
    hashed.clear()
    copy_images(tmp_path / "new", INBOX / "colorado_aerial_cl1.tif")[0].replace(first)  # new bytes, same name
    assert runs_by_scene("--tile-size", "256") == {first.name: 4, second.name: 3}
    assert hashed == [str(first)]
    source = json.loads((catalog / "scenes" / scene_key(str(first)) / "source.json").read_text())
    assert source["fingerprint"] == "sha256:" + hashlib.sha256(first.read_bytes()).hexdigest()
    (catalog / "scenes" / scene_key(str(second)) / "item.json").unlink()  # the catalog lost it
    assert runs_by_scene("--tile-size", "256") == {first.name: 4, second.name: 4}
    latest = next(r for r in scene_runs(instance) if r.tags["dagster/partition"] == scene_key(str(second)))
    instance.report_run_failed(latest)  # its process died after the scene's files were written
    assert runs_by_scene("--tile-size", "256") == {first.name: 4, second.name: 5}


def test_the_request_names_the_options_and_the_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """What makes a scene's last run stand: its options and the model's identity, not the executor."""
    from tile_assets.core.models.classical import ClassicalModel

    def digest(*args: str, gate: str | None = "gate policy") -> str:
        return cli.request_digest(cli.run_config(cli.build_parser().parse_args(["run", *args])), gate)

    default = digest()
    assert len(default) == 16 and default == digest("--executor", "multiprocess")
    assert default == digest("--target-steps", "3") == digest("--max-tiles-per-batch", "8")  # same results
    assert default != digest("--model-params", json.dumps({"min_area_px": 20}))
    assert default != digest("--overlap", "0.1")
    monkeypatch.setattr(ClassicalModel, "version", "2.0.0")
    assert default != digest()
    assert digest("--model", "no-such-model") == ""  # never up to date: its runs say why it fails
    assert default != digest(gate="another gate policy")
    assert digest(gate=None) == ""  # a policy file that cannot be read: its runs say so


def test_a_changed_gate_policy_runs_a_complete_scene_again(
    tmp_path: Path, instance: dg.DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A blocklist edited in place can reject a scene that passed: its last run no longer stands,
    though the run options and the image are the same."""
    inbox, catalog = tmp_path / "inbox", tmp_path / "catalog"
    (image,) = copy_images(inbox, INBOX / "rgb-byte-tenth.tif")
    blocklist = tmp_path / "blocklist.txt"
    blocklist.write_text("# nothing blocked yet\n")
    monkeypatch.setenv("TILE_ASSETS_GATE", json.dumps({"blocklist_path": str(blocklist)}))
    run = ["run", str(inbox), "--catalog", str(catalog)]
    key = scene_key(str(image))

    assert cli.main(run) == 0
    assert cli.main(run) == 0
    assert len(scene_runs(instance)) == 1  # the second run found it up to date
    blocklist.write_text(f"sha256:{hashlib.sha256(image.read_bytes()).hexdigest()}  leaked\n")
    assert cli.main(run) == 1  # the scene is rejected now
    assert len(scene_runs(instance)) == 2
    status = json.loads((catalog / "scenes" / key / "status.json").read_text())
    assert status["status"] == "rejected" and "blocklist" in status["reason"], status


def test_batching_follows_the_executor_unless_given() -> None:
    """In process, steps run one at a time: a scene is one inference step (up to 4,096 tiles);
    multiprocess keeps the op's default of about twice the pool's slots."""
    def batching(*args: str) -> dict:
        config = cli.run_config(cli.build_parser().parse_args(["run", *args]))
        return config["ops"]["tile_findings"]["ops"]["plan_batches"]["config"]

    assert batching() == {"target_steps": 1, "max_tiles_per_batch": 4096}
    assert batching("--executor", "multiprocess") == {"target_steps": 4, "max_tiles_per_batch": 1024}
    assert batching("--target-steps", "3") == {"target_steps": 3, "max_tiles_per_batch": 4096}
    assert batching("--executor", "multiprocess", "--max-tiles-per-batch", "7") == {
        "target_steps": 4, "max_tiles_per_batch": 7,
    }


def test_an_in_process_run_infers_a_scene_in_one_step(
    tmp_path: Path, instance: dg.DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One step, which reads ahead: the run's other steps wait, so the model has a core to itself."""
    inbox, catalog = tmp_path / "inbox", tmp_path / "catalog"
    copy_images(inbox, INBOX / "naip_2018.tif")
    read_ahead: list[bool] = []
    run_batch = findings_assets.run_batch
    monkeypatch.setattr(
        findings_assets, "run_batch", lambda *a, **kw: read_ahead.append(kw["read_ahead"]) or run_batch(*a, **kw)
    )
    assert cli.main(["run", str(inbox), "--catalog", str(catalog), "--tile-size", "128"]) == 0
    assert read_ahead == [True]
    (run,) = scene_runs(instance)
    steps = [s.step_key for s in instance.get_run_step_stats(run.run_id)]
    assert [k for k in steps if ".infer_batch[" in k] == ["tile_findings.infer_batch[b00000]"]
    (materialization,) = instance.fetch_materializations(dg.AssetKey("tile_findings"), limit=1).records
    assert materialization.asset_materialization.metadata["tiles_inferred"].value == 63  # 9 x 7 tiles


def test_a_scene_with_failed_tiles_runs_again(
    tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    """Tiles that failed are what a rerun is for: a scene below full coverage is never up to date."""
    inbox, catalog = tmp_path / "inbox", tmp_path / "catalog"
    [image] = copy_images(inbox, INBOX / "page_text.png")
    failing = json.dumps({"fail_tiles": ["r000c000"]})
    run = ["run", str(inbox), "--catalog", str(catalog), "--tile-size", "128", "--overlap", "0",
           "--model", "tile_assets_tests.fanout.faulty_models:FlakyModel", "--model-params", failing]
    for attempt in (1, 2):
        cli.main(run)
        status = json.loads((catalog / "scenes" / scene_key(str(image)) / "status.json").read_text())
        assert status["status"] == "complete" and status["coverage"] < 1
        assert len(scene_runs(instance)) == attempt


def test_summary_never_cuts_scene_keys(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """On a narrow terminal (or a CI log, 80 columns) long keys wrap instead of ending in "…",
    and paths and the web UI command are printed whole, never broken across lines."""
    monkeypatch.setenv("COLUMNS", "60")
    monkeypatch.setenv("DAGSTER_HOME", "/nonexistent")
    key = scene_key("/inbox/a_rather_long_scene_file_name_from_a_drone_survey_2024.tif")
    outcome = cli.SceneOutcome(
        key=key, uri="/inbox/x.tif", run_id="r", success=False, reason="x " * 40
    )
    catalog = "/data/survey [2024]/" + "a_long_folder_name/" * 4 + "catalog"
    cli.print_summary([outcome], catalog)
    printed = capsys.readouterr().out
    assert "…" not in printed
    # Paths and the web UI command come whole, each on one line, to be copied and pasted.
    assert f"Catalog: {catalog}\n" in printed
    assert f"  scenes table: {catalog}/scenes.parquet\n" in printed
    assert "Web UI: DAGSTER_HOME=/nonexistent .venv/bin/dagster dev -w workspace.yaml " in printed
    cells = "".join(
        line.split("│")[1].strip()
        for line in printed.splitlines()
        if line.startswith("│")
    )
    assert key in cells
