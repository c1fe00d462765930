"""Which object each scene partition stands for, kept beside the catalog.

Partition keys are short and sanitized, so the original URI and the version
that was registered are written to `<catalog>/_registry/<key>.json` by
whoever registers the partition (sensor or CLI). A local file's entry also
keeps the content hash its registrant took to version it, so that
`source_images` need not read the file whole a second time.
"""

from __future__ import annotations

import json
from typing import Any

from tile_assets.core.errors import StoreError
from tile_assets.core.source_version import Fingerprint
from tile_assets.core.store import Store, join_uri
from tile_assets.core.types import ObjectInfo


def registry_uri(catalog: str, partition_key: str) -> str:
    return join_uri(catalog, "_registry", f"{partition_key}.json")


def register_scene(
    store: Store, catalog: str, partition_key: str, obj: ObjectInfo, fingerprint: Fingerprint | None = None
) -> None:
    """Record the object a partition stands for and, if one was taken, its fingerprint (idempotent)."""
    payload: dict = {"partition_key": partition_key, **obj.to_dict()}
    if fingerprint is not None:
        payload["fingerprint"] = fingerprint.to_dict()
    store.write_bytes(
        registry_uri(catalog, partition_key),
        json.dumps(payload, sort_keys=True).encode(),
        "application/json",
    )


def lookup_registration(store: Store, catalog: str, partition_key: str) -> tuple[ObjectInfo, Fingerprint | None]:
    """The object registered for a partition and the fingerprint its registrant took (None when none
    was: S3, older entries); StoreError when it was never registered."""
    data = _registry_entry(store, catalog, partition_key)
    return ObjectInfo.from_dict(data), _fingerprint_in(data)


def registered_fingerprint(store: Store, catalog: str, partition_key: str) -> Fingerprint | None:
    """The fingerprint recorded with a partition's registration; None if none was (S3, older entries) or unreadable."""
    try:
        return _fingerprint_in(_registry_entry(store, catalog, partition_key))
    except (StoreError, ValueError):
        return None


def _registry_entry(store: Store, catalog: str, partition_key: str) -> Any:
    """A partition's registry entry, parsed; StoreError when it was never registered."""
    try:
        return json.loads(store.read_bytes(registry_uri(catalog, partition_key)))
    except StoreError as exc:
        raise StoreError(partition_key, "scene is not registered (run the sensor or the CLI first)") from exc


def _fingerprint_in(entry: Any) -> Fingerprint | None:
    try:
        return Fingerprint.from_dict(entry["fingerprint"])
    except (KeyError, TypeError):
        return None


def forget_scene(store: Store, catalog: str, partition_key: str) -> None:
    """Drop a partition's registry entry once its object is gone from the inbox."""
    store.delete(registry_uri(catalog, partition_key))
