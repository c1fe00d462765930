"""The one Definitions object loads, and wires every asset, check, job, sensor and schedule as designed."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from tile_assets.assets import GROUP
from tile_assets.assets.findings import INFERENCE_POOL
from tile_assets.jobs import process_scene, refresh_catalog
from tile_assets.partitions import scenes
from tile_assets_tests.dagster_layer.fixtures import definitions_for

CORE = Path(__file__).resolve().parent.parent.parent / "tile_assets" / "core"
ASSETS = (
    "source_images",
    "tiles",
    "tile_findings",
    "scene_synthesis",
    "imagery_catalog",
)
PER_SCENE = ASSETS[:-1]


@pytest.fixture(scope="module")
def defs(tmp_path_factory: pytest.TempPathFactory) -> dg.Definitions:
    root = tmp_path_factory.mktemp("defs")
    return definitions_for(root / "inbox", root / "catalog")


@pytest.fixture(scope="module")
def specs(defs: dg.Definitions) -> dict[str, dg.AssetSpec]:
    return {spec.key.to_user_string(): spec for spec in defs.resolve_all_asset_specs()}


def test_definitions_load(defs: dg.Definitions) -> None:
    dg.Definitions.validate_loadable(defs)


def test_workspace_entry_point_builds_from_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """`defs` (what workspace.yaml loads) reads TILE_ASSETS_* only when called, never at import."""
    from tile_assets.definitions import defs as workspace_defs

    monkeypatch.setenv("TILE_ASSETS_INBOX", str(tmp_path / "in"))
    monkeypatch.setenv("TILE_ASSETS_CATALOG", str(tmp_path / "cat"))
    loaded = workspace_defs()
    dg.Definitions.validate_loadable(loaded)
    imagery = loaded.resources["imagery"]
    assert imagery.inbox == str(tmp_path / "in")
    assert imagery.catalog == str(tmp_path / "cat")


def test_assets_grouped_described_and_kinded(specs: dict[str, dg.AssetSpec]) -> None:
    assert set(ASSETS) <= set(specs)
    for name, spec in specs.items():
        assert spec.group_name == GROUP == "imagery", name
        assert spec.kinds, name
        assert spec.description and len(spec.description) > 40, name
        assert spec.code_version, name


def test_partitions(specs: dict[str, dg.AssetSpec]) -> None:
    for name in PER_SCENE:
        assert specs[name].partitions_def == scenes, name
    assert specs["imagery_catalog"].partitions_def is None


def test_dependencies(specs: dict[str, dg.AssetSpec]) -> None:
    def deps(name: str) -> set[str]:
        return {d.asset_key.to_user_string() for d in specs[name].deps}

    assert deps("source_images") == set()
    assert deps("tiles") == {"source_images"}
    assert deps("tile_findings") == {"source_images", "tiles"}
    assert deps("scene_synthesis") == {"source_images", "tiles", "tile_findings"}
    assert deps("imagery_catalog") == {"scene_synthesis"}


def test_catalog_refreshes_by_automation(
    defs: dg.Definitions, specs: dict[str, dg.AssetSpec]
) -> None:
    assert specs["imagery_catalog"].automation_condition is not None
    automation = defs.resolve_sensor_def("catalog_automation")
    assert isinstance(automation, dg.AutomationConditionSensorDefinition)
    assert automation.default_status == dg.DefaultSensorStatus.RUNNING


def test_sensor_schedule_and_jobs(defs: dg.Definitions) -> None:
    sensor = defs.resolve_sensor_def("new_images_sensor")
    assert {job.name for job in sensor.jobs} == {
        process_scene.name,
        refresh_catalog.name,
    }
    schedule = defs.resolve_schedule_def("retry_incomplete_scenes")
    assert schedule.job_name == process_scene.name
    scene_job = defs.resolve_job_def(process_scene.name)
    assert scene_job.partitions_def == scenes
    assert defs.resolve_job_def(refresh_catalog.name).partitions_def is None


def test_asset_checks_on_tile_findings(defs: dg.Definitions) -> None:
    checks = defs.resolve_asset_graph().asset_check_keys
    assert checks >= {
        dg.AssetCheckKey(dg.AssetKey("tile_findings"), "tile_coverage"),
        dg.AssetCheckKey(dg.AssetKey("tile_findings"), "findings_schema"),
    }


def test_inference_fan_out_is_pooled_and_retried(defs: dg.Definitions) -> None:
    graph = defs.resolve_assets_def("tile_findings").node_def
    assert isinstance(graph, dg.GraphDefinition)
    ops = {op.name: op for op in graph.node_defs}
    assert set(ops) == {"plan_batches", "infer_batch", "merge_findings"}
    infer = ops["infer_batch"]
    assert isinstance(infer, dg.OpDefinition)
    assert infer.pool == INFERENCE_POOL == "tile_inference"
    assert infer.retry_policy is not None
    assert infer.retry_policy.max_retries >= 1
    assert infer.retry_policy.backoff == dg.Backoff.EXPONENTIAL


def test_resources(defs: dg.Definitions) -> None:
    assert {"imagery", "tile_model", "io_manager"} <= set(defs.resources)


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_core_never_imports_dagster() -> None:
    sources = sorted(CORE.rglob("*.py"))
    assert len(sources) > 10
    offenders = {
        str(path.relative_to(CORE)): sorted(
            m for m in _imported_modules(path) if m.split(".")[0].startswith("dagster")
        )
        for path in sources
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_processes_forked_after_import_freeze_the_heap_they_inherit() -> None:
    """Step processes a forkserver forks skip the full GC over the preloaded modules (tile_assets.executors)."""
    import gc
    import os

    import tile_assets.executors  # noqa: F401 - registers the fork hook

    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child reports its frozen object count and leaves at once
        os.write(write, str(gc.get_freeze_count()).encode())
        os._exit(0)
    os.close(write)
    frozen = int(os.read(read, 64))
    os.waitpid(pid, 0)
    assert frozen > 10_000


def test_loading_the_definitions_freezes_what_they_loaded() -> None:
    """A fresh interpreter: after the import, the collector's full passes walk only what came later."""
    script = (
        "import gc, json, tile_assets.definitions; "
        "print(json.dumps([gc.get_freeze_count(), len(gc.get_objects())]))"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    frozen, tracked = json.loads(out.stdout.strip().splitlines()[-1])
    assert frozen > 100_000  # Dagster, the libraries and the definitions
    assert tracked < frozen / 10


def test_loading_the_definitions_prints_no_warning() -> None:
    """The CLI and the web UI start without Dagster's preview warning for the per-partition checks,
    and the project calls no deprecated API (a warning would name one of its files)."""
    out = subprocess.run(
        [sys.executable, "-W", "always", "-c", "import tile_assets.definitions"],
        capture_output=True, text=True, check=True,
    )
    assert "PreviewWarning" not in out.stderr and "tile_assets/" not in out.stderr, out.stderr
