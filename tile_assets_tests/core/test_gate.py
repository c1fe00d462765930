"""The content gate on real images: rendition, pHash, area policy, blocklist, moderation (Stubber)."""

from __future__ import annotations

import ast
import io
import itertools
import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import boto3
import numpy as np
import pytest
import rasterio
from botocore.exceptions import NoCredentialsError
from botocore.stub import ANY, Stubber
from PIL import Image

from tile_assets.core.errors import (
    ModelError,
    PolicyError,
    RasterReadError,
    RejectedSceneError,
    TransientError,
)
from tile_assets.core.gate.area import AreaPolicyCheck, load_areas
from tile_assets.core.gate.base import (
    VALIDATION,
    CheckOutcome,
    Gate,
    Rendition,
    policy_fingerprint,
    run_gate,
)
from tile_assets.core.gate.blocklist import (
    DEFAULT_MAX_DISTANCE,
    BlocklistCheck,
    blocklist_entries,
    parse_blocklist,
)
from tile_assets.core.gate.moderation import ModerationCheck, image_argument
from tile_assets.core.gate.phash import hamming, perceptual_hash
from tile_assets.core.gate.rendition import RENDITION_MAX_SIDE, read_rendition
from tile_assets.core.gate.screen import screen_source
from tile_assets.core.raster import describe, open_raster
from tile_assets.core.store import LocalStore
from tile_assets.core.types import SceneInfo

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
INBOX = REPO / "data" / "inbox"
POLICY = REPO / "data" / "policy"
BAD = HERE.parent / "data" / "bad"
GATE_PACKAGE = REPO / "tile_assets" / "core" / "gate"
STORE = LocalStore()
SAMPLES = sorted(p.name for p in INBOX.iterdir())
SAME_SCENE = {"RGB.byte.tif", "rgb-byte-tenth.tif"}
"""The same Landsat scene at full and tenth size: a resized copy, so one pHash."""


def describe_file(path: Path) -> SceneInfo:
    with open_raster(STORE, str(path)) as ds:
        return describe(ds, str(path), path.stem, STORE.fingerprint(str(path)), path.stat().st_size)


def reencode_jpeg(source: Path, target: Path, quality: int) -> Path:
    """A full-size JPEG copy of `source` at another quality: new bytes, same picture."""
    picture = read_rendition(STORE, str(source), max_side=100_000)
    Image.fromarray(picture[..., 0] if picture.shape[-1] == 1 else picture).save(
        target, format="JPEG", quality=quality
    )
    return target


@pytest.fixture(scope="module")
def scenes() -> dict[str, SceneInfo]:
    return {name: describe_file(INBOX / name) for name in SAMPLES}


@pytest.fixture(scope="module")
def hashes() -> dict[str, str]:
    return {name: perceptual_hash(read_rendition(STORE, str(INBOX / name))) for name in SAMPLES}


class CountingRendition:
    """A rendition that counts how often it is read."""

    def __init__(self, picture: np.ndarray | None = None) -> None:
        self.picture = np.zeros((8, 8, 3), np.uint8) if picture is None else picture
        self.calls = 0

    def __call__(self) -> np.ndarray:
        self.calls += 1
        return self.picture


@dataclass(frozen=True)
class FixedCheck:
    """A check with a set verdict that may look at the pixels."""

    name: str
    passed: bool = True
    looks: bool = False

    def check(self, scene: SceneInfo, rendition: Rendition) -> CheckOutcome:
        if self.looks:
            rendition()
        return CheckOutcome(
            self.name, self.passed, () if self.passed else (f"{self.name} says no",)
        )


# --- rendition and perceptual hash ------------------------------------------------------------


def test_rendition_fits_max_side_and_blacks_out_invalid_pixels() -> None:
    picture = read_rendition(STORE, str(INBOX / "pix4d_drone_rgba.tif"))
    assert picture.dtype == np.uint8 and picture.shape == (512, 463, 3)
    with rasterio.open(INBOX / "pix4d_drone_rgba.tif") as ds:
        invalid = (ds.read(4) == 0).mean()
    black = (picture == 0).all(axis=-1).mean()
    assert invalid > 0.1 and abs(black - invalid) < 0.02
    gray = read_rendition(STORE, str(INBOX / "page_text.png"))
    assert gray.shape == (191, 384, 1), "smaller than max_side: kept at full size, one gray band"
    assert max(read_rendition(STORE, str(INBOX / "no_geo_photo.jpg")).shape) == RENDITION_MAX_SIDE


