"""A run killed with SIGKILL mid-fan-out is finished by `tile-assets resume RUN_ID`.

`tile-assets run` processes a one-image inbox (63 tiles, 8 batches, a slow
model) in a subprocess; once three inference batches have succeeded and the
fourth is running, its whole process group is killed with SIGKILL. Nothing
records the run's end, so the test marks it failed (run monitoring does that
under the daemon), then resumes it from another shell with no project
variables set. The re-execution must succeed without re-running the
succeeded batches, re-run the one cut off, give back the pool slot the
killed run held, keep the partition and tags, and leave every tile's finding
in findings.parquet exactly once, including the tiles of batches that never
started (Dagster's from-failure does not re-plan those; the merge infers them).
"""

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import geopandas as gpd
import pandas as pd
import pytest

from tile_assets.assets.findings import INFERENCE_POOL
from tile_assets.cli import PROJECT_INSTANCE_YAML
from tile_assets_tests.fanout.conftest import FLAKY, NAIP, REPO_ROOT, TILE_SIZE
from tile_assets_tests.fanout.faulty_models import StateDir

BATCHES = 8
KILL_AFTER = 3
"""Inference batches that must have succeeded before the kill."""
DELAY_S = 0.15
"""Per tile: about 1.2 s per batch of 8, so the kill lands mid-fan-out."""
WAIT_S = 300
INFER = ".infer_batch["


@dataclass(frozen=True)
class Killed:
    """The killed run and its re-execution, on the CLI's own instance and catalog."""

    root: Path
    instance: dg.DagsterInstance
    parent: dg.DagsterRun
    succeeded_before_kill: frozenset[str]
    slot_held_after_kill: bool
    resume: subprocess.CompletedProcess[str]

    @property
    def catalog(self) -> Path:
        return self.root / "catalog"

    @property
    def state(self) -> StateDir:
        return StateDir(self.root / "state")

    @property
    def key(self) -> str:
        return self.parent.tags["dagster/partition"]

    def child(self) -> dg.DagsterRun:
        (run,) = self.instance.get_runs(filters=dg.RunsFilter(tags={"dagster/parent_run_id": self.parent.run_id}))
        return run

    def step_keys(self, run_id: str, event_type: dg.DagsterEventType) -> set[str]:
        return {e.step_key for e in self.instance.all_logs(run_id, of_type=event_type) if e.step_key}

    def findings_metadata(self) -> dict[str, object]:
        """Metadata of the latest `tile_findings` materialization of the scene."""
        (latest,) = self.instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey("tile_findings"), asset_partitions=[self.key]), limit=1
        ).records
        return {k: v.value for k, v in latest.asset_materialization.metadata.items()}

    def planned(self) -> list[str]:
        """Tile ids in grid (and batch) order."""
        return [str(t) for t in pd.read_parquet(self.catalog / "scenes" / self.key / "tiles.parquet")["tile_id"]]


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "tile_assets.cli", *args]


def cli_env(root: Path) -> dict[str, str]:
    """The CLI's environment: its own Dagster home, the repo importable (the test model), no project variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TILE_ASSETS_")}
    env["DAGSTER_HOME"] = str(root / "home")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    return env


def batch_index(step_key: str) -> int:
    """`tile_findings.infer_batch[b00003]` -> 3."""
    return int(step_key.split("[b")[1].rstrip("]"))


def infer_steps(instance: dg.DagsterInstance, run_id: str, event_type: dg.DagsterEventType) -> frozenset[str]:
    events = instance.all_logs(run_id, of_type=event_type)
    return frozenset(e.step_key for e in events if e.step_key and INFER in e.step_key)


def wait_and_kill(proc: subprocess.Popen[bytes], instance: dg.DagsterInstance) -> tuple[str, frozenset[str]]:
    """Once KILL_AFTER batches succeeded and the next one is running, SIGKILL the CLI's process group."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"tile-assets run exited ({proc.returncode}) before it could be killed")
        runs = instance.get_runs(filters=dg.RunsFilter(job_name="process_scene"))
        if runs:
            run_id = runs[0].run_id
            done = infer_steps(instance, run_id, dg.DagsterEventType.STEP_SUCCESS)
            started = infer_steps(instance, run_id, dg.DagsterEventType.STEP_START)
            if len(done) >= KILL_AFTER and started - done:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                return run_id, infer_steps(instance, run_id, dg.DagsterEventType.STEP_SUCCESS)
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    pytest.fail(f"no {KILL_AFTER} inference batches succeeded within {WAIT_S} s")


