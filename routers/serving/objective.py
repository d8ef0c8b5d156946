"""The routing objective every cost-aware router shares: maximise quality - lambda x cost, or
take the cheapest model predicted to reach a quality floor.

Lambda is in quality points per USD. Budget pacing multiplies it (`RouteContext`), so the same
route gets cheaper while spend runs ahead of plan.
"""

from __future__ import annotations

from collections.abc import Mapping


def rank_models(
    predictions: Mapping[str, Mapping[str, float]],
    lam: float,
    quality_floor: float | None = None,
    lead: tuple[str, float] | None = None,
) -> list[str]:
    """Models best first by the objective; the rest follow as fallbacks, best score first.

    `predictions` maps model -> {"quality": 0..1, "cost_usd": expected cost}. Ties go to the
    cheaper model, then to the order given. `lead` (model, points) adds to that model's
    quality in the ranking only (a route's trust in the model best on average, see
    `LearnedRoute.lead`); the floor reads the predictions as they are.
    """
    order = {m: i for i, m in enumerate(predictions)}
    favoured, points = lead if lead is not None else ("", 0.0)

    def score(m: str) -> tuple[float, float, int]:
        p = predictions[m]
        bonus = points if m == favoured else 0.0
        return (-(p["quality"] + bonus - lam * p["cost_usd"]), p["cost_usd"], order[m])

    by_score = sorted(predictions, key=score)
    if quality_floor is None:
        return by_score
    reaching = [m for m in predictions if predictions[m]["quality"] >= quality_floor]
    if reaching:
        first = min(reaching, key=lambda m: (predictions[m]["cost_usd"], order[m]))
    else:  # nothing is predicted to reach the floor: the best we have
        first = max(predictions, key=lambda m: (predictions[m]["quality"], -order[m]))
    return [first, *(m for m in by_score if m != first)]


def lead_of(prior: dict[str, float], points: float) -> tuple[str, float] | None:
    """A route's `lead`: its points, for the model best on average (None without either)."""
    if not prior or points <= 0:
        return None
    return max(prior, key=lambda m: prior[m]), points