@pytest.mark.parametrize("name", SAMPLES)
def test_phash_of_a_reencoded_copy_stays_close(
    name: str, hashes: dict[str, str], tmp_path: Path
) -> None:
    for quality in (35, 75):
        copy = reencode_jpeg(INBOX / name, tmp_path / f"copy-{quality}.jpg", quality)
        assert copy.read_bytes() != (INBOX / name).read_bytes()
        distance = hamming(perceptual_hash(read_rendition(STORE, str(copy))), hashes[name])
        assert distance <= 4 < DEFAULT_MAX_DISTANCE, (name, quality, distance)


def test_phash_separates_different_images(hashes: dict[str, str]) -> None:
    for a, b in itertools.combinations(SAMPLES, 2):
        distance = hamming(hashes[a], hashes[b])
        if {a, b} == SAME_SCENE:
            assert distance <= DEFAULT_MAX_DISTANCE, "a resized copy is a copy"
        else:
            assert distance > 2 * DEFAULT_MAX_DISTANCE, (a, b, distance)


def test_hamming_counts_differing_bits() -> None:
    assert hamming("0000000000000000", "0000000000000000") == 0
    assert hamming("ffffffffffffffff", "0000000000000000") == 64
    assert hamming("0000000000000003", "0000000000000001") == 1
    assert len(perceptual_hash(np.zeros((32, 32, 1), np.uint8))) == 16


# --- the gate ------------------------------------------------------------------------------------


def test_gate_stops_at_the_first_rejection_and_reads_pixels_once(
    scenes: dict[str, SceneInfo],
) -> None:
    scene = scenes["astronaut.png"]
    rendition = CountingRendition()
    checks = [
        FixedCheck("a", looks=True),
        FixedCheck("b", looks=True),
        FixedCheck("c", False),
        FixedCheck("d"),
    ]
    decision = run_gate(checks, scene, rendition)
    assert not decision.passed
    assert [o.name for o in decision.outcomes] == [VALIDATION, "a", "b", "c"]
    assert decision.skipped == ("d",)
    assert decision.rejection is not None and decision.rejection.name == "c"
    assert decision.summary() == "rejected by c: c says no"
    assert rendition.calls == 1, "the rendition is read once and shared"
    error = decision.error(scene.uri, "policy-1")
    assert isinstance(error, RejectedSceneError)
    assert (error.check, error.reasons, error.policy) == ("c", ("c says no",), "policy-1")
    assert error.reason == "rejected by c: c says no"
    assert json.loads(json.dumps(decision.to_dict()))["skipped"] == ["d"]


def test_gate_with_metadata_checks_only_never_reads_pixels(scenes: dict[str, SceneInfo]) -> None:
    rendition = CountingRendition()
    decision = Gate((FixedCheck("a"), FixedCheck("b")), "p").screen(
        scenes["naip_2018.tif"], rendition
    )
    assert decision.passed and decision.rejection is None
    assert decision.summary() == f"passed ({VALIDATION}, a, b)"
    assert rendition.calls == 0
    with pytest.raises(ValueError):
        decision.error("x", "p")


def test_validation_rejects_a_file_that_is_not_an_image(tmp_path: Path) -> None:
    fake = tmp_path / "notes.tif"
    fake.write_text("this is not an image")
    screening = screen_source(STORE, str(fake), "notes", Gate((FixedCheck("a"),), "policy-1"))
    assert screening.scene is None
    decision = screening.decision
    assert not decision.passed and decision.skipped == ("a",)
    assert decision.rejection is not None
    assert decision.rejection.name == VALIDATION
    assert decision.rejection.reasons == ("not a recognized image format",)
    assert decision.rejection.details == {"error_type": "InvalidSourceError"}
    assert decision.error(str(fake), "policy-1").policy == "", (
        "validation does not depend on the policy"
    )


def test_validation_rejects_an_unsupported_raster(raster_factory: Callable[..., Path]) -> None:
    path = raster_factory("cube.tif", count=17)
    decision = screen_source(STORE, str(path), "cube", Gate((), "p")).decision
    assert decision.rejection is not None and decision.rejection.name == VALIDATION
    assert "17 data bands" in decision.rejection.reasons[0]


def test_a_corrupt_image_fails_rather_than_being_rejected() -> None:
    with pytest.raises(RasterReadError):
        screen_source(STORE, str(BAD / "corrupt.tif"), "corrupt", Gate((), "p"))


def test_screen_source_describes_and_runs_the_checks() -> None:
    path = INBOX / "colorado_aerial_cl1.tif"
    screening = screen_source(
        STORE, str(path), "colorado", Gate((FixedCheck("a", looks=True),), "p")
    )
    assert screening.decision.passed
    assert screening.scene is not None
    assert screening.scene.fingerprint == STORE.fingerprint(str(path))
    assert screening.scene.last_modified == path.stat().st_mtime


