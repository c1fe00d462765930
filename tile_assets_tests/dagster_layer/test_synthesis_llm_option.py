"""scene_synthesis's optional Bedrock description: off by default, never fatal unless transient."""

from __future__ import annotations

import dagster as dg
import pytest

import tile_assets.assets.synthesis as synthesis_asset
from tile_assets.assets.synthesis import SynthesisConfig, llm_description
from tile_assets.core.errors import ModelError, TransientModelError

FACTS = {"counts_by_label": {"bright_object": 2}, "coverage": 1.0}


def test_not_configured_calls_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: object, **kwargs: object) -> dict:
        raise AssertionError("Bedrock must not be called without llm_model_id")

    monkeypatch.setattr(synthesis_asset, "describe_with_bedrock", fail)
    assert llm_description(dg.build_asset_context(), SynthesisConfig(), FACTS) is None


def test_model_error_keeps_the_deterministic_description(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object, **kwargs: object) -> dict:
        raise ModelError("bedrock", "malformed reply")

    monkeypatch.setattr(synthesis_asset, "describe_with_bedrock", broken)
    config = SynthesisConfig(llm_model_id="anthropic.claude-x")
    assert llm_description(dg.build_asset_context(), config, FACTS) is None


def test_throttling_is_raised_for_the_retry_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    def throttled(*args: object, **kwargs: object) -> dict:
        raise TransientModelError("bedrock", "ThrottlingException")

    monkeypatch.setattr(synthesis_asset, "describe_with_bedrock", throttled)
    with pytest.raises(TransientModelError):
        llm_description(dg.build_asset_context(), SynthesisConfig(llm_model_id="m"), FACTS)


def test_configured_result_is_returned(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict = {}

    def written(summary: dict, model_id: str, **kwargs: object) -> dict:
        seen.update(summary=summary, model_id=model_id)
        return {"text": "Two bright objects.", "model_id": model_id, "facts": summary}

    monkeypatch.setattr(synthesis_asset, "describe_with_bedrock", written)
    out = llm_description(dg.build_asset_context(), SynthesisConfig(llm_model_id="m"), FACTS)
    assert out is not None and out["text"] == "Two bright objects."
    assert seen == {"summary": FACTS, "model_id": "m"}
