"""What changes between two policies, in words: for `routegate policy diff` and the dashboard.

`diff_policies(old, new)` returns structured `Change`s; each carries a sentence for people and
the old and new values for code. Routes get the most care (kind, models and their order, lambda,
thresholds, pacing, cache); any other field is named with its old and new value, so nothing a
policy can say goes unreported.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel

from policies.pricing import token_pricing
from policies.schema import ExperimentRoute, ModelConfig, Policy, RouteConfig

Section = Literal[
    "model", "price", "endpoint", "route", "pacing", "cache", "defaults", "state", "access"
]
Action = Literal["added", "removed", "changed"]


@dataclass(frozen=True)
class Change:
    section: Section
    action: Action
    subject: str  # the model or route name, or the settings block
    text: str  # one sentence, for people
    old: Any = None
    new: Any = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "section": self.section,
            "action": self.action,
            "subject": self.subject,
            "text": self.text,
            "old": self.old,
            "new": self.new,
        }


def _dump(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", by_alias=True, exclude_none=True)
    return value


def _show(value: Any) -> str:
    if value is None:
        return "unset"
    if isinstance(value, list):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_show(v)}" for k, v in value.items()) + "}"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _percent(old: float, new: float) -> str:
    if old == 0:
        return "" if new == 0 else " (from zero)"
    return f" ({(new - old) / old * 100:+.1f}%)"


def _field_changes(
    section: Section, subject: str, old: dict[str, Any], new: dict[str, Any], skip: set[str]
) -> list[Change]:
    """A sentence per top-level field whose value differs."""
    out = []
    for key in [*old, *(k for k in new if k not in old)]:
        if key in skip or old.get(key) == new.get(key):
            continue
        a, b = old.get(key), new.get(key)
        where = section.capitalize() + ("" if subject == section else f" {subject}")
        text = f"{where}: {key} {_show(a)} → {_show(b)}."
        out.append(Change(section, "changed", subject, text, a, b))
    return out


def _per_1m(model: ModelConfig) -> tuple[float, float] | None:
    p = token_pricing(model.pricing)
    return None if p is None else (p.input_per_1m, p.output_per_1m)


def _price_words(price: tuple[float, float] | None) -> str:
    if price is None:
        return "litellm's cost map"
    return f"${price[0]:.4g} in / ${price[1]:.4g} out per 1M tokens"


def _price_changes(name: str, old: ModelConfig, new: ModelConfig) -> list[Change]:
    a, b = _per_1m(old), _per_1m(new)
    if a == b and _dump(old.pricing) == _dump(new.pricing):
        return []
    if a is None or b is None:
        text = f"Price of {name}: {_price_words(a)} → {_price_words(b)}."
        return [Change("price", "changed", name, text, _dump(old.pricing), _dump(new.pricing))]
    parts = []
    for label, x, y in (("input", a[0], b[0]), ("output", a[1], b[1])):
        if x != y:
            parts.append(f"{label} ${x:.4g} → ${y:.4g} per 1M tokens{_percent(x, y)}")
    if not parts:  # the same effective price, stated differently (e.g. GPU-hour figures)
        parts.append(f"{_show(_dump(old.pricing))} → {_show(_dump(new.pricing))}, same per token")
    text = f"Price of {name}: " + "; ".join(parts) + "."
    return [Change("price", "changed", name, text, _dump(old.pricing), _dump(new.pricing))]


def _model_changes(name: str, old: ModelConfig, new: ModelConfig) -> list[Change]:
    out = _price_changes(name, old, new)
    a, b = _dump(old), _dump(new)
    old_urls, new_urls = a.get("endpoints", []), b.get("endpoints", [])
    for url in new_urls:
        if url not in old_urls:
            text = f"Model {name}: endpoint {url} added."
            out.append(Change("endpoint", "added", name, text, None, url))
    for url in old_urls:
        if url not in new_urls:
            text = f"Model {name}: endpoint {url} removed."
            out.append(Change("endpoint", "removed", name, text, url, None))
    return out + _field_changes("model", name, a, b, {"pricing", "endpoints"})


def _order_changes(name: str, old: list[str], new: list[str]) -> list[Change]:
    out = []
    added = [m for m in new if m not in old]
    removed = [m for m in old if m not in new]
    if added:
        text = f"Route {name}: models added: {', '.join(added)}."
        out.append(Change("route", "changed", name, text, old, new))
    if removed:
        text = f"Route {name}: models removed: {', '.join(removed)}."
        out.append(Change("route", "changed", name, text, old, new))
    if [m for m in old if m in new] != [m for m in new if m in old]:
        text = f"Route {name}: model order {' > '.join(old)} → {' > '.join(new)}."
        out.append(Change("route", "changed", name, text, old, new))
    return out


def _block_changes(
    section: Section, route: str, label: str, old: dict[str, Any], new: dict[str, Any]
) -> list[Change]:
    """Field by field within a route's block (pacing, cache, confidence)."""
    out = []
    for key in [*old, *(k for k in new if k not in old)]:
        a, b = old.get(key), new.get(key)
        if a == b:
            continue
        numbers = isinstance(a, int | float) and isinstance(b, int | float)
        text = f"Route {route}: {label} {key} {_show(a)} → {_show(b)}"
        text += (_percent(a, b) if numbers else "") + "."
        out.append(Change(section, "changed", route, text, a, b))
    return out


