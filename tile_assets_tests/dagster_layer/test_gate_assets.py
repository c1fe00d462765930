"""The content gate inside `source_images`: rejected scenes cost nothing and are listed as rejected.

Real `process_scene` and `refresh_catalog` runs on a temporary instance over
copies of the sample images; the tile model is the classical model wrapped
to count the tiles it is asked about, and Rekognition is botocore's Stubber.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import boto3
import dagster as dg
import geopandas as gpd
import pytest
from botocore.stub import ANY, Stubber
from PIL import Image

from tile_assets.cli import SceneOutcome, outcome_of, print_summary
from tile_assets.core.gate.blocklist import blocklist_entries
from tile_assets.core.gate.rendition import read_rendition
from tile_assets.core.image import TileImage
from tile_assets.core.inbox import SceneChange
from tile_assets.core.keys import scene_key
from tile_assets.core.models.base import TilePrediction
from tile_assets.core.models.classical import ClassicalModel
from tile_assets.core.registry import register_scene
from tile_assets.core.store import LocalStore
from tile_assets.definitions import build_definitions
from tile_assets.jobs import process_scene, refresh_catalog
from tile_assets.partitions import scenes
from tile_assets.resources import GateResource, ImageryStore, TileModelResource
from tile_assets.schedules import retry_incomplete_scenes
from tile_assets.settings import Settings

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
INBOX = REPO / "data" / "inbox"
DENIED = REPO / "data" / "policy" / "example_denied_areas.geojson"
COUNTING_MODEL = f"{__name__}:CountingModel"
STORE = LocalStore()


class CountingModel:
    """The classical model, counting every tile it is asked about (steps run in this process)."""

    tiles_seen: ClassVar[int] = 0
    name = "counting-classical"
    version = "1"

    def __init__(self) -> None:
        self._inner = ClassicalModel()

    def params(self) -> dict[str, Any]:
        return {}

    def predict(self, tiles: Sequence[TileImage]) -> list[TilePrediction]:
        CountingModel.tiles_seen += len(tiles)
        return self._inner.predict(tiles)


class StubbedRekognitionGate(GateResource):
    """The gate with its Rekognition client swapped for a stubbed one."""

    def rekognition_client(self, region: str | None) -> Any:
        return REKOGNITION.client


@dataclass
class Rekognition:
    client: Any = None


REKOGNITION = Rekognition()


@dataclass
class Pipeline:
    """A temp inbox and catalog, an instance, and the project's definitions over them."""

    inbox: Path
    catalog: Path
    instance: dg.DagsterInstance

    @property
    def base(self) -> dg.Definitions:
        return build_definitions(Settings(inbox=str(self.inbox), catalog=str(self.catalog)))

    @property
    def imagery(self) -> ImageryStore:
        imagery = self.base.resources["imagery"]
        assert isinstance(imagery, ImageryStore)
        return imagery

    def definitions(self, gate: GateResource) -> dg.Definitions:
        """The project's definitions with this gate and the counting model."""
        base = self.base
        resources = {
            **base.resources,
            "gate": gate,
            "tile_model": TileModelResource(name=COUNTING_MODEL),
        }
        return dg.Definitions(
            assets=base.assets,
            asset_checks=base.asset_checks,
            jobs=base.jobs,
            schedules=base.schedules,
            resources=resources,
        )

    def add(self, image: Path) -> str:
        """Copy an image into the inbox and register it as a scene partition; its key."""
        target = self.inbox / image.name
        if image != target:
            shutil.copyfile(image, target)
        obj = STORE.head(str(target))
        key = scene_key(obj.uri)
        register_scene(STORE, str(self.catalog), key, obj)
        self.instance.add_dynamic_partitions(scenes.name, [key])
        return key

    def run(self, gate: GateResource, key: str, **kwargs: Any) -> dg.ExecuteInProcessResult:
        job = self.definitions(gate).resolve_job_def(process_scene.name)
        return job.execute_in_process(
            instance=self.instance, partition_key=key, raise_on_error=False, **kwargs
        )

    def status(self, key: str) -> dict[str, Any]:
        return json.loads((self.catalog / "scenes" / key / "status.json").read_text())

    def scene_files(self, key: str) -> set[str]:
        folder = self.catalog / "scenes" / key
        return {p.name for p in folder.iterdir()} if folder.exists() else set()

    def cache_files(self) -> list[Path]:
        cache = self.catalog / "cache"
        return [p for p in cache.rglob("*") if p.is_file()] if cache.exists() else []


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    root = tmp_path_factory.mktemp("gate")
    (root / "inbox").mkdir()
    with dg.instance_for_test() as instance:
        yield Pipeline(root / "inbox", root / "catalog", instance)


