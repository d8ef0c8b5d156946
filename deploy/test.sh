#!/usr/bin/env bash
# Sets up, then runs the whole test suite (unit tests, then integration tests against real
# vLLM servers that the tests start). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/setup.sh
# shellcheck disable=SC1091
. .venv/bin/activate
ruff check .
lint-imports  # the layer and no-cycle contracts in .importlinter
exec python -m pytest -ra "$@"
