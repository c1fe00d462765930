"""Incremental reruns: the tile cache is keyed by (source fingerprint, window, model name + version + params).

One real scene is run six times on one instance and catalog: unchanged it
comes entirely from the cache; new params or a new model version infer every
tile again (and going back finds the old entries); a changed image infers
every tile again, gets a new data version, and leaves the downstream
materializations pointing at the old one, which is how the UI marks them stale.
"""

from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pytest
import rasterio

from tile_assets.assets import CODE_VERSION
from tile_assets.definitions import build_definitions
from tile_assets.jobs import process_scene
from tile_assets_tests.fanout.conftest import (
    FLAKY_V2,
    REPO_ROOT,
    Lab,
    findings_metadata,
    inference_steps,
)

SCENE = REPO_ROOT / "data" / "inbox" / "colorado_aerial_cl1.tif"
"""383 x 232 RGB, georeferenced: 12 tiles of 128 px."""
STEPS = 2
SOURCE_VERSION_TAG = "dagster/input_data_version/source_images"


@dataclass(frozen=True)
class Step:
    """One run of the sequence and what the model saw during it."""

    result: dg.ExecuteInProcessResult
    attempted: frozenset[str]

    @property
    def counts(self) -> tuple[int, int]:
        meta = findings_metadata(self.result)
        return meta["tiles_inferred"], meta["tiles_from_cache"]


def alter_pixels(path: Path, corner: int) -> None:
    """Rewrite the image with a 30-px block at (corner, corner) inverted: same name and size, new content."""
    with rasterio.open(path) as src:
        profile, data = src.profile, src.read()
    block = (slice(None), slice(corner, corner + 30), slice(corner, corner + 30))
    data[block] = 255 - data[block]
    path.chmod(0o644)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)


@pytest.fixture(scope="module")
def key(lab: Lab) -> str:
    return lab.add_scene(SCENE)


@pytest.fixture(scope="module")
def steps(lab: Lab, key: str) -> dict[str, Step]:
    """The sequence of runs, each recording which tiles reached the model."""
    state = str(lab.state_path)
    v1 = {"state_dir": state}
    sequence: list[tuple[str, dict, dict]] = [
        ("first", v1, {}),
        ("unchanged", v1, {}),
        ("new_params", {**v1, "mark_side": 4}, {}),
        ("new_version", v1, {"model": FLAKY_V2}),
        ("back_to_first", v1, {}),
    ]
    out: dict[str, Step] = {}
    for name, params, config in sequence:
        before = lab.state.attempts()
        result = lab.run(key, params, target_steps=STEPS, **config)
        after = lab.state.attempts()
        out[name] = Step(result, frozenset(t for t in after if after[t] != before.get(t, 0)))
    alter_pixels(lab.inbox / SCENE.name, corner=10)
    before = lab.state.attempts()
    result = lab.run(key, v1, target_steps=STEPS)
    after = lab.state.attempts()
    out["changed_image"] = Step(result, frozenset(t for t in after if after[t] != before.get(t, 0)))
    return out


def test_every_run_succeeds(steps: dict[str, Step]) -> None:
    assert all(s.result.success for s in steps.values())


def test_first_run_infers_every_tile(lab: Lab, key: str, steps: dict[str, Step]) -> None:
    tiles = lab.manifest_ids(key)
    assert len(tiles) > STEPS
    assert steps["first"].counts == (len(tiles), 0)
    assert steps["first"].attempted == frozenset(tiles)


def test_an_unchanged_rerun_comes_entirely_from_the_cache(lab: Lab, key: str, steps: dict[str, Step]) -> None:
    n = len(lab.manifest_ids(key))
    assert steps["unchanged"].counts == (0, n)
    assert steps["unchanged"].attempted == frozenset()
    assert inference_steps(steps["unchanged"].result) == set()  # nothing to infer: no batch at all
    assert len(inference_steps(steps["first"].result)) == STEPS


def test_new_params_or_a_new_model_version_invalidate(lab: Lab, key: str, steps: dict[str, Step]) -> None:
    tiles = frozenset(lab.manifest_ids(key))
    for name in ("new_params", "new_version"):
        assert steps[name].counts == (len(tiles), 0), name
        assert steps[name].attempted == tiles, name
    # Each model identity keeps its own entries: going back to the first one misses nothing.
    assert steps["back_to_first"].counts == (0, len(tiles))
    assert steps["back_to_first"].attempted == frozenset()


def test_a_changed_image_invalidates_every_tile(lab: Lab, key: str, steps: dict[str, Step]) -> None:
    tiles = frozenset(lab.manifest_ids(key))
    assert steps["changed_image"].counts == (len(tiles), 0)
    assert steps["changed_image"].attempted == tiles


def source_version(result: dg.ExecuteInProcessResult) -> str:
    (materialization,) = result.asset_materializations_for_node("source_images")
    return materialization.tags["dagster/data_version"]


def tiles_input_version(result: dg.ExecuteInProcessResult) -> str:
    """The version of `source_images` that `tiles` was built from, as Dagster records it."""
    (materialization,) = result.asset_materializations_for_node("tiles")
    return materialization.tags[SOURCE_VERSION_TAG]


def test_data_and_code_versions_are_recorded_for_staleness(steps: dict[str, Step]) -> None:
    first, unchanged, changed = (steps[n].result for n in ("first", "unchanged", "changed_image"))
    # The source's data version is its content fingerprint: same bytes, same version.
    assert source_version(first) == source_version(unchanged) != source_version(changed)
    assert source_version(first).startswith("sha256:")
    assert tiles_input_version(first) == tiles_input_version(unchanged) != tiles_input_version(changed)
    for result in (first, changed):
        for node in ("source_images", "tiles", "tile_findings", "scene_synthesis"):
            (materialization,) = result.asset_materializations_for_node(node)
            assert materialization.tags["dagster/code_version"] == CODE_VERSION


def test_a_source_change_leaves_downstream_pointing_at_the_old_version(
    lab: Lab, key: str, steps: dict[str, Step]
) -> None:
    """What the UI's stale badge compares: the newest source version vs the one `tiles` was built from."""
    job = build_definitions(lab.settings).resolve_job_def(process_scene.name)
    alter_pixels(lab.inbox / SCENE.name, corner=100)
    result = job.execute_in_process(
        instance=lab.instance,
        partition_key=key,
        asset_selection=[dg.AssetKey("source_images")],
    )
    assert source_version(result) != source_version(steps["changed_image"].result)
    (latest_tiles,) = lab.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey("tiles"), asset_partitions=[key]), limit=1
    ).records
    # `tiles` still records the source version of the last full run: the UI shows it stale.
    assert latest_tiles.asset_materialization.tags[SOURCE_VERSION_TAG] == tiles_input_version(
        steps["changed_image"].result
    )
