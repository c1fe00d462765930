"""Faults in the fan-out: transient tiles are retried with backoff, permanent ones become failure rows.

One real scene (63 tiles of 128 px in 4 batches) runs with a model that fails
two tiles permanently and two others transiently (twice, once). The run must
succeed, retry only the batches with transient tiles, record the permanent
failures as rows while their batches go on, fail the coverage check, and
still synthesize the scene naming the failed tiles. After the fix, a rerun
infers only those two tiles.
"""

from dataclasses import dataclass
from typing import Any

import dagster as dg
import geopandas as gpd
import pandas as pd
import pytest

from tile_assets.assets.findings import MAX_RETRIES
from tile_assets.checks import COVERAGE_THRESHOLD
from tile_assets_tests.fanout.conftest import (
    Lab,
    check_results,
    findings_metadata,
    inference_steps,
)
from tile_assets_tests.fanout.faulty_models import MARK_LABEL

PERMANENT = ("r000c002", "r004c004")
TRANSIENT = {"r002c003": 2, "r004c006": 1}
"""Tile -> attempts that fail transiently before it succeeds (fewer than MAX_RETRIES)."""
BATCH_OF = {"r000c002": "b00000", "r002c003": "b00001", "r004c004": "b00002", "r004c006": "b00002"}
"""63 tiles in read order (9 columns of 7), 16 per batch: where each faulty tile falls."""
TILES = 63


@dataclass(frozen=True)
class Outputs:
    """What a run left in the catalog, read right after it (the next run overwrites the files)."""

    tile_results: pd.DataFrame
    findings: gpd.GeoDataFrame
    synthesis: dict[str, Any]
    attempts: dict[str, int]

    @classmethod
    def read(cls, lab: Lab, key: str) -> "Outputs":
        return cls(
            lab.tile_results(key), lab.findings(key), lab.json(key, "synthesis.json"), lab.state.attempts()
        )


@dataclass(frozen=True)
class Runs:
    key: str
    faulty: dg.ExecuteInProcessResult
    fixed: dg.ExecuteInProcessResult
    after_faulty: Outputs
    after_fixed: Outputs


@pytest.fixture(scope="module")
def runs(lab: Lab) -> Runs:
    """The faulty run, then the same scene rerun once the permanent faults are fixed."""
    key = lab.add_scene()
    state = str(lab.state_path)
    faulty = lab.run(
        key, {"state_dir": state, "fail_tiles": list(PERMANENT), "transient_tiles": TRANSIENT}
    )
    after_faulty = Outputs.read(lab, key)
    fixed = lab.run(key, {"state_dir": state})
    return Runs(key, faulty, fixed, after_faulty, Outputs.read(lab, key))


def retry_waits(result: dg.ExecuteInProcessResult) -> dict[str, list[float]]:
    """Seconds each step was told to wait before each retry, by step key."""
    waits: dict[str, list[float]] = {}
    for event in result.all_events:
        if event.event_type == dg.DagsterEventType.STEP_UP_FOR_RETRY:
            waits.setdefault(event.step_key, []).append(event.event_specific_data.seconds_to_wait)
    return waits


def test_faulty_tiles_sit_in_the_batches_the_test_expects(lab: Lab, runs: Runs) -> None:
    assert len(lab.manifest_ids(runs.key)) == TILES
    batches = lab.batches(runs.key)
    assert [len(b) for b in batches.values()] == [16, 16, 16, 15]
    for tile_id, batch in BATCH_OF.items():
        assert tile_id in batches[batch]


def test_transient_tiles_are_retried_with_backoff_and_succeed(lab: Lab, runs: Runs) -> None:
    assert runs.faulty.success
    waits = retry_waits(runs.faulty)
    # Only the batches holding transient tiles were retried, once per transient failure.
    assert {step: len(w) for step, w in waits.items()} == {
        "tile_findings.infer_batch[b00001]": 2,
        "tile_findings.infer_batch[b00002]": 1,
    }
    # Exponential backoff with +-1 s jitter: (2**n - 1) s +- 1 s before retry n.
    first, second = waits["tile_findings.infer_batch[b00001]"]
    assert 0.0 <= first <= 2.0 <= second <= 4.0
    for tile_id, failures in TRANSIENT.items():
        assert failures < MAX_RETRIES
        assert runs.after_faulty.attempts[tile_id] == failures + 1
    results = runs.after_faulty.tile_results
    assert (results.loc[list(TRANSIENT), "status"] == "ok").all()


