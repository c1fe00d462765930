"""The gate's contract: checks that pass or reject a scene with reasons, run cheapest first.

A check sees the scene's description and, only if it asks, a small
rendition of its pixels (read at most once and shared by every check).
The gate stops at the first rejection, so a paid check (moderation) never
runs on an image a free one already turned away.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from tile_assets.core.errors import RejectedSceneError, TileAssetsError
from tile_assets.core.types import SceneInfo

VALIDATION = "validation"
"""The name the format and size validation (`raster.describe`) reports under."""

Rendition = Callable[[], np.ndarray]
"""Returns the scene as a small (h, w, bands) uint8 picture, 3 bands RGB or 1 gray."""


@dataclass(frozen=True)
class CheckOutcome:
    """What one check concluded: passed or not, why, and what it measured (JSON-able)."""

    name: str
    passed: bool
    reasons: tuple[str, ...] = ()
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "passed": self.passed,
            "reasons": list(self.reasons),
            "details": self.details,
        }


class GateCheck(Protocol):
    """One screening rule; raises only for errors of its own (policy file, API), never to reject."""

    @property
    def name(self) -> str: ...

    def check(self, scene: SceneInfo, rendition: Rendition) -> CheckOutcome: ...


@dataclass(frozen=True)
class GateDecision:
    """The gate's verdict: the outcome of every check that ran, and the ones skipped after a rejection."""

    outcomes: tuple[CheckOutcome, ...]
    skipped: tuple[str, ...] = ()

    @property
    def passed(self) -> bool:
        return all(o.passed for o in self.outcomes)

    @property
    def rejection(self) -> CheckOutcome | None:
        """The outcome that rejected the scene, None when it passed."""
        return next((o for o in self.outcomes if not o.passed), None)

    def summary(self) -> str:
        """One line for logs and the UI: "passed (a, b)" or "rejected by a: why"."""
        rejection = self.rejection
        if rejection is None:
            return f"passed ({', '.join(o.name for o in self.outcomes)})"
        return f"rejected by {rejection.name}: {'; '.join(rejection.reasons)}"

    def error(self, uri: str, policy: str) -> RejectedSceneError:
        """The error a rejected scene fails with, naming the gate policy it was rejected under.

        A validation rejection does not depend on the policy, so it names none.
        """
        rejection = self.rejection
        if rejection is None:
            raise ValueError("the scene passed the gate; there is no rejection to raise")
        applies = "" if rejection.name == VALIDATION else policy
        return RejectedSceneError(uri, rejection.name, rejection.reasons, applies)

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "outcomes": [o.to_dict() for o in self.outcomes],
            "skipped": list(self.skipped),
        }


def validation_outcome(error: TileAssetsError | None = None) -> CheckOutcome:
    """The format and size validation as a gate outcome: passed, or rejected with the error's reason."""
    if error is None:
        return CheckOutcome(VALIDATION, True)
    return CheckOutcome(VALIDATION, False, (error.reason,), {"error_type": type(error).__name__})


class SharedRendition:
    """A rendition read on first use and reused by every later check."""

    def __init__(self, read: Rendition) -> None:
        self._read = read
        self._picture: np.ndarray | None = None

    def __call__(self) -> np.ndarray:
        if self._picture is None:
            self._picture = self._read()
        return self._picture


def run_gate(checks: Sequence[GateCheck], scene: SceneInfo, rendition: Rendition) -> GateDecision:
    """Run `checks` in order after a passed validation, stopping at the first rejection.

    Order them cheapest first: metadata-only checks, then local pixel checks,
    then cloud calls. `rendition` is wrapped so the pixels are read at most
    once, and only if some check asks for them.
    """
    shared = SharedRendition(rendition)
    outcomes = [validation_outcome()]
    for index, gate_check in enumerate(checks):
        outcome = gate_check.check(scene, shared)
        outcomes.append(outcome)
        if not outcome.passed:
            return GateDecision(tuple(outcomes), tuple(c.name for c in checks[index + 1 :]))
    return GateDecision(tuple(outcomes))


def policy_fingerprint(config: Mapping[str, Any], files: Mapping[str, bytes]) -> str:
    """A short digest of a gate configuration and the contents of its policy files."""
    doc = {
        "config": dict(config),
        "files": {path: hashlib.sha256(data).hexdigest() for path, data in files.items()},
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Gate:
    """A configured gate: its checks, cheapest first, and the fingerprint of the policy they enforce."""

    checks: tuple[GateCheck, ...]
    policy: str

    def screen(self, scene: SceneInfo, rendition: Rendition) -> GateDecision:
        return run_gate(self.checks, scene, rendition)

    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.checks)
