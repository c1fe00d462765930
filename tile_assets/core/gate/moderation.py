"""`moderation`: Amazon Rekognition's DetectModerationLabels on the image, before anything is spent on it.

The image goes as an S3 object reference when it is a JPEG or PNG on AWS S3
(Rekognition reads it in place), otherwise as the JPEG bytes of the shared
rendition. Labels at or above `min_confidence` whose name or parent is in
`reject_labels` reject the image; an empty list rejects on any label.
Throttling and service hiccups are transient (the run is retried); other API
errors fail the scene with the service's message. The client comes from the
caller (boto3's standard credential chain in production, a Stubber in tests).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from tile_assets.core.errors import ModelError, TransientModelError
from tile_assets.core.gate.base import CheckOutcome, Rendition
from tile_assets.core.gate.rendition import jpeg_bytes
from tile_assets.core.s3store import split_s3_uri
from tile_assets.core.store import is_s3_uri
from tile_assets.core.types import SceneInfo

TRANSIENT_CODES = frozenset(
    {
        "ThrottlingException",
        "ProvisionedThroughputExceededException",
        "LimitExceededException",
        "InternalServerError",
        "ServiceUnavailableException",
    }
)
S3_FORMATS = frozenset({"JPEG", "PNG"})
"""Rekognition reads only JPEG and PNG objects."""
S3_MAX_BYTES = 15 * 1024 * 1024
"""Largest S3 object Rekognition accepts; bigger ones go as rendition bytes."""


def image_argument(scene: SceneInfo, rendition: Rendition, s3_reference: bool) -> dict[str, Any]:
    """The `Image` parameter: the S3 object itself when Rekognition can read it, else JPEG bytes."""
    if (
        s3_reference
        and is_s3_uri(scene.uri)
        and scene.driver in S3_FORMATS
        and scene.size_bytes <= S3_MAX_BYTES
    ):
        bucket, key = split_s3_uri(scene.uri)
        return {"S3Object": {"Bucket": bucket, "Name": key}}
    return {"Bytes": jpeg_bytes(rendition())}


def _api_error(uri: str, exc: ClientError | BotoCoreError) -> ModelError:
    if isinstance(exc, NoCredentialsError):
        return ModelError(uri, "moderation: no AWS credentials found in the standard chain")
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", "ClientError"))
        reason = f"moderation: Rekognition {code}: {error.get('Message', '')}".rstrip(": ")
        return (
            TransientModelError(uri, reason) if code in TRANSIENT_CODES else ModelError(uri, reason)
        )
    return TransientModelError(uri, f"moderation: Rekognition unreachable: {exc}")


@dataclass(frozen=True)
class ModerationLabel:
    """One label Rekognition returned: its name, its parent in the taxonomy, its confidence (%)."""

    name: str
    parent: str
    confidence: float

    @classmethod
    def from_api(cls, label: dict[str, Any]) -> ModerationLabel:
        return cls(
            str(label.get("Name", "")),
            str(label.get("ParentName", "")),
            round(float(label.get("Confidence", 0.0)), 2),
        )


@dataclass(frozen=True)
class ModerationCheck:
    """Rejects images Rekognition finds moderation labels on."""

    client: Any
    min_confidence: float = 80.0
    reject_labels: Sequence[str] = ()
    s3_reference: bool = True
    name: str = "moderation"

    def check(self, scene: SceneInfo, rendition: Rendition) -> CheckOutcome:
        image = image_argument(scene, rendition, self.s3_reference)
        try:
            response = self.client.detect_moderation_labels(
                Image=image, MinConfidence=float(self.min_confidence)
            )
        except (ClientError, BotoCoreError) as exc:
            raise _api_error(scene.uri, exc) from exc
        labels = [ModerationLabel.from_api(label) for label in response.get("ModerationLabels", [])]
        hits = [label for label in labels if self._rejects(label)]
        details = {
            "sent": "s3_object" if "S3Object" in image else "rendition_bytes",
            "labels": [asdict(label) for label in labels],
            "model_version": response.get("ModerationModelVersion", ""),
        }
        reasons = tuple(f"{h.name} ({h.confidence:.1f}%)" for h in hits)
        return CheckOutcome(self.name, not hits, reasons, details)

    def _rejects(self, label: ModerationLabel) -> bool:
        if label.confidence < self.min_confidence:
            return False
        wanted = {name.casefold() for name in self.reject_labels}
        return not wanted or bool({label.name.casefold(), label.parent.casefold()} & wanted)