def test_policy_fingerprint_follows_config_and_file_contents() -> None:
    base = policy_fingerprint({"area_mode": "deny"}, {"areas.geojson": b"{}"})
    assert base == policy_fingerprint({"area_mode": "deny"}, {"areas.geojson": b"{}"})
    assert base != policy_fingerprint({"area_mode": "allow"}, {"areas.geojson": b"{}"})
    assert base != policy_fingerprint({"area_mode": "deny"}, {"areas.geojson": b"{ }"})


def test_gate_package_never_imports_dagster() -> None:
    for module in GATE_PACKAGE.glob("*.py"):
        tree = ast.parse(module.read_text())
        names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        names += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
        assert not [n for n in names if n.split(".")[0] == "dagster"], module.name


# --- area policy ---------------------------------------------------------------------------------


def area_check(name: str, **kwargs: object) -> AreaPolicyCheck:
    path = POLICY / name
    return AreaPolicyCheck(load_areas(path.read_bytes(), str(path)), **kwargs)  # type: ignore[arg-type]


def test_denied_area_rejects_one_sample_by_its_footprint(scenes: dict[str, SceneInfo]) -> None:
    check = area_check("example_denied_areas.geojson")
    outcomes = {name: check.check(scene, CountingRendition()) for name, scene in scenes.items()}
    rejected = {name for name, o in outcomes.items() if not o.passed}
    assert rejected == {"colorado_aerial_cl1.tif"}
    assert outcomes["colorado_aerial_cl1.tif"].reasons == (
        "footprint intersects denied area 'Colorado Springs example restricted zone'",
    )
    assert outcomes["naip_2018.tif"].details["georeferenced"] is True
    assert outcomes["astronaut.png"].details == {"georeferenced": False}


def test_allowed_areas_reject_footprints_outside_them(scenes: dict[str, SceneInfo]) -> None:
    check = area_check("example_allowed_areas.geojson")
    geo = {n: s for n, s in scenes.items() if s.georeferenced}
    outcomes = {name: check.check(scene, CountingRendition()) for name, scene in geo.items()}
    assert {n for n, o in outcomes.items() if o.passed} == {
        "colorado_aerial_cl1.tif",
        "naip_2018.tif",
    }
    assert outcomes["pix4d_drone_rgba.tif"].reasons[0].startswith("footprint is 100.0% outside")
    partly = outcomes["RGB.byte.tif"].reasons[0]
    assert "outside the allowed areas" in partly and not partly.startswith("footprint is 100.0%")


def test_non_georeferenced_images_follow_their_rule(scenes: dict[str, SceneInfo]) -> None:
    photo = scenes["no_geo_photo.jpg"]
    assert area_check("example_denied_areas.geojson").check(photo, CountingRendition()).passed
    strict = area_check("example_denied_areas.geojson", non_georeferenced="reject")
    outcome = strict.check(photo, CountingRendition())
    assert not outcome.passed and "not georeferenced" in outcome.reasons[0]
    assert strict.check(scenes["naip_2018.tif"], CountingRendition()).passed


def test_a_gcp_only_scene_is_placed_by_its_gcp_extent(scenes: dict[str, SceneInfo]) -> None:
    colorado = scenes["colorado_aerial_cl1.tif"]
    gcp_only = replace(colorado, transform=None, bounds=None)
    assert not gcp_only.georeferenced and gcp_only.bounds_wgs84 is not None
    outcome = area_check("example_denied_areas.geojson").check(gcp_only, CountingRendition())
    assert not outcome.passed


def test_area_policy_files_are_validated() -> None:
    square = {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 1], [0, 0]]]}
    areas = load_areas(json.dumps(square).encode(), "bare.geojson", "allow")
    assert [(a.name, a.rule) for a in areas] == [("feature 0", "allow")]
    bad_rule = {
        "type": "Feature",
        "properties": {"name": "x", "policy": "maybe"},
        "geometry": square,
    }
    point = {
        "type": "Feature",
        "properties": {},
        "geometry": {"type": "Point", "coordinates": [0, 0]},
    }
    for doc, fragment in (
        (b"not json", "not JSON"),
        (json.dumps([1, 2]).encode(), "not GeoJSON"),
        (json.dumps(bad_rule).encode(), "neither 'allow' nor 'deny'"),
        (json.dumps(point).encode(), "no area"),
        (json.dumps({"type": "FeatureCollection", "features": []}).encode(), "no areas"),
    ):
        with pytest.raises(PolicyError, match=fragment):
            load_areas(doc, "policy.geojson")


