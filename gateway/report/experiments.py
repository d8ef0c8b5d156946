"""`--by arm`: each experiment's arms side by side, with 95 % confidence intervals and a test
of every arm against the experiment's first arm (Welch's t-test for means, a two-proportion
z-test for rates). With more than one arm against the control, each metric's p-values are
adjusted by Holm's step-down method, so that "significant" (adjusted p < 0.05) holds for the
whole experiment, not for each comparison alone; `p_value` stays the test's own.

Rows belong to an arm by the `experiment` note the gateway writes into their `extra`;
feedback comes from the log's feedback table, a user's score before any other source's.
"""

from __future__ import annotations

import math
from array import array
from dataclasses import dataclass, field
from typing import Any

from scipy import stats as sps

from gateway.percentiles import percentile

ALPHA = 0.05
_Z = 1.959963984540054  # the normal distribution's 97.5 % quantile


def feedback_scores(rows: list[dict[str, Any]]) -> dict[str, float]:
    """request id -> one score: the user's when there is one, else the latest of any source."""
    out: dict[str, float] = {}
    from_user: set[str] = set()
    for row in rows:  # oldest first
        rid = row["request_id"]
        if row["source"] == "user":
            out[rid] = float(row["score"])
            from_user.add(rid)
        elif rid not in from_user:
            out[rid] = float(row["score"])
    return out


@dataclass
class ArmSample:
    """One arm's observations, kept whole: the tests need each sample, not just its sum."""

    costs: array[float] = field(default_factory=lambda: array("d"))
    latencies: array[float] = field(default_factory=lambda: array("d"))
    scores: array[float] = field(default_factory=lambda: array("d"))
    errors: int = 0
    cascade_rows: int = 0
    escalated_rows: int = 0

    def add(self, row: dict[str, Any], score: float | None, escalated: bool | None) -> None:
        self.costs.append(row["cost_usd"] or 0.0)
        if row["latency_ms"] is not None:
            self.latencies.append(row["latency_ms"])
        if score is not None:
            self.scores.append(score)
        self.errors += row["status"] >= 400
        if escalated is not None:
            self.cascade_rows += 1
            self.escalated_rows += escalated


def _mean_ci(xs: array[float]) -> dict[str, Any]:
    n = len(xs)
    if n == 0:
        return {"n": 0, "mean": None, "ci95": None}
    mean = math.fsum(xs) / n
    if n < 2:
        return {"n": n, "mean": mean, "ci95": None}
    sd = math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (n - 1))
    half = float(sps.t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
    return {"n": n, "mean": mean, "ci95": [mean - half, mean + half]}


def _rate_ci(k: int, n: int) -> dict[str, Any]:
    """Wilson's interval: sensible at rates near 0 or 1, where errors usually are."""
    if n == 0:
        return {"n": 0, "rate": None, "ci95": None}
    p = k / n
    denom = 1 + _Z**2 / n
    centre = (p + _Z**2 / (2 * n)) / denom
    half = _Z * math.sqrt(p * (1 - p) / n + _Z**2 / (4 * n * n)) / denom
    return {"n": n, "rate": p, "ci95": [max(0.0, centre - half), min(1.0, centre + half)]}


def _verdict(p: float | None, test: str) -> dict[str, Any]:
    if p is None or math.isnan(p):
        return {"test": test, "p_value": None, "p_adjusted": None, "significant": False}
    return {"test": test, "p_value": p, "p_adjusted": p, "significant": p < ALPHA}


def holm(verdicts: list[dict[str, Any]]) -> None:
    """Holm's step-down adjustment of these tests' p-values (one metric, every arm against the
    control), in place: the k-th smallest of m (k from 1) is multiplied by m - k + 1, kept
    monotone, capped at 1; `significant` is then read off the adjusted value. Tests without a
    p-value are not counted."""
    tested = sorted((v for v in verdicts if v["p_value"] is not None), key=lambda v: v["p_value"])
    m, running = len(tested), 0.0
    for i, v in enumerate(tested):
        running = max(running, min(1.0, (m - i) * v["p_value"]))
        v["p_adjusted"] = running
        v["significant"] = running < ALPHA


def welch(a: array[float], b: array[float]) -> dict[str, Any]:
    if len(a) < 2 or len(b) < 2:
        return _verdict(None, "welch_t")
    if min(a) == max(a) and min(b) == max(b):  # no spread: different or not, exactly
        return _verdict(1.0 if a[0] == b[0] else 0.0, "welch_t")
    return _verdict(float(sps.ttest_ind(a, b, equal_var=False).pvalue), "welch_t")


def two_proportions(k1: int, n1: int, k2: int, n2: int) -> dict[str, Any]:
    if n1 == 0 or n2 == 0:
        return _verdict(None, "two_proportion_z")
    pooled = (k1 + k2) / (n1 + n2)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    if se == 0:
        return _verdict(1.0, "two_proportion_z")  # both all 0 or all 1
    z = (k1 / n1 - k2 / n2) / se
    return _verdict(math.erfc(abs(z) / math.sqrt(2)), "two_proportion_z")


def _figures(s: ArmSample) -> dict[str, Any]:
    n = len(s.costs)
    return {
        "requests": n,
        "cost_usd": math.fsum(s.costs),
        "cost": _mean_ci(s.costs),
        "latency_p50_ms": percentile(s.latencies, 50),
        "latency_p95_ms": percentile(s.latencies, 95),
        "latency": _mean_ci(s.latencies),
        "feedback": _mean_ci(s.scores),
        "escalation": _rate_ci(s.escalated_rows, s.cascade_rows),
        "error": _rate_ci(s.errors, n),
    }


def _compare(arm: ArmSample, first: ArmSample) -> dict[str, Any]:
    return {
        "cost": welch(arm.costs, first.costs),
        "latency": welch(arm.latencies, first.latencies),
        "feedback": welch(arm.scores, first.scores),
        "escalation": two_proportions(
            arm.escalated_rows, arm.cascade_rows, first.escalated_rows, first.cascade_rows
        ),
        "error": two_proportions(arm.errors, len(arm.costs), first.errors, len(first.costs)),
    }


@dataclass
class Experiments:
    """Rows of experiment requests, by experiment and arm, in the order arms were first seen
    unless the policy names them (its order then: the first arm is the control)."""

    scores: dict[str, float]
    arm_order: dict[str, list[str]] = field(default_factory=dict)  # experiment -> policy's arms
    samples: dict[str, dict[str, ArmSample]] = field(default_factory=dict)

    def add(self, row: dict[str, Any], escalated: bool | None) -> None:
        note = row["extra"].get("experiment")
        if not isinstance(note, dict):
            return
        name, arm = str(note.get("name")), str(note.get("arm"))
        arms = self.samples.setdefault(name, {})
        sample = arms.get(arm)
        if sample is None:
            sample = arms[arm] = ArmSample()
        sample.add(row, self.scores.get(row["request_id"]), escalated)

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in sorted(self.samples):
            seen = self.samples[name]
            policy = [a for a in self.arm_order.get(name, []) if a in seen]
            order = policy + [a for a in seen if a not in policy]
            first = seen[order[0]]
            compared = {arm: _compare(seen[arm], first) for arm in order[1:]}
            for metric in ("cost", "latency", "feedback", "escalation", "error"):
                holm([c[metric] for c in compared.values()])
            out[name] = {
                "control": order[0],
                "arms": {
                    arm: {**_figures(seen[arm]), "vs_control": compared.get(arm)} for arm in order
                },
            }
        return out
