"""Deployment settings read from the environment when definitions load (never at import)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from tile_assets.core.store import is_s3_uri

S3_ENV_VARS = {
    "endpoint_url": "AWS_ENDPOINT_URL",
    "region_name": "AWS_REGION",
    "aws_access_key_id": "AWS_ACCESS_KEY_ID",
    "aws_secret_access_key": "AWS_SECRET_ACCESS_KEY",
    "aws_session_token": "AWS_SESSION_TOKEN",
    "profile_name": "AWS_PROFILE",
}
"""S3Resource fields filled from these variables (as EnvVar, so the UI shows names, not values)."""


def absolute_uri(uri: str) -> str:
    """S3 URIs as they are; local paths made absolute so every process agrees."""
    return uri if is_s3_uri(uri) else str(Path(uri).expanduser().resolve())


@dataclass(frozen=True)
class Settings:
    """Where the inbox and the catalog are, and which S3 settings are set."""

    inbox: str
    catalog: str
    s3_env: tuple[str, ...] = ()
    s3_use_ssl: bool = True
    gate: str = "{}"
    """The content gate's settings as JSON (GateResource fields); `{}` is validation only."""

    @classmethod
    def from_environment(cls) -> Settings:
        """TILE_ASSETS_INBOX / _CATALOG (default data/inbox, data/catalog), TILE_ASSETS_GATE and AWS_*."""
        return cls(
            inbox=absolute_uri(os.environ.get("TILE_ASSETS_INBOX", "data/inbox")),
            catalog=absolute_uri(os.environ.get("TILE_ASSETS_CATALOG", "data/catalog")),
            s3_env=tuple(field for field, var in S3_ENV_VARS.items() if os.environ.get(var)),
            s3_use_ssl=not os.environ.get("AWS_ENDPOINT_URL", "https://").startswith("http://"),
            gate=os.environ.get("TILE_ASSETS_GATE", "{}"),
        )