# --- blocklist -----------------------------------------------------------------------------------


def test_blocklist_parses_entries_notes_and_comments() -> None:
    text = (
        "# blocked imagery\n\n"
        "sha256:" + "AB" * 32 + "  leaked scan\n"
        "etag:5d41402abc4b2a76b9719d911017c592-3\n"
        "phash:c3d1b8e4a09f5e27 # copies too\n"
    )
    entries = parse_blocklist(text, "blocklist.txt")
    assert [(e.kind, e.value, e.note) for e in entries] == [
        ("sha256", "ab" * 32, "leaked scan"),
        ("etag", "5d41402abc4b2a76b9719d911017c592-3", ""),
        ("phash", "c3d1b8e4a09f5e27", ""),
    ]
    with pytest.raises(PolicyError, match="line 2"):
        parse_blocklist("phash:c3d1b8e4a09f5e27\nmd5:abc\n", "blocklist.txt")
    with pytest.raises(PolicyError, match="16 hex digits"):
        parse_blocklist("phash:c3d1\n", "blocklist.txt")


def test_blocklist_rejects_a_listed_checksum_without_reading_pixels(
    scenes: dict[str, SceneInfo],
) -> None:
    scene = scenes["naip_2018.tif"]
    check = BlocklistCheck(parse_blocklist(f"{scene.fingerprint} do not process\n", "b.txt"))
    rendition = CountingRendition()
    outcome = check.check(scene, rendition)
    assert not outcome.passed
    assert outcome.reasons == (f"checksum is blocklisted: {scene.fingerprint} (do not process)",)
    assert rendition.calls == 0
    assert check.check(scenes["colorado_aerial_cl1.tif"], rendition).passed


def test_blocklist_catches_a_reencoded_copy_by_its_perceptual_hash(
    hashes: dict[str, str], tmp_path: Path
) -> None:
    original = INBOX / "astronaut.png"
    entries = blocklist_entries(str(original))
    assert entries == [STORE.fingerprint(str(original)), f"phash:{hashes['astronaut.png']}"]
    check = BlocklistCheck(parse_blocklist("\n".join(entries), "b.txt"))
    copy = reencode_jpeg(original, tmp_path / "astronaut-recompressed.jpg", quality=40)
    scene = describe_file(copy)
    assert scene.fingerprint not in entries, "a re-encoded copy has another checksum"
    outcome = check.check(scene, lambda: read_rendition(STORE, str(copy)))
    assert not outcome.passed
    assert f"from blocklisted phash:{hashes['astronaut.png']}" in outcome.reasons[0]
    assert outcome.details["nearest_phash_distance"] <= DEFAULT_MAX_DISTANCE
    other = describe_file(INBOX / "no_geo_photo.jpg")
    passed = check.check(other, lambda: read_rendition(STORE, str(INBOX / "no_geo_photo.jpg")))
    assert passed.passed and passed.details["nearest_phash_distance"] > DEFAULT_MAX_DISTANCE


# --- moderation (Amazon Rekognition through botocore's Stubber) -----------------------------------


