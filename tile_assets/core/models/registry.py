"""Find models by name through the `tile_assets.models` entry-point group, or by import path.

Entry points let a separate package add a model (an ONNX detector, a cloud
API) by declaring it in its own pyproject, with no change here; an import
path `package.module:ClassName` plugs in a model that declares none (tests,
notebooks, a user's own module).
"""

from __future__ import annotations

import inspect
import logging
from functools import cache
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from tile_assets.core.errors import ModelError
from tile_assets.core.models.base import TileModel

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "tile_assets.models"
DEFAULT_MODEL = "classical"
"""The model a run uses unless told otherwise (`ClassicalModel`: CPU-only, nothing to download)."""


@cache
def _entry_points() -> dict[str, EntryPoint]:
    """Installed model plugins; read once per process (~25 ms a scan of every distribution)."""
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def available_models() -> dict[str, str]:
    """Registered model names mapped to the `module:Class` they load, sorted by name."""
    return {name: ep.value for name, ep in sorted(_entry_points().items())}


def _entry_point_for(name: str) -> EntryPoint:
    """The registered entry point called `name`, or one made from an import path `module:Class`."""
    if ":" in name:
        return EntryPoint(name=name, value=name, group=ENTRY_POINT_GROUP)
    eps = _entry_points()
    if name not in eps:
        known = ", ".join(sorted(eps)) or "none"
        raise ModelError(name, f"unknown model; available: {known} (or an import path module:Class)")
    return eps[name]


def load_model(name: str, params: dict[str, Any] | None = None) -> TileModel:
    """Instantiate the model registered as `name` (or at import path `module:Class`) with `params`.

    Raises `ModelError` for an unknown name (listing the available ones), a
    class that fails to import, or params the model does not accept.
    """
    ep = _entry_point_for(name)
    try:
        cls = ep.load()
    except (ImportError, AttributeError) as exc:
        raise ModelError(name, f"cannot load {ep.value}: {exc}") from exc
    kwargs = dict(params or {})
    _check_param_names(name, cls, kwargs)
    try:
        model = cls(**kwargs)
    except TypeError as exc:
        raise ModelError(name, f"bad params: {exc}") from exc
    if not isinstance(model, TileModel):
        raise ModelError(name, f"{ep.value} does not implement TileModel")
    log.debug("loaded model %s %s with params %s", model.name, model.version, model.params())
    return model


def _check_param_names(name: str, cls: type, kwargs: dict[str, Any]) -> None:
    """Reject unknown keyword params up front with a message naming them and the accepted ones."""
    sig = inspect.signature(cls)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values()):
        return
    accepted = {
        p.name
        for p in sig.parameters.values()
        if p.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    }
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise ModelError(
            name,
            f"unknown param(s) {', '.join(unknown)}; accepted: {', '.join(sorted(accepted))}",
        )
