"""`source_images`: each scene's object validated and described, its version fingerprinted."""


import warnings

import dagster as dg

from tile_assets.assets import CODE_VERSION, GROUP
from tile_assets.assets.failures import clear_rejection, scene_failure
from tile_assets.core.catalog import write_json
from tile_assets.core.errors import TileAssetsError
from tile_assets.core.gate.base import GateDecision
from tile_assets.core.gate.screen import screen_source
from tile_assets.core.registry import lookup_registration
from tile_assets.partitions import scenes
from tile_assets.resources import GateResource, ImageryStore

# The scene's data version (its content fingerprint) is what makes reruns incremental; Dagster 1.13
# calls `Output(data_version=...)` beta. Used knowingly: its warning is not printed at every run.
warnings.filterwarnings(
    "ignore", message="Parameter `data_version` of initializer `Output.__init__`", category=dg.BetaWarning
)


class SourceConfig(dg.Config):
    """`rehash`: hash the source file even if it still has the version its last description recorded."""

    rehash: bool = False


def scene_metadata(info: dict) -> dict[str, object]:
    """What a user scans on the partition page: size, bands, dtype, CRS, where it is."""
    return {
        "uri": dg.MetadataValue.path(info["uri"]),
        "width": info["width"],
        "height": info["height"],
        "megapixels": round(info["width"] * info["height"] / 1e6, 2),
        "bands": info["count"],
        "band_names": ", ".join(info["colorinterp"]),
        "dtype": info["dtype"],
        "crs": info["crs"] or "none (pixel coordinates)",
        "nodata": str(info["nodata"]),
        "size_bytes": info["size_bytes"],
        "fingerprint": info["fingerprint"],
    }


def gate_metadata(decision: GateDecision, policy: str) -> dict[str, dg.MetadataValue]:
    """The gate's verdict on the partition page: status, the rejecting check and why, every outcome."""
    rejection = decision.rejection
    return {
        "gate_status": dg.MetadataValue.text("passed" if rejection is None else "rejected"),
        "gate_check": dg.MetadataValue.text("" if rejection is None else rejection.name),
        "gate_reasons": dg.MetadataValue.text("" if rejection is None else "; ".join(rejection.reasons)),
        "gate_policy": dg.MetadataValue.text(policy),
        "gate": dg.MetadataValue.json(decision.to_dict()),
    }


@dg.asset(
    partitions_def=scenes,
    group_name=GROUP,
    code_version=CODE_VERSION,
    kinds={"rasterio", "json"},
    owners=["team:imagery"],
)
def source_images(
    context: dg.AssetExecutionContext, config: SourceConfig, imagery: ImageryStore, gate: GateResource
) -> dg.Output[dict]:
    """The source image of a scene, opened with rasterio, validated and screened.

    Checks that the object is a readable raster with a supported dtype and
    band count and within the pixel limits (decompression-bomb guard), then
    runs the content gate (area policy, blocklist, moderation, as configured).
    A rejected scene stops here, listed as rejected with the check and the
    reasons; no tile is planned for it. Records size, bands, CRS, transform,
    nodata and a content fingerprint (sha256 for local files, the ETag on
    S3). A local file whose size and mtime are those of its last description,
    or of its registration by the sensor or the CLI (which hashed it to
    version it), keeps that fingerprint instead of being read whole again
    (`fingerprint_reused`); config `rehash: true` hashes it regardless.
    Writes `scenes/<key>/source.json`.
    """
    key = context.partition_key
    catalog_store = imagery.catalog_store()
    source_json = imagery.scene_uri(key, "source.json")
    try:
        registered, fingerprint = lookup_registration(catalog_store, imagery.catalog, key)
        configured = gate.load(imagery)
        known = [] if config.rehash else imagery.recorded_fingerprints(key, fingerprint)
        screening = screen_source(imagery.store_for(registered.uri), registered.uri, key, configured, known)
        metadata = gate_metadata(screening.decision, configured.policy)
        scene = screening.scene
        if scene is None or not screening.decision.passed:
            context.log.warning(f"{registered.uri}: {screening.decision.summary()}")
            context.log_event(dg.AssetObservation(context.asset_key, partition=key, metadata=metadata))
            raise screening.decision.error(registered.uri, configured.policy)
    except TileAssetsError as exc:
        raise scene_failure(imagery, key, "source_images", exc) from exc
    clear_rejection(imagery, key)
    info = scene.to_dict()
    write_json(catalog_store, source_json, info)
    reused = screening.fingerprint_reused
    context.log.info(
        f"{registered.uri}: {info['width']}x{info['height']} x{info['count']} {info['dtype']}, "
        f"fingerprint {'reused (same version as source.json)' if reused else 'computed'}, "
        f"gate {screening.decision.summary()}"
    )
    return dg.Output(
        info,
        data_version=dg.DataVersion(info["fingerprint"]),
        metadata={**scene_metadata(info), "fingerprint_reused": reused, **metadata},
    )
