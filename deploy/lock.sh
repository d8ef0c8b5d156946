#!/usr/bin/env bash
# Refreshes deploy/requirements.lock, the exact versions deploy/setup.sh installs.
# Run it on purpose (a new dependency, a security fix, a planned upgrade), then run the tests
# and commit the lock with what changed. Nothing else resolves versions: a fresh machine
# installs the same set every day.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
tools=$(mktemp -d)
trap 'rm -rf "$tools"' EXIT
"$PY" -m venv "$tools/venv"
"$tools/venv/bin/pip" install --quiet uv==0.13.9
# The CPU torch wheel is not on PyPI under that name: it comes from pip's find-links folder
# where the machine has one (PIP_FIND_LINKS or pip's config), else from the PyTorch CPU index.
links=${PIP_FIND_LINKS:-$(pip config get global.find-links 2>/dev/null || true)}
args=()
if [ -n "$links" ]; then args+=(--find-links "$links"); fi
# The current lock is the starting point: pins move only where a changed requirement needs it.
# Add --upgrade (LOCK_UPGRADE=1) for a planned upgrade of everything.
grep -v '^#' deploy/requirements.lock > deploy/requirements.lock.new
if [ "${LOCK_UPGRADE:-0}" = 1 ]; then args+=(--upgrade); fi
"$tools/venv/bin/uv" pip compile pyproject.toml deploy/lock.in \
  --extra dev --extra demo \
  --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
  --index-strategy unsafe-best-match "${args[@]}" \
  --no-header --quiet -o deploy/requirements.lock.new
{
  echo "# Exact versions for deploy/setup.sh (Python 3.11, Linux x86_64)."
  echo "# Made by deploy/lock.sh with uv pip compile; refresh it on purpose, never by hand."
  cat deploy/requirements.lock.new
} > deploy/requirements.lock
rm deploy/requirements.lock.new
echo "lock: wrote deploy/requirements.lock ($(grep -c '==' deploy/requirements.lock) pins)"
