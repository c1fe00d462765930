"""A vision model on Amazon Bedrock, per tile, through the Converse API.

The reference workflow's cheap-model-per-tile step: each tile goes to the
model as a PNG with a prompt asking for JSON findings (label, score, box in
the image's pixels); the reply is parsed defensively, because models wrap
JSON in prose or code fences, and a reply that cannot be read fails that
tile with a `ModelError`. Throttling, timeouts and unavailable models raise
`TransientModelError`, which the pipeline retries with backoff (after
botocore's own standard-mode retries). Credentials and region come from
boto3's standard chain (environment, profile, instance role).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import re
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import boto3
from botocore.config import Config as BotoConfig
from botocore.exceptions import BotoCoreError, ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as BotoConnectionError
from PIL import Image

from tile_assets.core.errors import ModelError, TransientModelError
from tile_assets.core.image import TileImage
from tile_assets.core.models.base import TilePrediction
from tile_assets.core.models.display import clip_box, on_valid_pixels, tile_rgb8
from tile_assets.core.types import Finding

log = logging.getLogger(__name__)

DEFAULT_MODEL_ID = "amazon.nova-lite-v1:0"
TRANSIENT_CODES = frozenset(
    {
        "ThrottlingException",
        "TooManyRequestsException",
        "ServiceUnavailableException",
        "InternalServerException",
        "ModelTimeoutException",
        "ModelNotReadyException",
        "RequestTimeout",
        "RequestTimeoutException",
    }
)
"""Bedrock error codes worth retrying; every other error is permanent for the request."""
SYSTEM_PROMPT = (
    "You are an image analyst. You look at one tile cut from a larger image and report "
    "what it shows as JSON only, with no prose before or after it."
)
_VERSION = "1.0.0"
_MEMO_SIZE = 256
_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL | re.IGNORECASE)


def bedrock_client(region: str = "", max_attempts: int = 5) -> Any:
    """A `bedrock-runtime` client from the standard credential chain, retrying throttles itself first."""
    config = BotoConfig(
        retries={"mode": "standard", "max_attempts": max_attempts}, read_timeout=120
    )
    try:
        return boto3.client("bedrock-runtime", region_name=region or None, config=config)
    except Exception as exc:  # e.g. NoRegionError: a setup problem, not transient
        raise ModelError("bedrock", f"cannot create a bedrock-runtime client: {exc}") from exc


def converse_text(client: Any, obj: str, request: dict[str, Any]) -> str:
    """Call `converse(**request)` and return the reply's text, with errors typed for retry.

    A throttled, timed-out or unavailable call raises `TransientModelError`;
    any other error, a reply cut off at `maxTokens` or one without text
    raises `ModelError`; both name `obj`.
    """
    try:
        response = client.converse(**request)
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        message = str(exc.response.get("Error", {}).get("Message", "")) or str(exc)
        error = TransientModelError if code in TRANSIENT_CODES else ModelError
        raise error(obj, f"Bedrock {code or 'error'}: {message}") from exc
    except (BotoConnectionError, HTTPClientError) as exc:
        raise TransientModelError(obj, f"Bedrock connection failed: {exc}") from exc
    except BotoCoreError as exc:
        raise ModelError(obj, f"Bedrock call failed: {exc}") from exc
    stop = response.get("stopReason", "")
    if stop == "max_tokens":
        raise ModelError(obj, "reply cut off at maxTokens; raise max_tokens")
    blocks = response.get("output", {}).get("message", {}).get("content", []) or []
    text = "".join(b.get("text", "") for b in blocks if isinstance(b, dict))
    if not text.strip():
        raise ModelError(obj, f"reply has no text (stopReason {stop or 'missing'})")
    usage = response.get("usage", {})
    log.debug(
        "%s: %s input / %s output tokens", obj, usage.get("inputTokens"), usage.get("outputTokens")
    )
    return text


def parse_json_reply(text: str, obj: str) -> Any:
    """The first JSON object or array in a model's reply (inside a code fence or prose)."""
    candidates = [m.group(1) for m in _FENCE.finditer(text)] + [text]
    decoder = json.JSONDecoder()
    for candidate in candidates:
        for start, char in enumerate(candidate):
            if char in "{[":
                try:
                    value, _ = decoder.raw_decode(candidate, start)
                except ValueError:
                    continue
                return value
    raise ModelError(obj, f"reply is not JSON: {text[:200]!r}")


