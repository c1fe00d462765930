"""Turning a scene's core error into a Dagster failure the UI, CLI and catalog all see."""


import json
import time

import dagster as dg

from tile_assets.core.errors import TileAssetsError, TransientError
from tile_assets.resources import ImageryStore


def record_scene_status(imagery: ImageryStore, partition_key: str, status: dict) -> None:
    """Write `<catalog>/scenes/<key>/status.json`: what happened to the scene last."""
    payload = {"partition_key": partition_key, "updated_at": time.time(), **status}
    imagery.catalog_store().write_bytes(
        imagery.scene_uri(partition_key, "status.json"),
        json.dumps(payload, sort_keys=True).encode(),
        "application/json",
    )


def scene_failure(
    imagery: ImageryStore, partition_key: str, stage: str, exc: TileAssetsError
) -> Exception:
    """The exception to raise for a scene that failed: retried when transient, else final.

    The reason is recorded in the scene's status.json so the catalog lists the
    scene as failed, with why, instead of leaving it silently missing.
    """
    if isinstance(exc, TransientError):
        return exc
    record_scene_status(
        imagery,
        partition_key,
        {
            "status": "failed",
            "stage": stage,
            "object": exc.obj,
            "error_type": type(exc).__name__,
            "reason": exc.reason,
        },
    )
    return dg.Failure(
        description=f"{stage} failed for {exc.obj}: {exc.reason}",
        metadata={
            "object": exc.obj,
            "reason": exc.reason,
            "error_type": type(exc).__name__,
        },
        allow_retries=False,
    )
