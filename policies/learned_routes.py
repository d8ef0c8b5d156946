"""A learned route against its router artifact: models it cannot serve (errors) and models it
knows only by their description (warnings). `policies.loader` puts line numbers on both."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from policies.artifact_manifest import ArtifactError, read_manifest
from policies.schema import LearnedRoute, Policy

Loc = tuple[str | int, ...]


@dataclass(slots=True)
class Findings:
    """Where in the policy, and what: `errors` refuse the policy, `warnings` do not."""

    errors: list[tuple[Loc, str]] = field(default_factory=list)
    warnings: list[tuple[Loc, str]] = field(default_factory=list)


def router_dir(policy_file: str, router: str) -> Path:
    """A learned route's artifact directory: relative paths start at the policy file's folder."""
    path = Path(router)
    if path.is_absolute() or policy_file.startswith("<"):
        return path
    return Path(policy_file).resolve().parent / path


def is_inductive(manifest: dict[str, Any]) -> bool:
    """Whether the router places a model from its description (artifacts older than the
    `inductive` key: only the graph router does)."""
    return bool(manifest.get("inductive")) or manifest["kind"] == "graph"


def learned_route_findings(
    route_name: str, route: LearnedRoute, policy: Policy, policy_file: str
) -> Findings:
    found = Findings()
    try:
        manifest = read_manifest(router_dir(policy_file, route.router))
    except ArtifactError as exc:
        found.errors.append((("routes", route_name, "router"), str(exc)))
        return found
    known = set(manifest["models"])
    kind = manifest["kind"]
    inductive = is_inductive(manifest)
    for i, name in enumerate(route.models):
        config = policy.models.get(name)
        if config is None or route.model_map.get(name, name) in known:
            continue
        loc = ("routes", route_name, "models", i)
        if inductive and config.description:
            found.warnings.append(
                (
                    loc,
                    f"known to the {kind} router only by its description: routed from the "
                    "description, without records (see docs/routers.md)",
                )
            )
            continue
        hint = "map it with model_map" + (" or give the model a description" if inductive else "")
        found.errors.append(
            (
                loc,
                f"the {kind} router was not trained on "
                f"'{route.model_map.get(name, name)}' (it knows {', '.join(sorted(known))}): "
                + hint,
            )
        )
    for name in route.model_map:
        if name not in route.models:
            found.errors.append(
                (("routes", route_name, "model_map", name), f"'{name}' is not in this route")
            )
    return found
