"""A learned route's `lead`, the quality-seeking end of its dial: points added, when ranking, to
the model its router finds best on average. Through the in-process gateway (the choice and the
logged priors) and the eval's replay (the curve then ends at always sending to that model)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from policies.loader import PolicyError, parse_policy
from routers.offline import replay
from tests.support.inprocess import in_process_gateway
from tests.unit.test_online_inprocess import learned_policy
from tests.unit.test_router_eval import tiny_table

# The shipped router sends this to gemma-2-9b-it at lambda 0, though it finds
# llama-3.1-nemotron-51b-instruct the better on average.
QUESTION = "What is 17 times 23?"


def policy(lead: float, *route_lines: str) -> str:
    return learned_policy(
        "small: gemma-2-9b-it, big: llama-3.1-nemotron-51b-instruct", f"lead: {lead}", *route_lines
    )


# With an online layer the logged predictions are its corrected ones; they keep the priors.
@pytest.mark.parametrize("online", [(), ("online: {explore: 0}",)], ids=["offline", "online"])
@pytest.mark.parametrize(("lead", "answers"), [(0, "small"), (1, "big")])
async def test_a_full_lead_sends_to_the_model_best_on_average(
    tmp_path: Path, lead: float, answers: str, online: tuple[str, ...]
) -> None:
    async with in_process_gateway(policy(lead, *online), tmp_path) as gw:
        r = await gw.chat("auto", QUESTION)
        assert r.status_code == 200, r.text
        assert r.headers["x-routegate-model"] == answers
        predictions = (await gw.record(r.headers["x-routegate-request-id"]))["extra"]["predictions"]
        # The priors are logged beside the predictions (a simulated policy replays a lead).
        assert predictions["big"]["prior"] > predictions["small"]["prior"]
        # The lead only ranks: the predicted quality reported is the router's own.
        assert predictions["small"]["quality"] > predictions["big"]["quality"]


def test_a_lead_out_of_range_is_refused_naming_the_field(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="lead"):
        parse_policy(policy(1.5), str(tmp_path / "policy.yaml"))


def test_the_replayed_curve_ends_at_the_lead_models_quality() -> None:
    table = tiny_table()  # a costs 1, b 10; b is the strongest (0.75 against 0.5)
    # Confidently wrong: a is predicted better everywhere, so lambda 0 never picks b.
    q_hat, c_hat = np.array([[0.9, 0.1]] * 4), np.array([[1.0, 10.0]] * 4)
    ref, _ = replay.baseline_curves(table)
    plain = replay.curve_metrics(replay.sweep(q_hat, c_hat, table.quality, table.cost), ref)
    assert plain["below_strongest"] and plain["best_quality"] == pytest.approx(0.5)
    curve = replay.sweep(q_hat, c_hat, table.quality, table.cost, lead_col=1)
    led = replay.curve_metrics(curve, ref)
    assert not led["below_strongest"] and led["best_quality"] == pytest.approx(0.75)
    assert led["quality_at_strongest_cost"] == pytest.approx(0.75)
    assert curve.to_json(table.models)["lead"][-1] == 1.0
    assert led["aiq"] >= plain["aiq"]  # points added to a hull never lower it
