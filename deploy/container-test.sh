#!/usr/bin/env bash
# The container tier: builds deploy/Dockerfile for real, runs the image, and checks /readyz and
# a completion (tests/container, which also validates deploy/compose.yaml with Compose). No image registry is reachable here, so the base image is a
# minimal Debian bookworm made by debootstrap and turned into an image with `docker import`;
# its tarball is cached under var/container/ (git-ignored), so only the first run pays for it.
#
#   bash deploy/container-test.sh            # sets up, then runs tests/container
#   CONTAINER_TEST_REBUILD_BASE=1 bash ...   # debootstrap the base again
#   CONTAINER_TEST_BASE_ONLY=1 bash ...      # only make the base image
#
# Needs root (or sudo) for apt-get, debootstrap and dockerd. Every container runs with
# --network host and binds 127.0.0.1 only; the daemon this script starts has no bridge at all.
set -euo pipefail
cd "$(dirname "$0")/.."

BASE_IMAGE=routegate-base:bookworm
IMAGE=${ROUTEGATE_IMAGE:-routegate:test}
CACHE=var/container
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; fi

step() { printf 'container-test: %s (%ss)\n' "$1" "$SECONDS"; }

need=()
command -v dockerd >/dev/null || need+=(docker.io)
command -v debootstrap >/dev/null || need+=(debootstrap)
# tests/container/test_compose_config.py: Debian's Compose (1.29) where no `docker compose` is.
docker compose version >/dev/null 2>&1 || command -v docker-compose >/dev/null \
  || need+=(docker-compose)
if [ "${#need[@]}" -gt 0 ]; then
  step "installing ${need[*]}"
  $SUDO apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

# A daemon of our own where none answers: no bridge and no iptables rules, so a container can
# only share the host's network namespace (--network host), never reach out through NAT.
# The daemon it starts is stopped again at exit (by its pid; a daemon already running is left).
if ! docker info >/dev/null 2>&1; then
  mkdir -p "$CACHE"
  step "starting dockerd (log: $CACHE/dockerd.log)"
  $SUDO sh -c "nohup dockerd --bridge=none --iptables=false --ip6tables=false \
    --pidfile '$PWD/$CACHE/dockerd.pid' >'$CACHE/dockerd.log' 2>&1 &"
  trap '$SUDO kill "$(cat "$CACHE/dockerd.pid" 2>/dev/null)" 2>/dev/null || true' EXIT
  for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 0.5; done
  docker info >/dev/null 2>&1 || { tail -20 "$CACHE/dockerd.log" >&2; exit 1; }
fi

# The base: python3.11 + venv, nothing else. The machine's CA bundle is copied in, because
# HTTPS here may pass through an intercepting proxy whose CA only the host trusts; pip is told
# to use that bundle (bookworm's pip 23 would otherwise read certifi's).
tarball=$CACHE/base-bookworm.tar
if [ "${CONTAINER_TEST_REBUILD_BASE:-0}" = 1 ] || [ ! -s "$tarball" ]; then
  step "debootstrap bookworm into $CACHE/rootfs"
  mkdir -p "$CACHE"
  $SUDO rm -rf --one-file-system "$CACHE/rootfs"
  $SUDO debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    bookworm "$CACHE/rootfs" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1 \
    || { tail -20 "$CACHE/debootstrap.log" >&2; exit 1; }
  $SUDO cp /etc/ssl/certs/ca-certificates.crt "$CACHE/rootfs/etc/ssl/certs/ca-certificates.crt"
  printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' \
    | $SUDO tee "$CACHE/rootfs/etc/pip.conf" >/dev/null
  $SUDO rm -rf "$CACHE/rootfs/var/cache/apt/archives/"*.deb "$CACHE/rootfs/var/lib/apt/lists/"*
  # debootstrap unmounts the /proc it used; --one-file-system keeps any leftover mount out.
  $SUDO tar --one-file-system -C "$CACHE/rootfs" -cf "$tarball.part" .
  mv "$tarball.part" "$tarball"
  $SUDO rm -rf --one-file-system "$CACHE/rootfs"
  docker image rm -f "$BASE_IMAGE" >/dev/null 2>&1 || true
fi
if ! docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
  step "docker import $tarball as $BASE_IMAGE"
  docker import --change 'CMD ["/bin/bash"]' "$tarball" "$BASE_IMAGE" >/dev/null
fi
if [ "${CONTAINER_TEST_BASE_ONLY:-0}" = 1 ]; then step "base image ready"; exit 0; fi

# The CPU torch wheel goes in through the build context where this machine has one on disk
# (pip's find-links), as deploy/setup.sh takes it; elsewhere the Dockerfile's default, the
# PyTorch CPU index, serves it.
build_args=(--build-arg "BASE=$BASE_IMAGE")
mkdir -p deploy/wheels
links=${PIP_FIND_LINKS:-$(pip config get global.find-links 2>/dev/null || true)}
torch=$(grep -E '^torch==' deploy/requirements.lock | cut -d= -f3 | cut -d+ -f1)
wheel=$(ls "$links"/torch-"$torch"+cpu-cp311-*.whl 2>/dev/null | head -1 || true)
if [ -n "$wheel" ]; then
  [ -s "deploy/wheels/$(basename "$wheel")" ] || cp "$wheel" deploy/wheels/
  build_args+=(--build-arg TORCH_INDEX_URL=)
fi

step "docker build -f deploy/Dockerfile -t $IMAGE"
docker build --network host "${build_args[@]}" -f deploy/Dockerfile -t "$IMAGE" . \
  >"$CACHE/build.log" 2>&1 || { tail -40 "$CACHE/build.log" >&2; exit 1; }
step "built $IMAGE ($(docker image inspect -f '{{.Size}}' "$IMAGE" | numfmt --to=iec))"

[ -x .venv/bin/python ] || bash deploy/setup.sh
step "tests/container"
ROUTEGATE_IMAGE=$IMAGE .venv/bin/python -m pytest -q -p no:cacheprovider tests/container "$@"
step "done"
