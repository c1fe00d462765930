"""Names derived from content: scene partition keys and tile-result cache keys."""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from typing import Any
from urllib.parse import unquote

from tile_assets.core.types import TileWindow

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
MAX_STEM = 48


def _short_hash(text: str, n: int = 8) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:n]


def scene_key(uri: str) -> str:
    """A readable, unique partition key for an object URI.

    The sanitized file stem (ASCII letters, digits, `._-` only, so never `,`
    `|` `/` or spaces) plus a short hash of the full URI, so two objects with
    the same name under different prefixes never collide.
    """
    name = unquote(uri.rstrip("/").rsplit("/", 1)[-1])
    stem = name.rsplit(".", 1)[0] if "." in name else name
    ascii_stem = unicodedata.normalize("NFKD", stem).encode("ascii", "ignore").decode()
    safe = _UNSAFE.sub("_", ascii_stem).strip("._-")[:MAX_STEM] or "image"
    return f"{safe}-{_short_hash(uri)}"


def model_key(name: str, version: str, params: dict[str, Any]) -> str:
    """Identity of a model configuration: name, version and a hash of its params."""
    digest = _short_hash(json.dumps(params, sort_keys=True, default=str), 12)
    return f"{_UNSAFE.sub('_', name)}-{_UNSAFE.sub('_', version)}-{digest}"


def tile_cache_key(fingerprint: str, window: TileWindow) -> str:
    """Identity of one tile's pixels: the source version plus the window."""
    return _short_hash(
        f"{fingerprint}:{window.col_off}:{window.row_off}:{window.width}:{window.height}", 24
    )