@pytest.fixture(scope="module")
def denying_gate() -> GateResource:
    return GateResource(area_policy_path=str(DENIED))


@pytest.fixture(scope="module")
def colorado(
    pipeline: Pipeline, denying_gate: GateResource
) -> tuple[str, dg.ExecuteInProcessResult]:
    """The Colorado aerial scene, inside the example denied area, run once through process_scene."""
    key = pipeline.add(INBOX / "colorado_aerial_cl1.tif")
    seen = CountingModel.tiles_seen
    result = pipeline.run(denying_gate, key)
    assert CountingModel.tiles_seen == seen, "a rejected scene costs no tile inference"
    return key, result


@pytest.fixture(scope="module")
def tenth(pipeline: Pipeline, denying_gate: GateResource) -> tuple[str, dg.ExecuteInProcessResult]:
    """A scene outside the denied area, run through process_scene under the same gate."""
    key = pipeline.add(INBOX / "rgb-byte-tenth.tif")
    seen = CountingModel.tiles_seen
    result = pipeline.run(denying_gate, key)
    assert CountingModel.tiles_seen > seen, "the same gate lets this scene reach the model"
    return key, result


def step_keys(result: dg.ExecuteInProcessResult) -> set[str]:
    return {e.step_key for e in result.all_events if e.step_key}


def failure_metadata(result: dg.ExecuteInProcessResult) -> dict[str, Any]:
    failures = [e for e in result.all_events if e.is_step_failure]
    assert len(failures) == 1
    data = failures[0].step_failure_data.user_failure_data
    assert data is not None
    return {k: v.value for k, v in data.metadata.items()}


def test_a_rejected_scene_plans_no_tiles_and_calls_no_model(
    pipeline: Pipeline, colorado: tuple[str, dg.ExecuteInProcessResult], denying_gate: GateResource
) -> None:
    key, result = colorado
    assert not result.success
    assert step_keys(result) == {"source_images"}, "tiles and the inference fan-out never ran"
    assert pipeline.scene_files(key) == {"status.json"}
    assert pipeline.cache_files() == []
    status = pipeline.status(key)
    reason = "footprint intersects denied area 'Colorado Springs example restricted zone'"
    assert status["status"] == "rejected" and status["check"] == "area_policy"
    assert status["reasons"] == [reason]
    assert status["reason"] == f"rejected by area_policy: {reason}"
    assert status["error_type"] == "RejectedSceneError"
    assert status["policy"] == denying_gate.fingerprint(pipeline.imagery)
    metadata = failure_metadata(result)
    assert metadata["check"] == "area_policy" and metadata["reasons"] == [reason]


def test_the_rejection_shows_on_the_asset_partition(
    pipeline: Pipeline, colorado: tuple[str, dg.ExecuteInProcessResult]
) -> None:
    key, _ = colorado
    records = pipeline.instance.fetch_observations(dg.AssetKey("source_images"), limit=100).records
    mine = [
        r.asset_observation
        for r in records
        if r.asset_observation and r.asset_observation.partition == key
    ]
    assert len(mine) == 1
    metadata = {k: v.value for k, v in mine[0].metadata.items()}
    assert metadata["gate_status"] == "rejected"
    assert metadata["gate_check"] == "area_policy"
    assert "Colorado Springs" in metadata["gate_reasons"]
    outcomes = metadata["gate"]["outcomes"]
    assert [(o["name"], o["passed"]) for o in outcomes] == [
        ("validation", True),
        ("area_policy", False),
    ]


