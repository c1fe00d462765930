"""`new_images_sensor` over a real inbox folder: partitions, exactly-once run keys, deletions, bounded ticks."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg
import pytest

import tile_assets.sensors
from tile_assets.assets.scenes import source_images
from tile_assets.core.keys import scene_key
from tile_assets.core.registry import lookup_registration, registered_fingerprint
from tile_assets.core.store import LocalStore
from tile_assets.jobs import process_scene, refresh_catalog
from tile_assets.partitions import scenes
from tile_assets.sensors import new_images_sensor
from tile_assets_tests.dagster_layer.fixtures import INBOX, copy_images, definitions_for, register_image

IMAGES = ("rgb-byte-tenth.tif", "colorado_aerial_cl1.tif", "page_text.png")
MORE_IMAGES = ("astronaut.png", "389225main_sw_1965_1024.jpg")


@dataclass
class Inbox:
    """A temp inbox watched by the sensor, an instance, and the cursor carried from tick to tick."""

    folder: Path
    catalog: Path
    instance: dg.DagsterInstance
    defs: dg.Definitions
    cursor: str | None = None
    ticks: list[dg.SensorResult | dg.SkipReason] = field(default_factory=list)

    def tick(self) -> dg.SensorResult:
        """Evaluate the sensor once, apply its partition requests as the daemon would, keep its cursor."""
        result = self.evaluate()
        assert isinstance(result, dg.SensorResult), result
        for request in result.dynamic_partitions_requests or []:
            if isinstance(request, dg.AddDynamicPartitionsRequest):
                self.instance.add_dynamic_partitions(
                    request.partitions_def_name, request.partition_keys
                )
            else:
                for key in request.partition_keys:
                    self.instance.delete_dynamic_partition(
                        request.partitions_def_name, key
                    )
        self.cursor = result.cursor
        return result

    def evaluate(self) -> dg.SensorResult | dg.SkipReason:
        with dg.build_sensor_context(
            instance=self.instance, cursor=self.cursor, resources=self.defs.resources
        ) as context:
            result = new_images_sensor(context)
        self.ticks.append(result)
        return result

    def key(self, name: str) -> str:
        return scene_key(str(self.folder / name))

    def partitions(self) -> set[str]:
        return set(self.instance.get_dynamic_partitions(scenes.name))


@pytest.fixture
def inbox(tmp_path: Path) -> Iterator[Inbox]:
    folder = tmp_path / "inbox"
    copy_images(folder, *(INBOX / name for name in IMAGES))
    (folder / "notes.txt").write_text("not an image")
    (folder / "empty.tif").touch()
    with dg.instance_for_test() as instance:
        yield Inbox(
            folder,
            tmp_path / "catalog",
            instance,
            definitions_for(folder, tmp_path / "catalog"),
        )


def scene_requests(result: dg.SensorResult) -> list[dg.RunRequest]:
    return [r for r in result.run_requests or [] if r.job_name == process_scene.name]


def added_keys(result: dg.SensorResult) -> list[str]:
    return [
        key
        for request in result.dynamic_partitions_requests or []
        if isinstance(request, dg.AddDynamicPartitionsRequest)
        for key in request.partition_keys
    ]


def version_of(run_key: str | None) -> str:
    assert run_key is not None
    return run_key.split(":", 1)[1]


def test_first_tick_adds_a_partition_and_a_run_per_image(inbox: Inbox) -> None:
    result = inbox.tick()
    keys = {inbox.key(name) for name in IMAGES}
    assert sorted(added_keys(result)) == sorted(keys)
    requests = scene_requests(result)
    assert len(requests) == len(result.run_requests or []) == len(IMAGES)
    assert {r.partition_key for r in requests} == keys
    for request in requests:
        assert request.run_key is not None
        key, version = request.run_key.split(":", 1)
        assert key == request.partition_key
        assert request.tags["tile_assets/version"] == version
        assert request.tags["tile_assets/size"] == "small"
        registered, _ = lookup_registration(LocalStore(), str(inbox.catalog), key)
        assert registered.uri == str(inbox.folder / Path(registered.uri).name)
        # the hash that gave the version is kept for source_images, which then need not hash again
        fingerprint = registered_fingerprint(LocalStore(), str(inbox.catalog), key)
        assert fingerprint is not None and fingerprint.uri == registered.uri
        assert fingerprint.fingerprint == "sha256:" + hashlib.sha256(Path(registered.uri).read_bytes()).hexdigest()
        assert fingerprint.fingerprint.removeprefix("sha256:")[:16] == version
        assert fingerprint.source_version == LocalStore().head(registered.uri).etag
    assert inbox.partitions() == keys
    assert inbox.key("notes.txt") not in inbox.partitions()
    assert inbox.key("empty.tif") not in inbox.partitions()


def test_relisted_and_touched_images_start_no_run(inbox: Inbox) -> None:
    inbox.tick()
    second = inbox.tick()
    assert not second.run_requests and not second.dynamic_partitions_requests
    stat = (inbox.folder / IMAGES[0]).stat()
    os.utime(
        inbox.folder / IMAGES[0],
        ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000),
    )
    touched = inbox.tick()
    assert not touched.run_requests and not touched.dynamic_partitions_requests


def test_changed_bytes_start_exactly_one_new_run(inbox: Inbox) -> None:
    first = {r.partition_key: r.run_key for r in scene_requests(inbox.tick())}
    target = inbox.folder / IMAGES[0]
    shutil.copyfile(
        INBOX / "RGB.byte.tif", target
    )  # a different image under the same name
    changed = inbox.tick()
    [request] = scene_requests(changed)
    key = inbox.key(IMAGES[0])
    assert request.partition_key == key
    assert request.run_key != first[key]
    assert version_of(request.run_key) != version_of(first[key])
    assert not added_keys(changed)  # the partition exists already
    assert (
        lookup_registration(LocalStore(), str(inbox.catalog), key)[0].size
        == target.stat().st_size
    )
    assert not inbox.tick().run_requests


def test_deleted_image_removes_its_partition_and_refreshes_the_catalog(
    inbox: Inbox,
) -> None:
    inbox.tick()
    gone = inbox.key(IMAGES[1])
    (inbox.folder / IMAGES[1]).unlink()
    result = inbox.tick()
    deletes = [
        r
        for r in result.dynamic_partitions_requests or []
        if isinstance(r, dg.DeleteDynamicPartitionsRequest)
    ]
    assert [list(r.partition_keys) for r in deletes] == [[gone]]
    [refresh] = result.run_requests or []
    assert refresh.job_name == refresh_catalog.name
    assert gone not in inbox.partitions()
    assert not (inbox.catalog / "_registry" / f"{gone}.json").exists()
    assert not inbox.tick().run_requests


def test_bounded_ticks_see_each_image_once(
    inbox: Inbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    copy_images(inbox.folder, *(INBOX / name for name in MORE_IMAGES))
    monkeypatch.setattr(tile_assets.sensors, "MAX_OBJECTS_PER_TICK", 2)
    images = (*IMAGES, *MORE_IMAGES)
    listed = len(images) + 2  # notes.txt and empty.tif take a slot each
    seen: list[str] = []
    for _ in range(listed // 2 + 1):
        result = inbox.tick()
        seen += [r.partition_key for r in scene_requests(result)]
        assert len(result.run_requests or []) <= 2
    assert sorted(seen) == sorted(inbox.key(name) for name in images)
    assert inbox.partitions() == set(seen)
    for _ in range(listed // 2 + 1):  # a second full pass: nothing new, nothing deleted
        result = inbox.tick()
        assert not result.run_requests and not result.dynamic_partitions_requests


def test_missing_inbox_skips_and_keeps_the_cursor(inbox: Inbox) -> None:
    inbox.tick()
    cursor = inbox.cursor
    shutil.rmtree(inbox.folder)
    with dg.build_sensor_context(
        instance=inbox.instance, cursor=cursor, resources=inbox.defs.resources
    ) as context:
        result = new_images_sensor(context)
    assert isinstance(result, dg.SkipReason)
    assert "folder does not exist" in (result.skip_message or "")
    assert context.cursor == cursor


def test_scenes_already_materialized_at_that_version_are_not_rerun(inbox: Inbox) -> None:
    """What `tile-assets run` did before the sensor first looked is not done again; a change still is."""
    first = inbox.evaluate()
    assert isinstance(first, dg.SensorResult)
    done = inbox.key("rgb-byte-tenth.tif")
    inbox.instance.add_dynamic_partitions(scenes.name, [done])
    result = dg.materialize(
        [source_images],
        instance=inbox.instance,
        partition_key=done,
        resources=inbox.defs.resources,
    )
    assert result.success

    fresh = inbox.tick()
    requested = {r.partition_key for r in fresh.run_requests or []}
    assert done not in requested
    assert requested == {inbox.key(name) for name in IMAGES} - {done}

    shutil.copy(INBOX / "colorado_aerial_cl1.tif", inbox.folder / "rgb-byte-tenth.tif")
    changed = inbox.tick()
    assert [r.partition_key for r in changed.run_requests or []] == [done]


def test_the_cursor_names_a_state_file_beside_the_catalog(inbox: Inbox) -> None:
    """The versions of known scenes are not in the cursor, which Dagster stores with every tick."""
    inbox.tick()
    assert inbox.cursor is not None and len(inbox.cursor) < 300
    name = json.loads(inbox.cursor)["state"]
    (state,) = (inbox.catalog / "_sensor").rglob("*.json.gz")
    assert state.name == name
    assert all(inbox.key(image) in gzip.decompress(state.read_bytes()).decode() for image in IMAGES)


def test_a_tick_whose_result_was_not_stored_is_redone_from_the_cursor_before(inbox: Inbox) -> None:
    """E.g. the daemon died before storing it: the same requests come again (their run keys dedupe them)."""
    inbox.tick()
    before = inbox.cursor
    copy_images(inbox.folder, INBOX / MORE_IMAGES[0])
    lost = inbox.evaluate()  # never stored: the cursor stays
    assert isinstance(lost, dg.SensorResult)
    again = inbox.tick()
    assert inbox.cursor != before
    assert [r.run_key for r in scene_requests(again)] == [r.run_key for r in scene_requests(lost)]
    assert len(scene_requests(again)) == 1
    assert not inbox.tick().run_requests


def test_a_lost_state_file_starts_a_new_pass_that_repeats_no_run(inbox: Inbox) -> None:
    first = {r.run_key for r in scene_requests(inbox.tick())}
    shutil.rmtree(inbox.catalog / "_sensor")
    for key in sorted(first):  # as if their runs had succeeded: the scenes are materialized at that version
        partition, version = key.split(":", 1)
        inbox.instance.report_runless_asset_event(
            dg.AssetMaterialization(
                asset_key=source_images.key, partition=partition, tags={"dagster/data_version": f"sha256:{version}"}
            )
        )
    again = inbox.tick()
    assert not scene_requests(again)  # every scene checked again, none run again
    assert not added_keys(again)
    assert json.loads(inbox.cursor or "{}")["state"]  # and a new state file is named
    assert not inbox.tick().run_requests


def test_after_a_lost_state_file_deletions_made_meanwhile_are_noticed(inbox: Inbox, tmp_path: Path) -> None:
    """Not the partitions the CLI registered from another folder: their objects are not this inbox's."""
    inbox.tick()
    elsewhere = copy_images(tmp_path / "elsewhere", INBOX / MORE_IMAGES[0])[0]
    foreign = register_image(inbox.instance, inbox.catalog, elsewhere)
    shutil.rmtree(inbox.catalog / "_sensor")
    gone = inbox.key(IMAGES[1])
    (inbox.folder / IMAGES[1]).unlink()
    result = inbox.tick()
    deletes = [r for r in result.dynamic_partitions_requests or [] if isinstance(r, dg.DeleteDynamicPartitionsRequest)]
    assert [list(r.partition_keys) for r in deletes] == [[gone]]
    assert inbox.partitions() == {inbox.key(IMAGES[0]), inbox.key(IMAGES[2]), foreign}
    assert not inbox.tick().dynamic_partitions_requests
