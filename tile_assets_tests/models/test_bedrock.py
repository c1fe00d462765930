"""The `bedrock` plugin and the optional Bedrock synthesis, against botocore's Stubber.

Bedrock cannot run here, so the client is a real boto3 `bedrock-runtime`
client with Stubber answering: requests are validated against the service
model, responses parsed by botocore as in production. Tiles are real.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.stub import ANY, Stubber
from PIL import Image

from tile_assets.core.batches import BatchPlan
from tile_assets.core.errors import ModelError, TransientModelError
from tile_assets.core.image import TileImage
from tile_assets.core.inference import TransientBatchError, run_batch
from tile_assets.core.models import available_models, load_model
from tile_assets.core.models.bedrock import BedrockModel, bedrock_client, parse_json_reply
from tile_assets.core.models.classical import ClassicalModel
from tile_assets.core.raster import TileReader
from tile_assets.core.synthesis_llm import describe_with_bedrock, lean_facts
from tile_assets.core.types import GridSpec, TileWindow
from tile_assets_tests.models.pipeline import STORE, describe_scene, run_scene

INBOX = Path(__file__).resolve().parents[2] / "data" / "inbox"
ASTRONAUT = INBOX / "astronaut.png"
MODEL_ID = "amazon.nova-lite-v1:0"
CAPABLE_MODEL_ID = "anthropic.claude-3-5-sonnet-20240620-v1:0"
SPEC = GridSpec(tile_size=512, overlap=0)


def reply(text: str, stop: str = "end_turn") -> dict[str, Any]:
    """A Converse response as Bedrock returns it."""
    return {
        "output": {"message": {"role": "assistant", "content": [{"text": text}]}},
        "stopReason": stop,
        "usage": {"inputTokens": 1200, "outputTokens": 80, "totalTokens": 1280},
        "metrics": {"latencyMs": 900},
    }


EXPECTED = {"modelId": MODEL_ID, "messages": ANY, "system": ANY, "inferenceConfig": ANY}


@pytest.fixture
def stubbed() -> Iterator[tuple[Any, Stubber, list[dict[str, Any]]]]:
    """A bedrock-runtime client without retries, its Stubber, and the requests it was sent."""
    client = boto3.client(
        "bedrock-runtime", region_name="us-east-1", config=Config(retries={"total_max_attempts": 1})
    )
    sent: list[dict[str, Any]] = []
    client.meta.events.register(
        "provide-client-params.bedrock-runtime.Converse", lambda params, **_: sent.append(params)
    )
    with Stubber(client) as stubber:
        yield client, stubber, sent
        stubber.assert_no_pending_responses()


def tiles(*windows: TileWindow) -> list[TileImage]:
    with TileReader(STORE, str(ASTRONAUT)) as reader:
        return [reader.read(w, SPEC) for w in windows]


WHOLE = TileWindow("r000c000", 0, 0, 0, 0, 512, 512)
LEFT = TileWindow("r000c000", 0, 0, 0, 0, 256, 512)
RIGHT = TileWindow("r000c001", 0, 1, 256, 0, 256, 512)


def test_registered_and_params_exclude_the_client() -> None:
    assert available_models()["bedrock"] == "tile_assets.core.models.bedrock:BedrockModel"
    model = load_model("bedrock", {"model_id": MODEL_ID, "labels": ["Face", "flag"]})
    assert isinstance(model, BedrockModel)
    assert model.params()["labels"] == ["face", "flag"]
    assert "client" not in model.params()
    assert json.loads(json.dumps(model.params())) == model.params()


def test_client_comes_from_the_standard_chain_with_the_given_region() -> None:
    client = bedrock_client("eu-west-1")
    assert client.meta.service_model.service_name == "bedrock-runtime"
    assert client.meta.region_name == "eu-west-1"
    assert client.meta.config.retries["mode"] == "standard"


def test_an_accepted_reply_becomes_findings_in_tile_pixels(stubbed: Any) -> None:
    client, stubber, sent = stubbed
    text = (
        "Sure! Here is what I see:\n```json\n"
        + json.dumps(
            {
                "findings": [
                    {"label": "Face", "score": 0.93, "box": [88, 33, 136, 81]},
                    {"label": "flag", "score": "0.6", "box": [0, 0, 50, 120]},
                    {"label": "helmet", "box": [140, 170, 400, 300]},
                    {"label": "bad box", "score": 0.9, "box": [10, 20]},
                    {"label": "", "score": 0.9, "box": [1, 2, 3, 4]},
                    {"label": "outside", "score": 0.9, "box": [300, 300, 400, 400]},
                ]
            }
        )
        + "\n```\nLet me know if you need more."
    )
    stubber.add_response("converse", reply(text), EXPECTED)
    model = BedrockModel(model_id=MODEL_ID, max_image_side=256, client=client)
    (prediction,) = model.predict(tiles(WHOLE))

    # The 512 px tile was sent at 256 px: boxes come back doubled, clipped to the tile.
    found = {f.label: f for f in prediction.findings}
    assert set(found) == {"face", "flag", "helmet"}
    assert found["face"].box == (176.0, 66.0, 272.0, 162.0)
    assert found["face"].score == 0.93
    assert found["flag"].score == 0.6
    assert found["helmet"].score == 1.0  # no score given: taken as certain
    assert found["helmet"].box == (280.0, 340.0, 512.0, 512.0)

    (request,) = sent
    image_block, text_block = request["messages"][0]["content"]
    png = image_block["image"]["source"]["bytes"]
    assert image_block["image"]["format"] == "png"
    assert Image.open(io.BytesIO(png)).size == (256, 256)
    assert "256 x 256 pixels" in text_block["text"] and '"findings"' in text_block["text"]
    assert request["inferenceConfig"] == {"maxTokens": 2048, "temperature": 0.0}


def test_labels_narrow_the_prompt_and_filter_the_reply(stubbed: Any) -> None:
    client, stubber, sent = stubbed
    answer = {
        "findings": [
            {"label": "face", "score": 0.9, "box": [170, 60, 270, 160]},
            {"label": "rocket", "score": 0.8, "box": [380, 0, 470, 280]},
        ]
    }
    stubber.add_response("converse", reply(json.dumps(answer)), EXPECTED)
    model = BedrockModel(model_id=MODEL_ID, labels=("face",), prompt="Ignore logos.", client=client)
    (prediction,) = model.predict(tiles(WHOLE))
    assert [f.label for f in prediction.findings] == ["face"]
    prompt = sent[0]["messages"][0]["content"][1]["text"]
    assert "these kinds: face" in prompt and prompt.endswith("Ignore logos.")


def test_a_malformed_reply_fails_only_its_tile_and_other_tiles_are_not_asked_twice(
    stubbed: Any,
) -> None:
    client, stubber, sent = stubbed
    good = {"findings": [{"label": "face", "score": 0.9, "box": [170, 60, 256, 160]}]}
    stubber.add_response("converse", reply(json.dumps(good)), EXPECTED)
    stubber.add_response("converse", reply("I cannot help with that."), EXPECTED)
    # run_batch retries the failed chunk tile by tile: the good tile is remembered,
    # the bad one is asked again and fails again.
    stubber.add_response("converse", reply('{"findings": "none"}'), EXPECTED)
    model = BedrockModel(model_id=MODEL_ID, client=client)
    scene = describe_scene(ASTRONAUT)
    report = run_batch(STORE, scene, BatchPlan("b00000", (LEFT, RIGHT)), SPEC, model)
    left, right = report.results
    assert left.status == "ok" and [f.label for f in left.findings] == ["face"]
    assert left.findings[0].model == "bedrock"
    assert right.status == "failed" and right.error_type == "ModelError"
    assert "no findings list" in right.error_message
    assert len(sent) == 3


@pytest.mark.parametrize(
    ("text", "stop", "message"),
    [
        ("no json here", "end_turn", "not JSON"),
        ('{"findings": [{"label": "face", "box": [1, 2, 3, 4]}', "max_tokens", "maxTokens"),
        ("", "end_turn", "no text"),
    ],
)
def test_unreadable_replies_are_model_errors(
    stubbed: Any, text: str, stop: str, message: str
) -> None:
    client, stubber, _ = stubbed
    response = reply(text, stop)
    if not text:
        response["output"]["message"]["content"] = []
    stubber.add_response("converse", response, EXPECTED)
    with pytest.raises(ModelError, match=message) as info:
        BedrockModel(model_id=MODEL_ID, client=client).predict(tiles(LEFT))
    assert not isinstance(info.value, TransientModelError)
    assert info.value.obj == "r000c000"


def test_throttling_is_transient_and_the_batch_is_retried_or_recorded(stubbed: Any) -> None:
    client, stubber, _ = stubbed
    for _ in range(2):
        stubber.add_client_error(
            "converse", "ThrottlingException", "Too many requests", http_status_code=429
        )
    model = BedrockModel(model_id=MODEL_ID, client=client)
    with pytest.raises(TransientModelError, match="ThrottlingException"):
        model.predict(tiles(LEFT))
    scene = describe_scene(ASTRONAUT)
    with pytest.raises(TransientBatchError):
        run_batch(STORE, scene, BatchPlan("b00000", (LEFT,)), SPEC, model, final_attempt=False)


def test_validation_errors_are_permanent(stubbed: Any) -> None:
    client, stubber, _ = stubbed
    stubber.add_client_error(
        "converse", "ValidationException", "bad model id", http_status_code=400
    )
    with pytest.raises(ModelError, match="ValidationException: bad model id") as info:
        BedrockModel(model_id=MODEL_ID, client=client).predict(tiles(LEFT))
    assert not isinstance(info.value, TransientModelError)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"findings": []}', {"findings": []}),
        ('```json\n[{"label": "a"}]\n```', [{"label": "a"}]),
        ('Result: {"findings": [1]} hope it helps {not json}', {"findings": [1]}),
        ('{broken {"findings": []}', {"findings": []}),
    ],
)
def test_json_is_found_inside_prose_and_fences(text: str, expected: Any) -> None:
    assert parse_json_reply(text, "t") == expected


# --- synthesis by a more capable model, from the lean facts only --------------------


@pytest.fixture(scope="module")
def rgb_byte_summary() -> dict[str, Any]:
    """A real synthesis: RGB.byte.tif (georeferenced) with the classical model."""
    run = run_scene(INBOX / "RGB.byte.tif", ClassicalModel(), GridSpec(tile_size=256, overlap=0.2))
    return run.synthesis


def test_llm_synthesis_sends_only_the_lean_facts_and_returns_the_text(
    stubbed: Any, rgb_byte_summary: dict[str, Any]
) -> None:
    client, stubber, sent = stubbed
    words = "Found 40 objects, mostly dark objects, spread unevenly. Coverage 100%."
    stubber.add_response("converse", reply(words), {**EXPECTED, "modelId": CAPABLE_MODEL_ID})
    out = describe_with_bedrock(rgb_byte_summary, CAPABLE_MODEL_ID, client=client)
    assert out["text"] == words and out["model_id"] == CAPABLE_MODEL_ID

    (request,) = sent
    (message,) = request["messages"]
    assert [list(block) for block in message["content"]] == [["text"]]  # never an image
    prompt = message["content"][0]["text"]
    facts = json.loads(prompt[prompt.index("{") :])
    assert facts == json.loads(json.dumps(lean_facts(rgb_byte_summary), default=str))
    assert facts == json.loads(json.dumps(out["facts"], default=str))
    for key in ("counts_by_label", "cover", "spatial_summary", "coverage", "tiles_failed"):
        assert facts[key] == rgb_byte_summary[key]
    assert facts["notable"] and all("centre_lonlat" in n for n in facts["notable"])
    assert "uri" not in facts and "description" not in facts
    assert "longitude/latitude" in prompt and "failed" in prompt


def test_llm_synthesis_throttled_is_transient(
    stubbed: Any, rgb_byte_summary: dict[str, Any]
) -> None:
    client, stubber, _ = stubbed
    stubber.add_client_error("converse", "ThrottlingException", "slow down", http_status_code=429)
    with pytest.raises(TransientModelError):
        describe_with_bedrock(rgb_byte_summary, MODEL_ID, client=client)
