"""The benchmarks' measured sides still run against today's code, on a small scene.

Benchmarks are not part of the suite (they take minutes and print ratios), so
an API change once broke `bench_pipeline` unnoticed until the next benchmark
run. Each side here runs as the benchmarks run it (`run_side`: a fresh
interpreter from the repo root) on the NAIP sample (934 x 724), and what it
reports is checked for sense, not for speed.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from bench.bench_fanout import model_config
from bench.bench_memory import processes, split_of
from bench.harness import run_side
from bench.scenes import SOURCE
from tile_assets.core.grid import plan_grid
from tile_assets.core.types import GridSpec

TILES = len(plan_grid(934, 724, GridSpec(512, 0.2)))
"""512 px tiles with 20 % overlap, as the pipeline and read benchmarks cut their scenes."""


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("bench") / "naip.tif"
    shutil.copy(SOURCE, path)
    return path


def test_pipeline_and_loop_sides_report_the_same_tiles_and_each_process(scene: Path, tmp_path: Path) -> None:
    pipeline = run_side("bench.bench_pipeline", ["pipeline", str(scene), str(tmp_path / "work")])
    loop = run_side("bench.bench_pipeline", ["loop", str(scene)])
    assert pipeline["tiles"] == loop["tiles"] == TILES
    assert pipeline["findings"] > 0 and loop["findings"] > 0
    assert pipeline["decoded"] == 934 * 724 * 4
    steps = {name.split("[")[0] for name, _ in processes(pipeline)}
    assert {"source_images", "tiles", "tile_findings.infer_batch", "tile_findings.merge_findings", "run process"} <= steps
    assert all(growth >= 0 for _, growth in processes(pipeline))
    assert "MB anonymous" in split_of(pipeline, "tile_findings.infer_batch[b00000]")


def test_fanout_sides_rerun_only_the_failed_tile(scene: Path, tmp_path: Path) -> None:
    plain = run_side("bench.bench_fanout", ["plain", str(scene), "256"])
    work = str(tmp_path / "fanout")

    def pipeline(fail: list[str]) -> dict:
        args = [str(scene), work, "in_process", "256", "{}", json.dumps(model_config(fail, 0.0))]
        return run_side("bench.bench_fanout", ["pipeline", *args])

    first = pipeline(["r000c001"])
    assert first["tiles"] == plain["tiles"] == plain["findings"]
    assert (first["tiles_failed"], first["tiles_inferred"]) == (1, plain["tiles"] - 1)
    assert 0 < first["fanout_seconds"] < first["seconds"]
    rerun = pipeline([])
    assert (rerun["tiles_inferred"], rerun["tiles_from_cache"], rerun["tiles_failed"]) == (1, plain["tiles"] - 1, 0)


def test_read_sides_read_every_window(scene: Path) -> None:
    ours = run_side("bench.bench_read", ["ours", str(scene)])
    plain = run_side("bench.bench_read", ["plain", str(scene), "masked"])
    assert ours["tiles"] == plain["tiles"] == TILES


def test_plain_loop_side_predicts_every_tile_and_reports_its_growth(scene: Path) -> None:
    loop = run_side("bench.bench_memory", ["plain_loop", str(scene)])
    assert loop["tiles"] == TILES
    assert loop["findings"] > 0
    assert 0 <= loop["growth"] < 200 * 2**20