def _optional_block(
    section: Section, route: str, old: dict[str, Any] | None, new: dict[str, Any] | None
) -> list[Change]:
    """Pacing or cache of a route: switched on, off, or changed field by field."""
    if old == new:
        return []
    if old is None:
        text = f"Route {route}: {section} added ({_show(new)})."
        return [Change(section, "added", route, text, None, new)]
    if new is None:
        text = f"Route {route}: {section} removed (was {_show(old)})."
        return [Change(section, "removed", route, text, old, None)]
    return _block_changes(section, route, section, old, new)


# Route settings compared as numbers, with the change in percent.
_NUMERIC = ("lambda", "quality_floor", "threshold", "window", "span", "chunk", "top_k")


def _route_changes(name: str, old: RouteConfig, new: RouteConfig) -> list[Change]:
    a, b = _dump(old), _dump(new)
    if old.kind != new.kind:
        text = f"Route {name}: kind {old.kind} → {new.kind} "
        text += f"({_describe_route(old)} → {_describe_route(new)})."
        return [Change("route", "changed", name, text, a, b)]
    out = _order_changes(name, list(old.models), list(new.models))
    out += _optional_block("pacing", name, a.get("pacing"), b.get("pacing"))
    out += _optional_block("cache", name, a.get("cache"), b.get("cache"))
    handled = {"kind", "models", "pacing", "cache", "small", "large"}  # small/large: models
    for key in _NUMERIC:
        x, y = a.get(key), b.get(key)
        if isinstance(x, int | float) and isinstance(y, int | float):
            handled.add(key)
            if x != y:
                text = f"Route {name}: {key} {_show(x)} → {_show(y)}{_percent(x, y)}."
                out.append(Change("route", "changed", name, text, x, y))
    if isinstance(a.get("confidence"), dict) and isinstance(b.get("confidence"), dict):
        handled.add("confidence")
        out += _block_changes("route", name, "confidence", a["confidence"], b["confidence"])
    return out + _field_changes("route", name, a, b, handled)


def _describe_route(route: RouteConfig) -> str:
    extras = (
        [f"pacing {route.pacing.budget_usd:g} USD/{route.pacing.period}"] if route.pacing else []
    )
    extras += ["cache"] if route.cache else []
    tail = f"; {', '.join(extras)}" if extras else ""
    if isinstance(route, ExperimentRoute):
        arms = ", ".join(f"{arm} {weight:g}" for arm, weight in route.arms.items())
        return f"experiment: {arms}{tail}"
    return f"{route.kind}: {' > '.join(route.models)}{tail}"


def _describe_model(model: ModelConfig) -> str:
    return f"{model.provider}, {_price_words(_per_1m(model))}"


def diff_policies(old: Policy, new: Policy) -> list[Change]:
    """Every difference, models first, then routes, then the settings blocks."""
    out: list[Change] = []
    for name, model in new.models.items():
        if name not in old.models:
            text = f"Model {name} added ({_describe_model(model)})."
            out.append(Change("model", "added", name, text, None, _dump(model)))
    for name, model in old.models.items():
        if name not in new.models:
            text = f"Model {name} removed (was {_describe_model(model)})."
            out.append(Change("model", "removed", name, text, _dump(model), None))
        else:
            out += _model_changes(name, model, new.models[name])
    for name, route in new.routes.items():
        if name not in old.routes:
            text = f"Route {name} added ({_describe_route(route)})."
            out.append(Change("route", "added", name, text, None, _dump(route)))
    for name, route in old.routes.items():
        if name not in new.routes:
            text = f"Route {name} removed (was {_describe_route(route)})."
            out.append(Change("route", "removed", name, text, _dump(route), None))
        else:
            out += _route_changes(name, route, new.routes[name])
    out += _field_changes("defaults", "defaults", _dump(old.defaults), _dump(new.defaults), set())
    out += _field_changes("state", "state", _dump(old.state), _dump(new.state), set())
    out += _field_changes("access", "access", _dump(old.access), _dump(new.access), set())
    return out
