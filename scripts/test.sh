#!/usr/bin/env bash
# Set up, then run the whole test suite (real PostgreSQL, Redis, SeaweedFS S3, Chromium).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The web UI tests drive Debian's Chromium; install it when we can (root, apt), else they skip.
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing Debian's chromium for the web UI tests"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
    || echo "warning: chromium could not be installed; the web UI tests will skip" >&2
fi
# Dependency audit: reports known vulnerabilities, never fails the build (see scripts/audit.sh).
bash scripts/audit.sh || true
export PATH="$PWD/.venv/bin:$PATH"
exec .venv/bin/python -m pytest -p no:cacheprovider -q -ra "$@"