def test_an_accepted_scene_runs_through_and_says_so(
    pipeline: Pipeline, tenth: tuple[str, dg.ExecuteInProcessResult], denying_gate: GateResource
) -> None:
    key, result = tenth
    assert result.success
    assert "tiles" in step_keys(result)
    assert pipeline.status(key)["status"] == "complete"
    materialization = pipeline.instance.fetch_materializations(
        dg.AssetKey("source_images"), limit=100
    ).records
    mine = [
        r.asset_materialization for r in materialization if r.asset_materialization.partition == key
    ]
    metadata = {k: v.value for k, v in mine[-1].metadata.items()}
    assert metadata["gate_status"] == "passed" and metadata["gate_check"] == ""
    assert metadata["gate_policy"] == denying_gate.fingerprint(pipeline.imagery)


def test_the_catalog_lists_the_rejected_scene_with_its_reason(
    pipeline: Pipeline,
    colorado: tuple[str, dg.ExecuteInProcessResult],
    tenth: tuple[str, dg.ExecuteInProcessResult],
    denying_gate: GateResource,
) -> None:
    job = pipeline.definitions(denying_gate).resolve_job_def(refresh_catalog.name)
    assert job.execute_in_process(instance=pipeline.instance).success
    table = gpd.read_parquet(pipeline.catalog / "scenes.parquet").set_index("id")
    rejected = table.loc[colorado[0]]
    assert rejected["status"] == "rejected"
    assert rejected["description"].startswith("rejected by area_policy: footprint intersects")
    collection = json.loads((pipeline.catalog / "collection.json").read_text())
    items = [link["href"] for link in collection["links"] if link["rel"] == "item"]
    assert any(tenth[0] in href for href in items)
    assert not any(colorado[0] in href for href in items)


def test_the_cli_summary_says_rejected_by_which_check(
    pipeline: Pipeline,
    colorado: tuple[str, dg.ExecuteInProcessResult],
    capsys: pytest.CaptureFixture[str],
) -> None:
    key, result = colorado
    obj = STORE.head(str(pipeline.inbox / "colorado_aerial_cl1.tif"))
    outcome = outcome_of(pipeline.imagery, SceneChange(key, obj, obj.etag, True), result)
    assert outcome.rejected and not outcome.success
    assert outcome.reason.startswith("rejected by area_policy: footprint intersects denied area")
    print_summary(
        [outcome, SceneOutcome("other", "x", "run", True, 1, 2, 1.0)], str(pipeline.catalog)
    )
    assert "rejected by" in capsys.readouterr().out


def test_rejections_are_retried_only_when_the_policy_changes(
    pipeline: Pipeline,
    colorado: tuple[str, dg.ExecuteInProcessResult],
    tenth: tuple[str, dg.ExecuteInProcessResult],
    denying_gate: GateResource,
    tmp_path: Path,
) -> None:
    key = colorado[0]

    def evaluate(gate: GateResource) -> list[dg.RunRequest]:
        with dg.build_schedule_context(
            instance=pipeline.instance,
            resources={"imagery": pipeline.imagery, "gate": gate},
            scheduled_execution_time=dt.datetime.now(dt.UTC),
        ) as context:
            result = retry_incomplete_scenes(context)
        return [] if isinstance(result, dg.SkipReason) else list(result)

    assert [r.partition_key for r in evaluate(denying_gate)] == []
    edited = tmp_path / "denied.geojson"
    edited.write_text(DENIED.read_text().replace("-104.90", "-104.95"))
    requests = evaluate(GateResource(area_policy_path=str(edited)))
    assert [r.partition_key for r in requests] == [key]
    assert requests[0].tags["tile_assets/trigger"] == "retry"


def test_a_scene_rejected_before_is_pending_again_once_the_policy_lets_it_pass(
    pipeline: Pipeline, colorado: tuple[str, dg.ExecuteInProcessResult]
) -> None:
    key = colorado[0]
    assert pipeline.status(key)["status"] == "rejected"
    result = pipeline.run(GateResource(), key, asset_selection=[dg.AssetKey("source_images")])
    assert result.success
    assert pipeline.status(key)["status"] == "pending", "no longer listed as rejected"
    assert "source.json" in pipeline.scene_files(key)


