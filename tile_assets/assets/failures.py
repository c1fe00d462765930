"""Turning a scene's core error into a Dagster failure the UI, CLI and catalog all see."""


import json
import time
from typing import Any

import dagster as dg

from tile_assets.core.errors import RejectedSceneError, StoreError, TileAssetsError, TransientError
from tile_assets.resources import ImageryStore


def record_scene_status(imagery: ImageryStore, partition_key: str, status: dict) -> None:
    """Write `<catalog>/scenes/<key>/status.json`: what happened to the scene last."""
    payload = {"partition_key": partition_key, "updated_at": time.time(), **status}
    imagery.catalog_store().write_bytes(
        imagery.scene_uri(partition_key, "status.json"),
        json.dumps(payload, sort_keys=True).encode(),
        "application/json",
    )


def clear_rejection(imagery: ImageryStore, partition_key: str) -> None:
    """Mark a scene that was rejected before and now passed the gate as pending again.

    Otherwise a later transient failure would leave it listed as rejected,
    and the retry schedule does not retry rejections.
    """
    uri = imagery.scene_uri(partition_key, "status.json")
    try:
        status = json.loads(imagery.catalog_store().read_bytes(uri))
    except StoreError:
        return
    if status.get("status") == "rejected":
        record_scene_status(imagery, partition_key, {"status": "pending", "stage": "source_images"})


def scene_failure(
    imagery: ImageryStore, partition_key: str, stage: str, exc: TileAssetsError, *, retries_left: bool = True
) -> Exception:
    """The exception to raise for a scene that failed: retried when transient, else final.

    The reason is recorded in the scene's status.json so the catalog lists the
    scene as failed, with why, instead of leaving it silently missing; a
    `RejectedSceneError` is recorded as "rejected", with the check that
    rejected it, its reasons and the gate policy's fingerprint. A transient
    error is returned as is for the step's retry policy, unless the step has
    no `retries_left`: then it is recorded and final like any other.
    """
    transient = isinstance(exc, TransientError)
    if transient and retries_left:
        return exc
    reason = f"{exc.reason} (still failing on the last retry)" if transient else exc.reason
    status: dict[str, Any] = {
        "status": "failed",
        "stage": stage,
        "object": exc.obj,
        "error_type": type(exc).__name__,
        "reason": reason,
    }
    description = f"{stage} failed for {exc.obj}: {reason}"
    if isinstance(exc, RejectedSceneError):
        rejection = {"check": exc.check, "reasons": list(exc.reasons), "policy": exc.policy}
        status |= {"status": "rejected", **rejection}
        description = f"{stage}: {exc.obj} {exc.reason}"
    record_scene_status(imagery, partition_key, status)
    return dg.Failure(
        description=description,
        metadata={k: v for k, v in status.items() if k not in ("status", "stage")},
        allow_retries=False,
    )
