"""The hand-written to_dict / from_dict of Finding and TileResult keep the generic JSON form."""

from __future__ import annotations

import json
from dataclasses import asdict

from tile_assets.core.types import Finding, TileResult

FINDING = Finding(
    "building", 0.9, (10.0, 20.0, 60.0, 80.0), "r000c001", 3000.0, "classical", "1.0.0",
    {"ndvi": 0.1, "polygon": [[0, 0], [1, 1]]},
)
SECOND = Finding("water", 0.5, (0.0, 0.0, 5.0, 5.0))
RESULT = TileResult("r000c001", "ok", (FINDING, SECOND), {"water": 0.25}, 100)


def test_to_dict_is_asdict() -> None:
    assert FINDING.to_dict() == asdict(FINDING)
    assert list(FINDING.to_dict()) == list(asdict(FINDING))
    assert RESULT.to_dict() == asdict(RESULT) | {"findings": [asdict(f) for f in RESULT.findings]}
    assert list(RESULT.to_dict()) == list(asdict(RESULT))


def test_json_round_trip() -> None:
    back = TileResult.from_dict(json.loads(json.dumps(RESULT.to_dict())))
    assert back == RESULT
    assert isinstance(back.findings, tuple) and isinstance(back.findings[0].box, tuple)


def test_from_dict_defaults_and_extra_keys() -> None:
    f = Finding.from_dict({"label": "x", "score": 1.0, "box": [0, 0, 1, 1], "run_group": "g"})
    assert f == Finding("x", 1.0, (0, 0, 1, 1))
    r = TileResult.from_dict({"tile_id": "t", "status": "failed", "error_type": "ReadError"})
    assert r == TileResult("t", "failed", error_type="ReadError")
