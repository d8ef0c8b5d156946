"""The manifest of a router artifact: what a policy's learned route may name.

The policy loader reads it to check a route's models against the ones the artifact was trained
on (with line numbers); `routers.predictors.artifact` writes it and loads the weights beside it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

FORMAT_VERSION = 1
MANIFEST = "manifest.json"


class ArtifactError(ValueError):
    pass


def read_manifest(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / MANIFEST
    try:
        manifest = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        raise ArtifactError(f"{directory}: not a router artifact (no {MANIFEST})") from None
    except orjson.JSONDecodeError as exc:
        raise ArtifactError(f"{path}: invalid JSON: {exc}") from None
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise ArtifactError(
            f"{path}: format_version {version!r}; this Routegate reads {FORMAT_VERSION}"
        )
    return manifest
