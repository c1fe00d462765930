"""Shared set-up of the fan-out tests: a real scene in a fresh inbox and catalog, runs of `process_scene`."""

import json
import shutil
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import geopandas as gpd
import pandas as pd
import pytest

from tile_assets.core.batches import plan_scene_batches
from tile_assets.core.keys import scene_key
from tile_assets.core.registry import register_scene
from tile_assets.core.store import open_store
from tile_assets.core.tiling import manifest_windows
from tile_assets.core.types import SceneInfo
from tile_assets.definitions import build_definitions
from tile_assets.jobs import process_scene
from tile_assets.settings import Settings
from tile_assets_tests.fanout.faulty_models import StateDir

REPO_ROOT = Path(__file__).resolve().parents[2]
NAIP = REPO_ROOT / "data" / "inbox" / "naip_2018.tif"
"""934 x 724, 4 bands, 512-px internal tiles: 63 tiles of 128 px at 20 % overlap."""
FLAKY = "tile_assets_tests.fanout.faulty_models:FlakyModel"
FLAKY_V2 = "tile_assets_tests.fanout.faulty_models:FlakyModelV2"
TILE_SIZE = 128


def scene_run_config(
    model_params: Mapping[str, Any],
    *,
    model: str = FLAKY,
    tile_size: int = TILE_SIZE,
    target_steps: int = 4,
    executor: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run config of `process_scene`: tiling, batching, the tile model and the executor (in process by default)."""
    return {
        "execution": {"config": executor or {"in_process": {}}},
        "ops": {
            "tiles": {"config": {"tile_size": tile_size, "overlap": 0.2}},
            "tile_findings": {"ops": {"plan_batches": {"config": {"target_steps": target_steps}}}},
        },
        "resources": {"tile_model": {"config": {"name": model, "params_json": json.dumps(dict(model_params))}}},
    }


def lab_scene_job(inbox: str, catalog: str) -> dg.JobDefinition:
    """`process_scene` over this inbox and catalog; rebuilt by name in every step process."""
    return build_definitions(Settings(inbox=inbox, catalog=catalog)).resolve_job_def(process_scene.name)


@dataclass
class Lab:
    """An inbox, a catalog and a Dagster instance of one test module, all under a temp dir."""

    root: Path
    instance: dg.DagsterInstance

    @property
    def inbox(self) -> Path:
        return self.root / "inbox"

    @property
    def catalog(self) -> Path:
        return self.root / "catalog"

    @property
    def state(self) -> StateDir:
        """Attempts and predict calls recorded by FlakyModel runs with `state_dir=self.state_path`."""
        return StateDir(self.state_path)

    @property
    def state_path(self) -> Path:
        return self.root / "state"

    @property
    def settings(self) -> Settings:
        return Settings(inbox=str(self.inbox), catalog=str(self.catalog))

    def add_scene(self, image: Path = NAIP) -> str:
        """Copy `image` into the inbox, register it and add its partition, as the CLI does."""
        self.inbox.mkdir(parents=True, exist_ok=True)
        target = self.inbox / image.name
        shutil.copy(image, target)
        obj = open_store(str(self.inbox)).head(str(target))
        key = scene_key(obj.uri)
        register_scene(open_store(str(self.catalog)), str(self.catalog), key, obj)
        self.instance.add_dynamic_partitions("scenes", [key])
        return key

    def recon_job(self) -> Any:  # dagster's ReconstructableJob, which it does not export
        """The job as other processes rebuild it (multiprocess executor, re-execution)."""
        return dg.build_reconstructable_job(
            __name__,
            lab_scene_job.__name__,
            reconstructable_args=(str(self.inbox), str(self.catalog)),
            # Dagster drops sys.path[0] (pytest's rootdir) when it imports the job module.
            reconstructor_working_directory=str(REPO_ROOT),
        )

    def run(
        self,
        key: str,
        model_params: Mapping[str, Any],
        assets: Sequence[str] | None = None,
        **config: Any,
    ) -> dg.ExecuteInProcessResult:
        """One `process_scene` run of partition `key` (only `assets` if given), in process."""
        return lab_scene_job(str(self.inbox), str(self.catalog)).execute_in_process(
            run_config=scene_run_config(model_params, **config),
            instance=self.instance,
            partition_key=key,
            asset_selection=[dg.AssetKey(a) for a in assets] if assets else None,
            raise_on_error=False,
        )

    def scene_file(self, key: str, name: str) -> Path:
        return self.catalog / "scenes" / key / name

    def tile_results(self, key: str) -> pd.DataFrame:
        return pd.read_parquet(self.scene_file(key, "tile_results.parquet")).set_index("tile_id")

    def findings(self, key: str) -> gpd.GeoDataFrame:
        return gpd.read_parquet(self.scene_file(key, "findings.parquet"))

    def manifest_ids(self, key: str) -> list[str]:
        return [str(t) for t in pd.read_parquet(self.scene_file(key, "tiles.parquet"))["tile_id"]]

    def json(self, key: str, name: str) -> dict[str, Any]:
        return json.loads(self.scene_file(key, name).read_text())

    def batches(self, key: str, target_steps: int = 4) -> dict[str, list[str]]:
        """Batch id -> tile ids, as `plan_batches` cuts the whole scene."""
        scene = SceneInfo.from_dict(self.json(key, "source.json"))
        windows = manifest_windows(pd.read_parquet(self.scene_file(key, "tiles.parquet")))
        return {b.batch_id: [w.tile_id for w in b.windows] for b in plan_scene_batches(scene, windows, target_steps)}


def findings_metadata(result: dg.ExecuteInProcessResult) -> dict[str, Any]:
    """The `tile_findings` materialization's metadata values of a run."""
    (materialization,) = result.asset_materializations_for_node("tile_findings")
    return {name: value.value for name, value in materialization.metadata.items()}


def inference_steps(result: dg.ExecuteInProcessResult) -> set[str]:
    """The `infer_batch` steps a run started."""
    return {e.step_key for e in result.all_events if e.is_step_start and e.step_key and ".infer_batch[" in e.step_key}


def check_results(result: dg.ExecuteInProcessResult) -> dict[str, dg.AssetCheckEvaluation]:
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """A fresh lab (inbox, catalog, state dir, temporary instance) for one test module."""
    with dg.instance_for_test() as instance:
        yield Lab(tmp_path_factory.mktemp("fanout"), instance)