@dataclass(frozen=True)
class BedrockModel:
    """Findings per tile from a Bedrock vision model (Nova, Claude, ...) via Converse.

    `labels` narrows what to look for (empty: any notable object) and is
    also a filter on the reply; `prompt` adds instructions; tiles larger
    than `max_image_side` are scaled down before sending and boxes scaled
    back. `client` is for tests (a stubbed client); by default one is made
    from the standard chain on first use.
    """

    name: ClassVar[str] = "bedrock"
    version: ClassVar[str] = _VERSION

    model_id: str = DEFAULT_MODEL_ID
    region: str = ""
    labels: tuple[str, ...] = ()
    prompt: str = ""
    max_image_side: int = 1024
    max_tokens: int = 2048
    temperature: float = 0.0
    min_score: float = 0.0
    client: Any = field(default=None, repr=False, compare=False)
    _lock: threading.Lock = field(
        default_factory=threading.Lock, init=False, repr=False, compare=False
    )
    _memo: OrderedDict[str, TilePrediction] = field(
        default_factory=OrderedDict, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "labels", tuple(str(x).strip().lower() for x in self.labels))
        if not self.model_id:
            raise ModelError(self.name, "model_id is required")
        if not 64 <= self.max_image_side <= 8000:
            raise ModelError(
                self.name, f"max_image_side must be in 64..8000, got {self.max_image_side}"
            )
        if (
            self.max_tokens < 64
            or not 0.0 <= self.temperature <= 1.0
            or not 0.0 <= self.min_score <= 1.0
        ):
            raise ModelError(self.name, "max_tokens >= 64, temperature and min_score in [0, 1]")

    def params(self) -> dict[str, Any]:
        """Model, prompt and limits; they enter the tile cache key (the client does not)."""
        return {
            "model_id": self.model_id,
            "region": self.region,
            "labels": list(self.labels),
            "prompt": self.prompt,
            "max_image_side": self.max_image_side,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "min_score": self.min_score,
        }

    def predict(self, tiles: Sequence[TileImage]) -> list[TilePrediction]:
        """One Converse call per tile; a tile already answered in this process is not asked again.

        The pipeline re-runs a failed batch tile by tile to isolate the bad
        tile; the memo keeps that from paying twice for the others.
        """
        return [self._predict_tile(tile) for tile in tiles]

    def _client(self) -> Any:
        with self._lock:
            if self.client is None:
                object.__setattr__(self, "client", bedrock_client(self.region))
            return self.client

    def _predict_tile(self, tile: TileImage) -> TilePrediction:
        rgb = tile_rgb8(tile)
        height, width = rgb.shape[:2]
        image = Image.fromarray(rgb)
        scale = min(1.0, self.max_image_side / max(width, height))
        if scale < 1.0:
            image = image.resize(
                (max(1, round(width * scale)), max(1, round(height * scale))),
                Image.Resampling.LANCZOS,
            )
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        png = buf.getvalue()
        key = f"{tile.window.tile_id}:{hashlib.sha256(png).hexdigest()}"
        with self._lock:
            if key in self._memo:
                return self._memo[key]
        request = {
            "modelId": self.model_id,
            "system": [{"text": SYSTEM_PROMPT}],
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"image": {"format": "png", "source": {"bytes": png}}},
                        {"text": self._prompt(*image.size)},
                    ],
                }
            ],
            "inferenceConfig": {"maxTokens": self.max_tokens, "temperature": self.temperature},
        }
        text = converse_text(self._client(), tile.window.tile_id, request)
        reply = parse_json_reply(text, tile.window.tile_id)
        sx, sy = width / image.size[0], height / image.size[1]
        found = self._findings(reply, tile.window.tile_id, sx, sy, width, height)
        prediction = TilePrediction(findings=tuple(on_valid_pixels(found, tile.valid)))
        with self._lock:
            self._memo[key] = prediction
            while len(self._memo) > _MEMO_SIZE:
                self._memo.popitem(last=False)
        return prediction

    def _prompt(self, width: int, height: int) -> str:
        targets = (
            "every object of these kinds: " + ", ".join(self.labels)
            if self.labels
            else "every distinct notable object (for example vehicles, buildings, people, animals, "
            "boats, signs and text)"
        )
        schema = '{"findings": [{"label": "<short lowercase noun>", "score": <confidence 0 to 1>, "box": [x0, y0, x1, y1]}]}'
        parts = [
            f"This image is {width} x {height} pixels. Find {targets}.",
            f"Reply with JSON only, exactly in this form: {schema}",
            (
                "Boxes are in pixels of this image: x to the right, y down, origin at the top-left "
                'corner, x1 > x0 and y1 > y0. Reply {"findings": []} when there is nothing.'
            ),
        ]
        if self.prompt:
            parts.append(self.prompt)
        return "\n".join(parts)

    def _findings(
        self, reply: Any, tile_id: str, sx: float, sy: float, width: int, height: int
    ) -> list[Finding]:
        """Findings from the parsed reply; items with a bad label, score or box are skipped and logged."""
        items = reply.get("findings") if isinstance(reply, dict) else reply
        if not isinstance(items, list):
            raise ModelError(tile_id, f"reply JSON has no findings list: {json.dumps(reply)[:200]}")
        found: list[Finding] = []
        skipped = 0
        for item in items:
            finding = self._finding(item, sx, sy, width, height)
            if finding is None:
                skipped += 1
            elif finding.score >= self.min_score and (
                not self.labels or finding.label in self.labels
            ):
                found.append(finding)
        if skipped:
            log.warning("tile %s: skipped %d malformed finding(s) in the reply", tile_id, skipped)
        return found

    def _finding(self, item: Any, sx: float, sy: float, width: int, height: int) -> Finding | None:
        if not isinstance(item, dict):
            return None
        label, box, score = item.get("label"), item.get("box"), item.get("score", 1.0)
        if not isinstance(label, str) or not label.strip():
            return None
        if not isinstance(box, list | tuple) or len(box) != 4:
            return None
        try:
            values = [float(v) for v in box]
            confidence = float(score)
        except (TypeError, ValueError):
            return None
        if not all(math.isfinite(v) for v in (*values, confidence)):
            return None
        scaled = clip_box(
            (values[0] * sx, values[1] * sy, values[2] * sx, values[3] * sy), width, height
        )
        if scaled is None:
            return None
        return Finding(
            label=label.strip().lower(),
            score=round(min(max(confidence, 0.0), 1.0), 6),
            box=scaled,
            area_px=(scaled[2] - scaled[0]) * (scaled[3] - scaled[1]),
            attributes={"model_id": self.model_id},
        )
