"""`area_policy`: where an image may be, from allowed and denied areas in a GeoJSON file.

Areas are GeoJSON (RFC 7946: lon/lat, WGS84). Each feature is an "allow" or
a "deny" area (its `policy` property, else the file's default) named by its
`name` property or id. A georeferenced image is rejected when its footprint
touches a denied area, or when allowed areas exist and the footprint is not
entirely inside them. Images without georeferencing follow a rule of their own.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from shapely import make_valid, unary_union
from shapely.errors import GEOSException
from shapely.geometry import box, shape
from shapely.geometry.base import BaseGeometry

from tile_assets.core.errors import PolicyError
from tile_assets.core.gate.base import CheckOutcome, Rendition
from tile_assets.core.geo import footprint_wgs84
from tile_assets.core.types import SceneInfo

AreaRule = Literal["allow", "deny"]
NonGeoreferencedRule = Literal["accept", "reject"]
AREA_RULES: tuple[AreaRule, ...] = ("allow", "deny")


@dataclass(frozen=True)
class Area:
    """One allowed or denied area, in lon/lat."""

    name: str
    rule: AreaRule
    geometry: BaseGeometry


def _features(doc: Any, source: str) -> list[dict[str, Any]]:
    kind = doc.get("type") if isinstance(doc, dict) else None
    if kind == "FeatureCollection" and isinstance(doc.get("features"), list):
        return list(doc["features"])
    if kind == "Feature":
        return [doc]
    if isinstance(kind, str):
        return [{"type": "Feature", "geometry": doc, "properties": {}}]
    raise PolicyError(source, "not GeoJSON: expected a FeatureCollection, a Feature or a geometry")


def _area(feature: dict[str, Any], index: int, source: str, default_rule: AreaRule) -> Area:
    props = feature.get("properties") or {}
    name = str(props.get("name") or feature.get("id") or f"feature {index}")
    rule = props.get("policy", default_rule)
    if rule not in AREA_RULES:
        raise PolicyError(source, f"{name}: policy {rule!r} is neither 'allow' nor 'deny'")
    try:
        geometry = make_valid(shape(feature["geometry"]))
    except (KeyError, TypeError, ValueError, AttributeError, GEOSException) as exc:
        raise PolicyError(source, f"{name}: invalid geometry ({exc})") from exc
    if geometry.is_empty or geometry.area == 0:
        raise PolicyError(source, f"{name}: the geometry has no area")
    return Area(name, rule, geometry)


def load_areas(data: bytes, source: str, default_rule: AreaRule = "deny") -> tuple[Area, ...]:
    """Parse a GeoJSON policy; `default_rule` applies to features without a `policy` property."""
    try:
        doc = json.loads(data)
    except ValueError as exc:
        raise PolicyError(source, f"not JSON: {exc}") from exc
    areas = tuple(_area(f, i, source, default_rule) for i, f in enumerate(_features(doc, source)))
    if not areas:
        raise PolicyError(source, "no areas in the policy")
    return areas


def scene_footprint(scene: SceneInfo) -> BaseGeometry | None:
    """The image outline in lon/lat: its four corners, or its GCP extent; None without a location."""
    footprint = footprint_wgs84(scene)
    if footprint is None and scene.bounds_wgs84 is not None:
        return box(*scene.bounds_wgs84)
    return footprint


@dataclass(frozen=True)
class AreaPolicyCheck:
    """Rejects images that touch a denied area or leave the allowed ones."""

    areas: Sequence[Area]
    non_georeferenced: NonGeoreferencedRule = "accept"
    name: str = "area_policy"

    def check(self, scene: SceneInfo, rendition: Rendition) -> CheckOutcome:
        footprint = scene_footprint(scene)
        if footprint is None:
            if self.non_georeferenced == "reject":
                reason = "not georeferenced: the area policy needs to know where the image is"
                return CheckOutcome(self.name, False, (reason,), {"georeferenced": False})
            return CheckOutcome(self.name, True, (), {"georeferenced": False})
        reasons = [
            f"footprint intersects denied area {a.name!r}"
            for a in self.areas
            if a.rule == "deny" and a.geometry.intersects(footprint)
        ]
        allowed = [a for a in self.areas if a.rule == "allow"]
        details: dict[str, Any] = {
            "georeferenced": True,
            "footprint_bounds_wgs84": [round(v, 6) for v in footprint.bounds],
        }
        if allowed:
            inside = unary_union([a.geometry for a in allowed])
            details["inside_allowed"] = [
                a.name for a in allowed if a.geometry.intersects(footprint)
            ]
            if not inside.covers(footprint):
                outside = footprint.difference(inside).area / footprint.area
                names = ", ".join(repr(a.name) for a in allowed)
                reasons.append(f"footprint is {outside:.1%} outside the allowed areas ({names})")
        return CheckOutcome(self.name, not reasons, tuple(reasons), details)
