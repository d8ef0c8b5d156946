"""Load a policy YAML file and report every problem as `FILE:LINE:COL field: message`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError

from policies.schema import CascadeRoute, EadRoute, LearnedRoute, Policy, VllmModel

Loc = tuple[str | int, ...]


@dataclass(frozen=True)
class Problem:
    file: str
    line: int  # 1-based
    col: int  # 1-based
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col} {self.field}: {self.message}"


class PolicyError(Exception):
    """A policy that cannot be used; `problems` lists every reason found."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


def _position(tree: Any, loc: Loc) -> tuple[int, int]:
    """The 0-based line/col of the deepest node of `loc` that exists in the YAML tree."""
    line, col = 0, 0
    node = tree
    for part in loc:
        if isinstance(node, CommentedMap) and part in node:
            line, col = node.lc.key(part)
            node = node[part]
        elif isinstance(node, CommentedSeq) and isinstance(part, int) and part < len(node):
            line, col = node.lc.item(part)
            node = node[part]
        else:
            # A missing key: point at the mapping that should hold it.
            if isinstance(node, CommentedMap | CommentedSeq) and node.lc.line is not None:
                line, col = node.lc.line, node.lc.col
            break
    return line, col


def _field_name(loc: Loc) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(policy)"


def _clean_loc(tree: Any, loc: Loc) -> Loc:
    """Drop the union tags pydantic puts in locations ("vllm", "token", ...): they are not keys.

    A missing field is always the last part of a location, so a string that is not a key of
    the current mapping and is not last must be such a tag.
    """
    out: list[str | int] = []
    node = tree
    for i, part in enumerate(loc):
        if isinstance(node, CommentedMap) and part not in node and i < len(loc) - 1:
            continue
        out.append(part)
        if isinstance(node, CommentedMap | CommentedSeq):
            try:
                node = node[part]
            except (KeyError, IndexError, TypeError):
                node = None
    return tuple(out)


def router_dir(policy_file: str, router: str) -> Path:
    """A learned route's artifact directory: relative paths start at the policy file's folder."""
    path = Path(router)
    if path.is_absolute() or policy_file.startswith("<"):
        return path
    return Path(policy_file).resolve().parent / path


def _learned_route_problems(
    route_name: str, route: LearnedRoute, policy: Policy, policy_file: str
) -> list[tuple[Loc, str]]:
    from routers.artifact import ArtifactError, read_manifest

    try:
        manifest = read_manifest(router_dir(policy_file, route.router))
    except ArtifactError as exc:
        return [(("routes", route_name, "router"), str(exc))]
    known = set(manifest["models"])
    found: list[tuple[Loc, str]] = []
    for i, name in enumerate(route.models):
        config = policy.models.get(name)
        if config is None or route.model_map.get(name, name) in known:
            continue
        if manifest["kind"] == "graph" and config.description:
            continue  # the graph router places a new model from its description
        hint = "map it with model_map" + (
            "" if manifest["kind"] != "graph" else " or give the model a description"
        )
        found.append(
            (
                ("routes", route_name, "models", i),
                f"the {manifest['kind']} router was not trained on "
                f"'{route.model_map.get(name, name)}' (it knows {', '.join(sorted(known))}): "
                + hint,
            )
        )
    for name in route.model_map:
        if name not in route.models:
            found.append(
                (("routes", route_name, "model_map", name), f"'{name}' is not in this route")
            )
    return found


def _reference_problems(policy: Policy, policy_file: str) -> list[tuple[Loc, str]]:
    found: list[tuple[Loc, str]] = []
    for model_name, model in policy.models.items():
        for i, fallback in enumerate(model.fallbacks):
            if fallback not in policy.models:
                found.append(
                    (("models", model_name, "fallbacks", i), f"unknown model '{fallback}'")
                )
            elif fallback == model_name:
                found.append(
                    (("models", model_name, "fallbacks", i), "a model cannot fall back to itself")
                )
    for route_name, route in policy.routes.items():
        if isinstance(route, EadRoute):
            found += _ead_route_problems(route_name, route, policy)
            continue
        for i, name in enumerate(route.models):
            if name not in policy.models:
                found.append((("routes", route_name, "models", i), f"unknown model '{name}'"))
            elif route.kind == "cost_aware" and policy.models[name].quality is None:
                found.append(
                    (
                        ("routes", route_name, "models", i),
                        f"model '{name}' needs a `quality` (0..1) for a cost_aware route",
                    )
                )
        if isinstance(route, LearnedRoute):
            found += _learned_route_problems(route_name, route, policy, policy_file)
        if isinstance(route, CascadeRoute):
            judge = route.confidence.judge_model
            if judge is not None and judge not in policy.models:
                loc = ("routes", route_name, "confidence", "judge_model")
                found.append((loc, f"unknown model '{judge}'"))
    return found


def _ead_route_problems(route_name: str, route: EadRoute, policy: Policy) -> list[tuple[Loc, str]]:
    """Both EAD models continue raw text through vLLM's completions API."""
    found: list[tuple[Loc, str]] = []
    for field in ("small", "large"):
        name = getattr(route, field)
        model = policy.models.get(name)
        if model is None:
            found.append((("routes", route_name, field), f"unknown model '{name}'"))
        elif not isinstance(model, VllmModel):
            found.append(
                (("routes", route_name, field), f"model '{name}' must be a vLLM model for ead")
            )
    if route.small == route.large:
        found.append((("routes", route_name, "large"), "small and large are the same model"))
    return found


def parse_policy(text: str, file: str = "<policy>") -> Policy:
    """Parse and validate policy text; raise PolicyError with every problem found."""
    try:
        tree = YAML(typ="rt").load(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line, mark.column) if mark else (0, 0)
        raise PolicyError(
            [Problem(file, line + 1, col + 1, "(yaml)", str(exc.problem or exc).strip())]
        ) from None
    if not isinstance(tree, CommentedMap):
        raise PolicyError([Problem(file, 1, 1, "(policy)", "the policy must be a YAML mapping")])

    try:
        policy = Policy.model_validate(tree)
    except ValidationError as exc:
        problems = []
        for err in exc.errors(include_url=False):
            loc = _clean_loc(tree, err["loc"])
            if err["type"] == "invalid_route_kind":
                loc = (*loc, "kind")
            elif err["type"] == "union_tag_invalid":
                # Point at the tag field itself ("provider: tgi"), not the model as a whole.
                loc = (*loc, str(err["ctx"]["discriminator"]).strip("'"))
            line, col = _position(tree, loc)
            problems.append(Problem(file, line + 1, col + 1, _field_name(loc), err["msg"]))
        raise PolicyError(problems) from None

    refs = _reference_problems(policy, file)
    if refs:
        raise PolicyError(
            [
                Problem(
                    file, (pos := _position(tree, loc))[0] + 1, pos[1] + 1, _field_name(loc), msg
                )
                for loc, msg in refs
            ]
        )
    return policy


def read_policy_text(path: str | Path) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise PolicyError([Problem(str(path), 1, 1, "(file)", exc.strerror or str(exc))]) from None


def load_policy(path: str | Path) -> Policy:
    return parse_policy(read_policy_text(path), str(path))


def example_policy_path() -> Path:
    """The bundled example policy: the embedded default served when no --policy is given."""
    return Path(__file__).with_name("example.yaml")
