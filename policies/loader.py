"""Load a policy YAML file and report every problem as `FILE:LINE:COL field: message`."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml as libyaml
from pydantic import ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError
from ruamel.yaml.reader import ReaderError

from policies.learned_routes import Loc, learned_route_findings
from policies.schema import (
    CascadeRoute,
    EadRoute,
    ExperimentRoute,
    FixedRoute,
    LearnedRoute,
    Policy,
    RouteConfig,
    VllmModel,
    serves_embeddings,
)

# Caps checked before the YAML tree is built: policy text comes from the dashboard too, and
# ruamel's scanner is quadratic in flow nesting, its composer recursive. Real policies are a
# few KB deep by a handful of levels.
MAX_POLICY_BYTES = 256 * 1024
MAX_DEPTH = 32
MAX_NODES = 100_000  # counting every alias as the node it copies: no "billion laughs"
MAX_NUMBER_CHARS = 100  # int() of thousands of digits is slow, and past 4300 refused
_NUMBER = re.compile(
    r"[-+]?(0[xX][0-9a-fA-F_]+|0[oO][0-7_]+|0[bB][01_]+"
    r"|([0-9][0-9_]*(\.[0-9_]*)?|\.[0-9_]+)([eE][-+]?[0-9]+)?)"
)


@dataclass(frozen=True)
class Problem:
    file: str
    line: int  # 1-based
    col: int  # 1-based
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col} {self.field}: {self.message}"

    def as_warning(self) -> str:
        """The same line for a problem that does not refuse the policy."""
        return f"{self.file}:{self.line}:{self.col} {self.field}: warning: {self.message}"


class PolicyError(Exception):
    """A policy that cannot be used; `problems` lists every reason found."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class PolicyTooLarge(PolicyError):
    """Past a size, nesting or alias cap: refused before the text is read as a policy."""


def _too_large(file: str, mark: Any, field: str, message: str) -> PolicyTooLarge:
    line, col = (mark.line, mark.column) if mark is not None else (0, 0)
    return PolicyTooLarge([Problem(file, line + 1, col + 1, field, message)])


def check_limits(text: str, file: str = "<policy>") -> None:
    """Raise PolicyTooLarge if `text` is past the size, depth, alias or number caps.

    Walks libyaml's event stream (C, not recursive, linear) and stops at the first excess, so
    the cost is bounded whatever the text. A text libyaml cannot parse is left to ruamel, whose
    messages are the ones users see.
    """
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_POLICY_BYTES:
        raise PolicyTooLarge(
            [Problem(file, 1, 1, "(file)", f"larger than {MAX_POLICY_BYTES} bytes ({size})")]
        )
    loader = getattr(libyaml, "CSafeLoader", libyaml.SafeLoader)
    # Per open collection: [expanded node count, anchor]; sizes of anchored nodes by name.
    stack: list[list[Any]] = []
    sizes: dict[str, int] = {}
    total = 0

    def add(n: int, mark: Any) -> None:
        """`n` more nodes in the innermost open collection (passed up as it closes)."""
        nonlocal total
        total += n
        if total > MAX_NODES:
            raise _too_large(
                file, mark, "(yaml)", f"aliases expand the policy past {MAX_NODES} nodes"
            )
        if stack:
            stack[-1][0] += n

    try:
        for event in libyaml.parse(text, Loader=loader):
            mark = event.start_mark
            if isinstance(event, libyaml.CollectionStartEvent):
                if len(stack) >= MAX_DEPTH:
                    raise _too_large(file, mark, "(yaml)", f"nested deeper than {MAX_DEPTH} levels")
                stack.append([0, event.anchor])
                add(1, mark)
            elif isinstance(event, libyaml.CollectionEndEvent):
                count, anchor = stack.pop()
                if anchor:
                    sizes[anchor] = count
                if stack:  # `total` has it already
                    stack[-1][0] += count
            elif isinstance(event, libyaml.ScalarEvent):
                value = event.value
                if event.implicit[0] and len(value) > MAX_NUMBER_CHARS and _NUMBER.fullmatch(value):
                    raise _too_large(file, mark, "(yaml)", f"a number of {len(value)} characters")
                add(1, mark)
                if event.anchor:
                    sizes[event.anchor] = 1
            elif isinstance(event, libyaml.AliasEvent):
                add(sizes.get(event.anchor or "", 1), mark)
    except libyaml.MarkedYAMLError as exc:
        if "nesting depth" in str(exc.problem):  # libyaml's own cap, met while scanning ahead
            raise _too_large(
                file, exc.problem_mark, "(yaml)", f"nested deeper than {MAX_DEPTH} levels"
            ) from None
    except libyaml.YAMLError:
        pass  # ruamel says what is wrong


