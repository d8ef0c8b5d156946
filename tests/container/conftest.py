"""The container tier: the image built from deploy/Dockerfile, run by a real Docker daemon.

`bash deploy/container-test.sh` builds the image (on a debootstrapped base) and runs this tier
with ROUTEGATE_IMAGE naming it; without that variable every test here is skipped, so a bare
`pytest` never builds or runs images."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    image = os.environ.get("ROUTEGATE_IMAGE")
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(pytest.mark.container)
            if not image:
                item.add_marker(
                    pytest.mark.skip(reason="no image: run `bash deploy/container-test.sh`")
                )


@pytest.fixture(scope="session")
def image() -> str:
    return os.environ["ROUTEGATE_IMAGE"]
