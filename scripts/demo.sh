#!/usr/bin/env bash
# Set up, then run the whole pipeline on the bundled sample images in data/inbox
# with the embedded default: local folders, SQLite instance under ./.dagster_home.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export DAGSTER_HOME="${DAGSTER_HOME:-$PWD/.dagster_home}"
exec .venv/bin/tile-assets run "${TILE_ASSETS_INBOX:-data/inbox}" --catalog "${TILE_ASSETS_CATALOG:-data/catalog}" "$@"