def _position_of(text: str, index: int) -> tuple[int, int]:
    """1-based line and column of a character offset."""
    line = text.count("\n", 0, index)
    return line + 1, index - (text.rfind("\n", 0, index) + 1) + 1


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
    the current mapping and is not last must be such a tag; so is anything past a scalar
    (`scheduling: fastest` is reported at `scheduling.preset`).
    """
    out: list[str | int] = []
    node = tree
    for i, part in enumerate(loc):
        if isinstance(node, CommentedMap) and part not in node and i < len(loc) - 1:
            continue
        if isinstance(node, str | int | float):
            continue
        out.append(part)
        if isinstance(node, CommentedMap | CommentedSeq):
            try:
                node = node[part]
            except (KeyError, IndexError, TypeError):
                node = None
    return tuple(out)


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
            elif policy.models[fallback].kind != model.kind:
                found.append(
                    (
                        ("models", model_name, "fallbacks", i),
                        f"'{fallback}' is of kind {policy.models[fallback].kind} and "
                        f"'{model_name}' of kind {model.kind}: a fallback must be of the same kind",
                    )
                )
    for route_name, route in policy.routes.items():
        if isinstance(route, EadRoute):
            found += _ead_route_problems(route_name, route, policy)
            continue
        if isinstance(route, ExperimentRoute):
            found += _experiment_route_problems(route_name, route, policy)
            continue
        found += _embedding_route_problems(route_name, route, policy)
        for i, name in enumerate(route.models):
            if name not in policy.models:
                found.append((("routes", route_name, "models", i), f"unknown model '{name}'"))
            elif (
                route.kind == "cost_aware"
                and policy.models[name].quality is None
                and policy.models[name].kind == "chat"  # embeddings: refused for the route
            ):
                found.append(
                    (
                        ("routes", route_name, "models", i),
                        f"model '{name}' needs a `quality` (0..1) for a cost_aware route",
                    )
                )
        if isinstance(route, LearnedRoute):
            found += learned_route_findings(route_name, route, policy, policy_file).errors
        if isinstance(route, CascadeRoute):
            judge = route.confidence.judge_model
            if judge is not None and judge not in policy.models:
                loc = ("routes", route_name, "confidence", "judge_model")
                found.append((loc, f"unknown model '{judge}'"))
            elif judge is not None and policy.models[judge].kind == "embedding":
                loc = ("routes", route_name, "confidence", "judge_model")
                found.append((loc, f"model '{judge}' is an embedding model: it cannot judge"))
    return found


def _embedding_route_problems(
    route_name: str, route: RouteConfig, policy: Policy
) -> list[tuple[Loc, str]]:
    """Embedding models serve only through fixed routes (a first model, then fallbacks), and a
    route serves one kind of model: its requests are either embeddings or chat."""
    known = policy.models
    models = [(i, n, known[n].kind) for i, n in enumerate(route.models) if n in known]
    embedding = [n for _, n, kind in models if kind == "embedding"]
    if not embedding:
        return []
    if not isinstance(route, FixedRoute):
        return [
            (
                ("routes", route_name, "kind"),
                f"a {route.kind} route cannot serve the embedding model(s) "
                f"{', '.join(embedding)}: only routes of kind fixed (with fallbacks) serve "
                "embeddings",
            )
        ]
    return [
        (
            ("routes", route_name, "models", i),
            f"'{name}' is a chat model and '{embedding[0]}' an embedding model: a route "
            "serves one kind of model",
        )
        for i, name, kind in models
        if kind != "embedding"
    ]


def _experiment_route_problems(
    route_name: str, route: ExperimentRoute, policy: Policy
) -> list[tuple[Loc, str]]:
    """Every arm is a route of this policy that serves by itself (no experiment in one)."""
    found: list[tuple[Loc, str]] = []
    for arm in route.arms:
        loc: Loc = ("routes", route_name, "arms", arm)
        target = policy.routes.get(arm)
        if target is None:
            found.append((loc, f"unknown route '{arm}' (an arm must be a route of this policy)"))
        elif isinstance(target, ExperimentRoute):
            found.append((loc, f"route '{arm}' is an experiment; an arm cannot be one"))
        elif serves_embeddings(target, policy):
            found.append(
                (loc, f"route '{arm}' serves embeddings: only fixed routes serve embeddings")
            )
    # Requests are served by the arm's settings; the experiment's own would be ignored.
    for field in ("pacing", "cache", "slo_latency_ms", "log_prompts"):
        if getattr(route, field) not in (None, False):
            found.append(
                (("routes", route_name, field), f"set {field} on the arms, not the experiment")
            )
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
        elif model.kind == "embedding":
            found.append(
                (
                    ("routes", route_name, field),
                    f"model '{name}' is an embedding model: only fixed routes serve embeddings",
                )
            )
    if route.small == route.large:
        found.append((("routes", route_name, "large"), "small and large are the same model"))
    return found


def parse_policy(text: str, file: str = "<policy>") -> Policy:
    """Parse and validate policy text; raise PolicyError with every problem found.

    Whatever the text, nothing else escapes: a failure no check foresaw is a problem too."""
    try:
        return _parse_policy(text, file)
    except PolicyError:
        raise
    except Exception as exc:  # RecursionError, ValueError from a constructor, a bug, ...
        message = f"cannot be read: {type(exc).__name__}: {exc}"
        raise PolicyError([Problem(file, 1, 1, "(policy)", message)]) from None


def _parse_policy(text: str, file: str) -> Policy:
    check_limits(text, file)
    try:
        tree = YAML(typ="rt").load(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line, mark.column) if mark else (0, 0)
        raise PolicyError(
            [Problem(file, line + 1, col + 1, "(yaml)", str(exc.problem or exc).strip())]
        ) from None
    except ReaderError as exc:  # a character YAML does not allow
        line, col = _position_of(text, exc.position)
        raise PolicyError(
            [Problem(file, line, col, "(yaml)", f"character {exc.character!r}: {exc.reason}")]
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
        raise PolicyError(_located(tree, file, refs))
    return policy


def _located(tree: Any, file: str, found: list[tuple[Loc, str]]) -> list[Problem]:
    return [
        Problem(file, (pos := _position(tree, loc))[0] + 1, pos[1] + 1, _field_name(loc), msg)
        for loc, msg in found
    ]


def policy_warnings(policy: Policy, text: str, file: str = "<policy>") -> list[Problem]:
    """What a valid policy (parsed from `text`) may not do as its author expects: today, learned
    route models their router knows only by their description."""
    found: list[tuple[Loc, str]] = []
    for route_name, route in policy.routes.items():
        if isinstance(route, LearnedRoute):
            found += learned_route_findings(route_name, route, policy, file).warnings
    if not found:
        return []
    return _located(YAML(typ="rt").load(text), file, found)


def read_policy_text(path: str | Path) -> str:
    """The file's text with universal newlines; PolicyError if it cannot be read, is past
    MAX_POLICY_BYTES or is not UTF-8."""
    file = str(path)
    try:
        with Path(path).open("rb") as f:
            data = f.read(MAX_POLICY_BYTES + 1)
    except OSError as exc:
        raise PolicyError([Problem(file, 1, 1, "(file)", exc.strerror or str(exc))]) from None
    if len(data) > MAX_POLICY_BYTES:
        raise PolicyTooLarge(
            [Problem(file, 1, 1, "(file)", f"larger than {MAX_POLICY_BYTES} bytes")]
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        col = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise PolicyError(
            [Problem(file, line, col, "(file)", f"not UTF-8 at byte {exc.start}")]
        ) from None
    return text.replace("\r\n", "\n").replace("\r", "\n")


def load_policy(path: str | Path) -> Policy:
    return parse_policy(read_policy_text(path), str(path))


def example_policy_path() -> Path:
    """The bundled example policy: the embedded default served when no --policy is given."""
    return Path(__file__).with_name("example.yaml")
