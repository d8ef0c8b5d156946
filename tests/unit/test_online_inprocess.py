"""A learned route's online layer through the in-process app: the request log notes what
feedback on a request teaches (context, offline predictions, whether it explored); feedback
against the chosen model moves the route to another; exploration is marked in a header; and
two gateways sharing a store learn together. (The arithmetic: test_online_layer.py.)"""

from __future__ import annotations

from pathlib import Path

from gateway.state import State
from routers.serving.online import OnlineLayer
from tests.support.inprocess import in_process_gateway

ARTIFACT = Path(__file__).resolve().parents[2] / "routers/artifacts/complexity-default"


def learned_policy(model_map: str, *route_lines: str) -> str:
    """Route `auto`: the shipped router over `small` and `big` at lambda 0, mapped by
    `model_map`, with the route's further lines."""
    lines = "".join(f"    {line}\n" for line in route_lines)
    return f"""
version: 1
defaults: {{max_tokens: 16}}
models:
  small:
    provider: vllm
    endpoints: [http://small.invalid/v1]
    pricing: {{input_per_1m: 0.2, output_per_1m: 0.2}}
  big:
    provider: vllm
    endpoints: [http://big.invalid/v1]
    pricing: {{input_per_1m: 0.9, output_per_1m: 0.9}}
routes:
  auto:
    kind: learned
    router: {ARTIFACT}
    models: [small, big]
    model_map: {{{model_map}}}
    lambda: 0
{lines}"""


def policy(explore: float, quality_floor: str = "") -> str:
    return learned_policy(
        "small: llama-3.1-8b-instruct, big: llama-3.1-nemotron-51b-instruct",
        quality_floor,
        f"online: {{explore: {explore}, refresh_s: 0.001, discount: 0.9, prior_weight: 2}}",
    )


QUESTION = "Which planet in the solar system has the most moons?"


async def test_feedback_against_the_chosen_model_moves_the_route(tmp_path: Path) -> None:
    async with in_process_gateway(policy(explore=0.0), tmp_path) as gw:
        first = await gw.chat("auto", QUESTION)
        assert first.status_code == 200, first.text
        chosen = first.headers["x-routegate-model"]
        assert "x-routegate-explored" not in first.headers
        row = await gw.record(first.headers["x-routegate-request-id"])
        online = row["extra"]["online"]
        assert set(online) == {"context", "explored", "offline"}
        assert online["explored"] is False and 0 <= online["context"] < 32
        assert set(online["offline"]) == {"small", "big"}

        runtime = gw.holder.current
        assert runtime is not None
        layer = runtime.learners["auto"]
        assert isinstance(layer, OnlineLayer)
        for _ in range(20):  # the chosen model keeps answering badly
            await layer.learn(chosen, online, 0.0)
        await layer.refresh()
        after = await gw.chat("auto", QUESTION)
        assert after.headers["x-routegate-model"] != chosen
        predicted = float(after.headers["x-routegate-predicted-quality"])
        assert 0.0 <= predicted <= 1.0


async def test_exploration_is_marked_and_never_breaks_a_quality_floor(tmp_path: Path) -> None:
    async with in_process_gateway(policy(explore=1.0), tmp_path) as gw:
        explored = 0
        for i in range(40):
            r = await gw.chat("auto", f"{QUESTION} ({i})")
            assert r.status_code == 200
            explored += r.headers.get("x-routegate-explored") == "true"
        assert explored > 0  # with equal-ish predictions, samples disagree with the mean

    floor = "quality_floor: 0.0001"  # every model reaches it: exploring may pick either
    async with in_process_gateway(policy(explore=1.0, quality_floor=floor), tmp_path) as gw:
        r = await gw.chat("auto", QUESTION)
        assert r.status_code == 200


async def test_two_gateways_on_one_store_learn_together(tmp_path: Path) -> None:
    a_dir, b_dir = tmp_path / "a", tmp_path / "b"
    a_dir.mkdir()
    b_dir.mkdir()
    async with (
        in_process_gateway(policy(explore=0.0), a_dir) as a,
        in_process_gateway(policy(explore=0.0), b_dir) as b,
    ):
        shared: State = a.app.state.services.access.state
        runtime_b = b.holder.current
        assert runtime_b is not None
        runtime_b.bind_state(shared)  # as two replicas on one Redis
        first = await a.chat("auto", QUESTION)
        chosen = first.headers["x-routegate-model"]
        online = (await a.record(first.headers["x-routegate-request-id"]))["extra"]["online"]
        runtime_a = a.holder.current
        assert runtime_a is not None
        for _ in range(20):
            await runtime_a.learners["auto"].learn(chosen, online, 0.0)
        await runtime_b.learners["auto"].refresh()  # type: ignore[attr-defined]
        other = await b.chat("auto", QUESTION)
        assert other.headers["x-routegate-model"] != chosen


async def test_what_the_layer_learned_survives_a_restart_on_the_state_file(
    tmp_path: Path,
) -> None:
    async with in_process_gateway(policy(explore=0.0), tmp_path) as gw:
        first = await gw.chat("auto", QUESTION)
        chosen = first.headers["x-routegate-model"]
        online = (await gw.record(first.headers["x-routegate-request-id"]))["extra"]["online"]
        runtime = gw.holder.current
        assert runtime is not None
        for _ in range(20):
            await runtime.learners["auto"].learn(chosen, online, 0.0)
    # A new process on the same state file (the embedded default's --state-file).
    async with in_process_gateway(policy(explore=0.0), tmp_path) as gw:
        runtime = gw.holder.current
        assert runtime is not None
        await runtime.learners["auto"].refresh()  # type: ignore[attr-defined]
        again = await gw.chat("auto", QUESTION)
        assert again.headers["x-routegate-model"] != chosen
