"""The `tile_inference` pool caps concurrent inference under the real multiprocess executor.

A real scene (20 tiles of 256 px, 4 batches) runs with `max_concurrent: 4`
steps and a model whose predict calls hold until another call runs beside
them (or a timeout): whenever the pool allows parallel inference, it shows.
With the pool at 1 no two calls ever overlap; with the project's dagster.yaml
(pool default 2) exactly two do. The same dagster.yaml carries the run-level
tag concurrency limits and run retries for crashed runs.
"""

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import yaml

from tile_assets.assets.findings import (
    INFERENCE_POOL,
    infer_batch,
    merge_findings,
    plan_batches,
)
from tile_assets.executors import FORKSERVER
from tile_assets_tests.fanout.conftest import REPO_ROOT, Lab, scene_run_config

PROJECT_INSTANCE = yaml.safe_load((REPO_ROOT / "dagster.yaml").read_text())
BATCHES = 4
MULTIPROCESS = {"multiprocess": {"max_concurrent": BATCHES, **FORKSERVER}}
"""Step processes fork from a server that imported Dagster and the project once (spawn re-imports per step)."""


@dataclass(frozen=True)
class PoolRun:
    success: bool
    calls: list[dict[str, Any]]
    infer_steps: set[str]


def max_overlap(calls: Sequence[dict[str, Any]]) -> int:
    """Most predict calls running at the same moment (an end and a start at one instant do not overlap)."""
    edges = sorted([(c["end"], -1) for c in calls] + [(c["start"], 1) for c in calls])
    running = peak = 0
    for _, step in edges:
        running += step
        peak = max(peak, running)
    return peak


def run_with_pool(root: Path, overrides: dict[str, Any], await_timeout_s: float) -> PoolRun:
    """On a fresh instance configured with `overrides`: tiles in process, then `tile_findings` multiprocess."""
    with dg.instance_for_test(overrides=overrides) as instance:
        lab = Lab(root, instance)
        key = lab.add_scene()
        params = {"state_dir": str(lab.state_path), "await_peers": 2, "await_timeout_s": await_timeout_s}
        upstream = lab.run(key, params, assets=["source_images", "tiles"], tile_size=256)
        assert upstream.success
        result = dg.execute_job(
            lab.recon_job(),
            instance,
            run_config=scene_run_config(params, tile_size=256, target_steps=BATCHES, executor=MULTIPROCESS),
            tags={"dagster/partition": key},
            asset_selection=[dg.AssetKey("tile_findings")],
            raise_on_error=False,
        )
        steps = {
            e.step_key
            for e in instance.all_logs(result.run_id, of_type=dg.DagsterEventType.STEP_SUCCESS)
            if e.step_key and ".infer_batch[" in e.step_key
        }
        return PoolRun(result.success, lab.state.calls(), steps)


@pytest.fixture(scope="module")
def pool_of_one(tmp_path_factory: pytest.TempPathFactory) -> PoolRun:
    # Calls wait 2 s for a peer that the pool must never let in.
    overrides = {"concurrency": {"pools": {"default_limit": 1}}}
    return run_with_pool(tmp_path_factory.mktemp("pool1"), overrides, await_timeout_s=2.0)


@pytest.fixture(scope="module")
def project_pool(tmp_path_factory: pytest.TempPathFactory) -> PoolRun:
    return run_with_pool(tmp_path_factory.mktemp("pool_project"), PROJECT_INSTANCE, await_timeout_s=15.0)


def test_max_overlap_counts_intervals() -> None:
    calls = [{"start": 0, "end": 2}, {"start": 1, "end": 3}, {"start": 3, "end": 4}, {"start": 1.5, "end": 1.6}]
    assert max_overlap(calls) == 3
    assert max_overlap([{"start": 0, "end": 1}, {"start": 1, "end": 2}]) == 1
    assert max_overlap([]) == 0


def test_only_inference_is_in_the_pool() -> None:
    assert infer_batch.pool == INFERENCE_POOL == "tile_inference"
    assert plan_batches.pool is None and merge_findings.pool is None


def test_a_pool_of_one_runs_one_inference_at_a_time(pool_of_one: PoolRun) -> None:
    assert pool_of_one.success
    assert len(pool_of_one.infer_steps) == BATCHES
    assert len(pool_of_one.calls) == BATCHES
    assert max_overlap(pool_of_one.calls) == 1


def test_the_project_pool_runs_exactly_two_inferences_at_once(project_pool: PoolRun) -> None:
    assert project_pool.success
    assert len(project_pool.infer_steps) == BATCHES
    assert max_overlap(project_pool.calls) == PROJECT_INSTANCE["concurrency"]["pools"]["default_limit"] == 2


@pytest.fixture(scope="module")
def project_instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test(overrides=PROJECT_INSTANCE) as instance:
        yield instance


def test_project_instance_limits_runs_by_size_tag_and_retries_crashed_runs(
    project_instance: dg.DagsterInstance,
) -> None:
    config = project_instance.get_concurrency_config()
    assert config.pool_config.default_pool_limit == 2
    assert config.run_queue_config is not None
    limits = {(t["key"], t["value"]): t["limit"] for t in config.run_queue_config.tag_concurrency_limits}
    assert limits == {("tile_assets/size", "huge"): 1, ("tile_assets/size", "large"): 2}
    assert project_instance.run_retries_enabled
    assert project_instance.run_retries_max_retries >= 1
    # Crashed runs (lost process), not op failures, are what run retries are for.
    assert not project_instance.run_retries_retry_on_asset_or_op_failure
    # Pool slots held by a run that died are freed by the monitoring daemon.
    assert project_instance.run_monitoring_settings["free_slots_after_run_end_seconds"] > 0
