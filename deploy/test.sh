#!/usr/bin/env bash
# Sets up, then runs the tests tier by tier: tests/unit (in-process, under a minute), then
# tests/system (routegate serve, redis-server, Chromium) and tests/integration (real vLLM
# servers that the tests start). Extra arguments replace the tiers: they all go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/setup.sh
# shellcheck disable=SC1091
. .venv/bin/activate
ruff check .
lint-imports  # the layer and no-cycle contracts in .importlinter
if [ "$#" -gt 0 ]; then
  exec python -m pytest -ra "$@"
fi
python -m pytest -ra tests/unit
exec python -m pytest -ra tests/system tests/integration