def test_a_batch_without_faults_runs_each_tile_once(lab: Lab, runs: Runs) -> None:
    clean = lab.batches(runs.key)["b00003"]
    assert not set(clean) & (set(PERMANENT) | set(TRANSIENT))
    assert all(runs.after_faulty.attempts[t] == 1 for t in clean)


def test_permanent_failures_become_rows_and_their_batch_goes_on(runs: Runs) -> None:
    results = runs.after_faulty.tile_results
    assert len(results) == TILES and results.index.is_unique
    failed = results[results["status"] == "failed"]
    assert sorted(failed.index) == sorted(PERMANENT)
    assert set(failed["error_type"]) == {"ModelError"}
    assert all("injected permanent fault" in m for m in failed["error_message"])
    # Every other tile of the batches holding a permanent failure succeeded.
    ok = results[results["status"] == "ok"]
    assert len(ok) == TILES - len(PERMANENT)
    assert (ok["error_type"] == "").all()
    # One mark per succeeded tile, none for a failed one, none merged away.
    findings = runs.after_faulty.findings
    assert sorted(findings["tile_id"]) == sorted(ok.index)
    assert set(findings["label"]) == {MARK_LABEL}


def test_metadata_counts_this_runs_inference_and_its_failures(runs: Runs) -> None:
    meta = findings_metadata(runs.faulty)
    assert meta["tiles_failed"] == len(PERMANENT)
    # Tiles done in a failed attempt and taken from the cache on retry are this run's work.
    assert (meta["tiles_inferred"], meta["tiles_from_cache"]) == (TILES - len(PERMANENT), 0)
    assert meta["coverage"] == pytest.approx((TILES - len(PERMANENT)) / TILES, abs=1e-4)


def test_coverage_check_fails_and_synthesis_still_lists_the_failures(lab: Lab, runs: Runs) -> None:
    checks = check_results(runs.faulty)
    assert not checks["tile_coverage"].passed
    assert checks["tile_coverage"].metadata["tiles_failed"].value == len(PERMANENT)
    assert checks["tile_coverage"].metadata["threshold"].value == COVERAGE_THRESHOLD
    assert checks["findings_schema"].passed
    assert runs.faulty.asset_materializations_for_node("scene_synthesis")
    synthesis = runs.after_faulty.synthesis
    assert synthesis["status"] == "partial"
    assert synthesis["tiles_failed"] == len(PERMANENT)
    assert {(f["tile_id"], f["error_type"]) for f in synthesis["failed_tiles"]} == {
        (t, "ModelError") for t in PERMANENT
    }
    assert all(t in synthesis["description"] for t in PERMANENT)
    assert lab.scene_file(runs.key, "item.json").exists()
    assert lab.scene_file(runs.key, "preview.png").exists()


def test_after_the_fix_a_rerun_infers_only_the_failed_tiles(lab: Lab, runs: Runs) -> None:
    assert runs.fixed.success
    meta = findings_metadata(runs.fixed)
    assert (meta["tiles_inferred"], meta["tiles_from_cache"], meta["tiles_failed"]) == (
        len(PERMANENT), TILES - len(PERMANENT), 0,
    )
    # The model saw exactly the two failed tiles again, each once.
    before, after = runs.after_faulty.attempts, runs.after_fixed.attempts
    assert {t: after[t] - before[t] for t in after if after[t] != before[t]} == {t: 1 for t in PERMANENT}
    assert not retry_waits(runs.fixed)
    # Only the two failed tiles are batched (about 4 steps asked for: one tile each); the rest need no step.
    assert len(inference_steps(runs.fixed)) == len(PERMANENT)
    results = runs.after_fixed.tile_results
    assert (results["status"] == "ok").all()
    assert sorted(results.index[~results["from_cache"]]) == sorted(PERMANENT)
    assert sorted(runs.after_fixed.findings["tile_id"]) == sorted(lab.manifest_ids(runs.key))
    assert check_results(runs.fixed)["tile_coverage"].passed
    assert runs.after_fixed.synthesis["status"] == "complete"


def test_each_batch_reports_per_tile_progress_in_the_run_log(lab: Lab, runs: Runs) -> None:
    progress: dict[str, list[str]] = {}
    for entry in lab.instance.all_logs(runs.faulty.run_id):
        if entry.step_key and "tiles done" in entry.user_message:
            progress.setdefault(entry.step_key, []).append(entry.user_message)
    assert len(progress) == TILES // 16 + 1  # every batch step
    b0 = progress["tile_findings.infer_batch[b00000]"]
    assert b0 == ["batch b00000: 16/16 tiles done, 1 failed"]  # one chunk of 16: one line
