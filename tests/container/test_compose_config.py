"""deploy/compose.yaml passes Compose's own validation (`docker compose config`, or the
docker-compose 1.29 of Debian's package, which checks the Compose specification's schema)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def compose_command() -> list[str]:
    docker = shutil.which("docker")
    if (
        docker
        and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0
    ):
        return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    if legacy:
        return [legacy]
    pytest.fail("no Compose here: deploy/container-test.sh installs Debian's docker-compose")


def test_compose_file_validates() -> None:
    done = subprocess.run(
        [*compose_command(), "-f", str(DEPLOY / "compose.yaml"), "config", "--quiet"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=DEPLOY,
    )
    assert done.returncode == 0, done.stderr
