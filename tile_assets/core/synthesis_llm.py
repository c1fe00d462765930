"""An optional scene description written by a more capable model, from the lean merged findings only.

The deterministic synthesis (`synthesis.synthesize`) stays the default and
the source of every number. This module hands a model (Bedrock, Converse
API, text only) the compact facts that synthesis computed — counts, cover,
distribution, notable objects with their locations, coverage and failed
tiles — never pixels, never the raw per-tile findings, and asks for a short
plain description of them. The facts sent are returned with the text, so a
reader can check one against the other.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from tile_assets.core.errors import ModelError
from tile_assets.core.models.bedrock import bedrock_client, converse_text

MAX_FAILED_SENT = 20
"""Failed tiles listed by id; the count is always sent."""
LEAN_FIELDS = (
    "scene_key",
    "georeferenced",
    "crs",
    "size_px",
    "counts_by_label",
    "total_findings",
    "cover",
    "spatial_summary",
    "spatial_grid",
    "tiles_planned",
    "tiles_ok",
    "tiles_failed",
    "coverage",
    "status",
    "model",
)
NOTABLE_FIELDS = ("label", "score", "box_px", "centre_px", "centre_lonlat")
SYSTEM_PROMPT = (
    "You write short, factual descriptions of analysed images for a catalog. You are given "
    "only facts computed from the analysis, as JSON. Use only those facts: do not guess what "
    "the image shows beyond them, do not invent numbers. Plain text, no markdown, no lists."
)
INSTRUCTIONS = """Describe this scene in three to six sentences. State:
- how many objects were found, by label;
- the cover fractions as percentages;
- how the findings are spread over the image (spatial_summary; spatial_grid is a 3x3 grid of counts, top row first);
- the notable objects and where they are: longitude/latitude (centre_lonlat) when given, otherwise pixel coordinates (centre_px), saying the image is not georeferenced;
- how much of the scene was analysed (coverage, tiles_ok of tiles_planned) and which tiles failed, if any.

Facts:
"""


def lean_facts(summary: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a synthesis summary a describing model may see: aggregates, no pixels."""
    facts = {key: summary[key] for key in LEAN_FIELDS if key in summary}
    facts["notable"] = [
        {key: item[key] for key in NOTABLE_FIELDS if key in item}
        for item in summary.get("notable", [])
    ]
    failed = list(summary.get("failed_tiles", []))
    facts["failed_tiles"] = [
        {"tile_id": f.get("tile_id", ""), "error_type": f.get("error_type", "")}
        for f in failed[:MAX_FAILED_SENT]
    ]
    return facts


def describe_with_bedrock(
    summary: Mapping[str, Any],
    model_id: str,
    *,
    client: Any = None,
    region: str = "",
    max_tokens: int = 800,
    temperature: float = 0.0,
) -> dict[str, Any]:
    """A model-written description of `summary` (the output of `synthesize`), with what it was given.

    Returns {"text", "model_id", "facts"}. Raises `TransientModelError` when
    Bedrock throttles or is unavailable and `ModelError` for any other
    failure; the caller keeps the deterministic description either way.
    """
    if not model_id:
        raise ModelError("synthesis", "model_id is required")
    facts = lean_facts(summary)
    request = {
        "modelId": model_id,
        "system": [{"text": SYSTEM_PROMPT}],
        "messages": [
            {
                "role": "user",
                "content": [
                    {"text": INSTRUCTIONS + json.dumps(facts, sort_keys=True, default=str)}
                ],
            }
        ],
        "inferenceConfig": {"maxTokens": max_tokens, "temperature": temperature},
    }
    obj = f"synthesis {summary.get('scene_key', '')}".strip()
    text = converse_text(client if client is not None else bedrock_client(region), obj, request)
    return {"text": text.strip(), "model_id": model_id, "facts": facts}