@pytest.fixture(scope="module")
def killed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Killed]:
    root = tmp_path_factory.mktemp("sigkill")
    (root / "inbox").mkdir()
    shutil.copy(NAIP, root / "inbox" / NAIP.name)
    (root / "home").mkdir()
    shutil.copy(PROJECT_INSTANCE_YAML, root / "home" / "dagster.yaml")
    params = json.dumps({"state_dir": str(root / "state"), "delay_s": DELAY_S})
    run_args = cli(
        "run", str(root / "inbox"), "--catalog", str(root / "catalog"),
        "--tile-size", str(TILE_SIZE), "--target-steps", str(BATCHES),
        "--model", FLAKY, "--model-params", params,
    )
    with (root / "run.log").open("wb") as log, dg.DagsterInstance.from_config(str(root / "home")) as instance:
        proc = subprocess.Popen(
            run_args, env=cli_env(root), cwd=root, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        run_id, done = wait_and_kill(proc, instance)
        parent = instance.get_run_by_id(run_id)
        assert parent is not None and parent.status == dg.DagsterRunStatus.STARTED
        instance.report_run_failed(parent)
        claimed = instance.event_log_storage.get_concurrency_info(INFERENCE_POOL).claimed_slots
        held = any(slot.run_id == run_id for slot in claimed)
        resume = subprocess.run(
            cli("resume", run_id), check=False, env=cli_env(root), cwd=root,
            capture_output=True, text=True, timeout=WAIT_S,
        )
        yield Killed(root, instance, instance.get_run_by_id(run_id) or parent, done, held, resume)


def test_the_kill_landed_mid_fan_out(killed: Killed) -> None:
    assert KILL_AFTER <= len(killed.succeeded_before_kill) < BATCHES
    assert killed.parent.status == dg.DagsterRunStatus.FAILURE
    started = killed.step_keys(killed.parent.run_id, dg.DagsterEventType.STEP_START)
    assert {s for s in started if INFER in s} - killed.succeeded_before_kill  # one batch was in flight
    assert "tile_findings.merge_findings" not in killed.step_keys(
        killed.parent.run_id, dg.DagsterEventType.STEP_START
    )


def test_resume_finishes_the_run_keeping_partition_and_tags(killed: Killed) -> None:
    assert killed.resume.returncode == 0, killed.resume.stdout + killed.resume.stderr
    child = killed.child()
    assert child.status == dg.DagsterRunStatus.SUCCESS
    assert child.root_run_id == killed.parent.run_id
    assert child.tags["dagster/partition"] == killed.key
    for tag in ("tile_assets/source", "tile_assets/version", "tile_assets/size", "tile_assets/trigger",
                "tile_assets/catalog", "tile_assets/inbox"):
        assert child.tags[tag] == killed.parent.tags[tag], tag
    assert child.tags["tile_assets/catalog"] == str(killed.catalog)


def test_resume_gives_back_the_pool_slot_the_killed_run_held(killed: Killed) -> None:
    claimed = killed.instance.event_log_storage.get_concurrency_info(INFERENCE_POOL).claimed_slots
    assert all(slot.run_id != killed.parent.run_id for slot in claimed)
    assert killed.slot_held_after_kill  # the kill did leak one: the step in flight never released it


def test_succeeded_batches_are_not_run_again_the_one_cut_off_is(killed: Killed) -> None:
    started = killed.step_keys(killed.child().run_id, dg.DagsterEventType.STEP_START)
    assert not started & killed.succeeded_before_kill
    parent_started = killed.step_keys(killed.parent.run_id, dg.DagsterEventType.STEP_START)
    cut_off = {s for s in parent_started if INFER in s} - killed.succeeded_before_kill
    assert cut_off and cut_off <= started
    assert {"source_images", "tiles", "tile_findings.plan_batches"}.isdisjoint(started)
    assert {"tile_findings.merge_findings", "scene_synthesis"} <= started


def test_batches_that_never_started_are_recovered_by_the_merge(killed: Killed) -> None:
    """Dagster's from-failure re-runs only steps the parent logged; the rest must not go missing."""
    planned = killed.planned()
    per_batch = math.ceil(len(planned) / BATCHES)
    started = killed.step_keys(killed.child().run_id, dg.DagsterEventType.STEP_START)
    stepped = {batch_index(s) for s in (started | killed.succeeded_before_kill) if INFER in s}
    expected = [t for i, t in enumerate(planned) if i // per_batch not in stepped]
    assert killed.findings_metadata()["tiles_inferred_in_merge"] == len(expected) > 0


def test_every_tile_is_in_the_findings_exactly_once(killed: Killed) -> None:
    scene = killed.catalog / "scenes" / killed.key
    planned = sorted(killed.planned())
    findings = gpd.read_parquet(scene / "findings.parquet")
    assert sorted(findings["tile_id"]) == planned  # one mark per tile: none missing, none twice
    results = pd.read_parquet(scene / "tile_results.parquet")
    assert sorted(results["tile_id"]) == planned
    assert (results["status"] == "ok").all()
    synthesis = json.loads((scene / "synthesis.json").read_text())
    assert (synthesis["status"], synthesis["tiles_ok"]) == ("complete", len(planned))


def test_only_the_batch_in_flight_was_inferred_twice(killed: Killed) -> None:
    planned = killed.planned()
    tiles, per_batch = len(planned), math.ceil(len(planned) / BATCHES)
    attempts = killed.state.attempts()
    assert sorted(attempts) == sorted(planned)
    for step in killed.succeeded_before_kill:
        index = batch_index(step)
        assert all(attempts[t] == 1 for t in planned[index * per_batch : (index + 1) * per_batch]), step
    repeated = [t for t, n in attempts.items() if n > 1]
    assert len(repeated) <= per_batch and max(attempts.values()) <= 2  # only the batch cut off by the kill
    metadata = killed.findings_metadata()
    # The killed run and its re-execution are one run group: all of its tiles were inferred by it.
    assert (metadata["tiles_inferred"], metadata["tiles_from_cache"]) == (tiles, 0)