@pytest.fixture
def rekognition() -> boto3.client:
    return boto3.client(
        "rekognition",
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def moderation_response(*labels: tuple[str, str, float]) -> dict[str, object]:
    return {
        "ModerationLabels": [
            {
                "Name": name,
                "ParentName": parent,
                "Confidence": confidence,
                "TaxonomyLevel": 2 if parent else 1,
            }
            for name, parent, confidence in labels
        ],
        "ModerationModelVersion": "7.0",
    }


def test_moderation_accepts_an_image_without_labels(
    rekognition: boto3.client, scenes: dict[str, SceneInfo]
) -> None:
    scene = scenes["naip_2018.tif"]
    rendition = CountingRendition(read_rendition(STORE, scene.uri))
    with Stubber(rekognition) as stub:
        stub.add_response(
            "detect_moderation_labels",
            moderation_response(),
            {"Image": {"Bytes": ANY}, "MinConfidence": 80.0},
        )
        outcome = ModerationCheck(rekognition).check(scene, rendition)
        stub.assert_no_pending_responses()
    assert outcome.passed and outcome.reasons == ()
    assert outcome.details == {"sent": "rendition_bytes", "labels": [], "model_version": "7.0"}
    assert rendition.calls == 1


def test_moderation_sends_the_rendition_as_a_small_jpeg(scenes: dict[str, SceneInfo]) -> None:
    scene = scenes["no_geo_photo.jpg"]
    argument = image_argument(scene, lambda: read_rendition(STORE, scene.uri), s3_reference=True)
    sent = Image.open(io.BytesIO(argument["Bytes"]))
    assert sent.format == "JPEG" and max(sent.size) == RENDITION_MAX_SIDE
    assert len(argument["Bytes"]) < 5 * 1024 * 1024, "Rekognition's limit for image bytes"


def test_moderation_rejects_an_image_with_a_listed_label(
    rekognition: boto3.client, scenes: dict[str, SceneInfo]
) -> None:
    scene = scenes["astronaut.png"]
    response = moderation_response(
        ("Explicit", "", 97.5),
        ("Explicit Nudity", "Explicit", 97.5),
        ("Alcohol", "", 91.0),
        ("Violence", "", 60.0),
    )
    with Stubber(rekognition) as stub:
        stub.add_response(
            "detect_moderation_labels", response, {"Image": {"Bytes": ANY}, "MinConfidence": 70.0}
        )
        check = ModerationCheck(rekognition, 70.0, ("explicit", "Violence"))
        outcome = check.check(scene, lambda: read_rendition(STORE, scene.uri))
        stub.assert_no_pending_responses()
    assert not outcome.passed
    assert outcome.reasons == ("Explicit (97.5%)", "Explicit Nudity (97.5%)")
    assert [label["name"] for label in outcome.details["labels"]] == [
        "Explicit",
        "Explicit Nudity",
        "Alcohol",
        "Violence",
    ]


def test_moderation_without_a_label_list_rejects_any_confident_label(
    rekognition: boto3.client, scenes: dict[str, SceneInfo]
) -> None:
    scene = scenes["astronaut.png"]
    with Stubber(rekognition) as stub:
        stub.add_response("detect_moderation_labels", moderation_response(("Alcohol", "", 91.0)))
        outcome = ModerationCheck(rekognition).check(scene, CountingRendition())
    assert outcome.reasons == ("Alcohol (91.0%)",)


def test_moderation_references_jpeg_and_png_objects_on_s3(
    rekognition: boto3.client, scenes: dict[str, SceneInfo]
) -> None:
    on_s3 = replace(scenes["no_geo_photo.jpg"], uri="s3://imagery/inbox/photos/no_geo_photo.jpg")
    rendition = CountingRendition()
    with Stubber(rekognition) as stub:
        stub.add_response(
            "detect_moderation_labels",
            moderation_response(),
            {
                "Image": {
                    "S3Object": {"Bucket": "imagery", "Name": "inbox/photos/no_geo_photo.jpg"}
                },
                "MinConfidence": 80.0,
            },
        )
        outcome = ModerationCheck(rekognition).check(on_s3, rendition)
        stub.assert_no_pending_responses()
    assert outcome.passed and outcome.details["sent"] == "s3_object"
    assert rendition.calls == 0, "Rekognition reads the object itself"
    tiff_on_s3 = replace(scenes["naip_2018.tif"], uri="s3://imagery/inbox/naip_2018.tif")
    assert "Bytes" in image_argument(tiff_on_s3, CountingRendition(), s3_reference=True)
    assert "Bytes" in image_argument(on_s3, CountingRendition(), s3_reference=False)


@pytest.mark.parametrize("code", ["ThrottlingException", "ProvisionedThroughputExceededException"])
def test_moderation_throttling_is_transient(
    code: str, rekognition: boto3.client, scenes: dict[str, SceneInfo]
) -> None:
    with Stubber(rekognition) as stub:
        stub.add_client_error(
            "detect_moderation_labels", service_error_code=code, http_status_code=400
        )
        with pytest.raises(TransientError, match=code):
            ModerationCheck(rekognition).check(scenes["astronaut.png"], CountingRendition())


def test_moderation_api_errors_are_permanent_model_errors(
    rekognition: boto3.client, scenes: dict[str, SceneInfo]
) -> None:
    with Stubber(rekognition) as stub:
        stub.add_client_error(
            "detect_moderation_labels",
            service_error_code="InvalidImageFormatException",
            service_message="Request has invalid image format",
            http_status_code=400,
        )
        with pytest.raises(ModelError, match="invalid image format") as caught:
            ModerationCheck(rekognition).check(scenes["astronaut.png"], CountingRendition())
    assert not isinstance(caught.value, TransientError)

    class NoCredentials:
        def detect_moderation_labels(self, **kwargs: object) -> dict[str, object]:
            raise NoCredentialsError()

    with pytest.raises(ModelError, match="no AWS credentials"):
        ModerationCheck(NoCredentials()).check(scenes["astronaut.png"], CountingRendition())