def test_an_unreadable_image_is_rejected_by_validation(pipeline: Pipeline, tmp_path: Path) -> None:
    fake = tmp_path / "notes.tif"
    fake.write_text("not an image")
    key = pipeline.add(fake)
    result = pipeline.run(GateResource(), key)
    assert step_keys(result) == {"source_images"}
    status = pipeline.status(key)
    assert (status["status"], status["check"], status["policy"]) == ("rejected", "validation", "")
    assert status["reason"] == "rejected by validation: not a recognized image format"


def test_a_reencoded_copy_of_a_blocklisted_image_is_rejected(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    blocklist = tmp_path / "blocklist.txt"
    blocklist.write_text("\n".join(blocklist_entries(str(INBOX / "astronaut.png"))) + "\n")
    copy = tmp_path / "astronaut-copy.jpg"
    Image.fromarray(read_rendition(STORE, str(INBOX / "astronaut.png"), 100_000)).save(
        copy, quality=45
    )
    key = pipeline.add(copy)
    seen = CountingModel.tiles_seen
    result = pipeline.run(GateResource(blocklist_path=str(blocklist)), key)
    assert step_keys(result) == {"source_images"} and CountingModel.tiles_seen == seen
    status = pipeline.status(key)
    assert status["status"] == "rejected" and status["check"] == "blocklist"
    assert status["reasons"][0].startswith("perceptual hash ")


@pytest.fixture
def rekognition() -> Iterator[Stubber]:
    client = boto3.client(
        "rekognition", region_name="us-east-1", aws_access_key_id="t", aws_secret_access_key="t"
    )
    with Stubber(client) as stub:
        REKOGNITION.client = client
        yield stub
        stub.assert_no_pending_responses()
    REKOGNITION.client = None


def test_moderation_rejects_and_accepts_through_the_asset(
    pipeline: Pipeline, rekognition: Stubber
) -> None:
    gate = StubbedRekognitionGate(moderation=True, moderation_reject_labels=["Violence"])
    expected = {"Image": {"Bytes": ANY}, "MinConfidence": 80.0}
    rekognition.add_response(
        "detect_moderation_labels",
        {"ModerationLabels": [{"Name": "Violence", "ParentName": "", "Confidence": 93.0}]},
        expected,
    )
    rejected = pipeline.add(INBOX / "no_geo_photo.jpg")
    result = pipeline.run(gate, rejected)
    assert step_keys(result) == {"source_images"}
    status = pipeline.status(rejected)
    assert (status["status"], status["check"], status["reasons"]) == (
        "rejected",
        "moderation",
        ["Violence (93.0%)"],
    )
    rekognition.add_response("detect_moderation_labels", {"ModerationLabels": []}, expected)
    accepted = pipeline.add(INBOX / "page_text.png")
    only_source = pipeline.run(gate, accepted, asset_selection=[dg.AssetKey("source_images")])
    assert only_source.success
    metadata = only_source.asset_materializations_for_node("source_images")[0].metadata
    assert metadata["gate_status"].value == "passed"
    assert [o["name"] for o in metadata["gate"].value["outcomes"]] == ["validation", "moderation"]


def test_throttled_moderation_fails_the_run_without_rejecting(
    pipeline: Pipeline, rekognition: Stubber
) -> None:
    rekognition.add_client_error(
        "detect_moderation_labels", service_error_code="ThrottlingException", http_status_code=400
    )
    key = pipeline.add(INBOX / "389225main_sw_1965_1024.jpg")
    result = pipeline.run(StubbedRekognitionGate(moderation=True), key)
    assert not result.success
    assert "status.json" not in pipeline.scene_files(key), (
        "transient: neither rejected nor failed for good"
    )


def test_a_broken_policy_file_fails_the_scene_rather_than_rejecting_it(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    broken = tmp_path / "areas.geojson"
    broken.write_text("{not json")
    key = pipeline.add(INBOX / "naip_2018.tif")
    result = pipeline.run(GateResource(area_policy_path=str(broken)), key)
    assert not result.success
    status = pipeline.status(key)
    assert (status["status"], status["error_type"]) == ("failed", "PolicyError")


def test_the_default_gate_needs_no_cloud(pipeline: Pipeline) -> None:
    gate = pipeline.base.resources["gate"]
    assert isinstance(gate, GateResource)
    assert gate.load(pipeline.imagery).checks == ()
    dg.Definitions.validate_loadable(pipeline.base)
