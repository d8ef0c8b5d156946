"""gateway/demo/example_policy.py: the example's routes on other servers and served names."""

from __future__ import annotations

from gateway.demo.example_policy import example_policy_text
from policies.loader import example_policy_path, load_policy, parse_policy


def test_the_tiny_variant_keeps_every_route_and_serves_the_tiny_names() -> None:
    example = load_policy(example_policy_path())
    tiny = parse_policy(
        example_policy_text("http://127.0.0.1:9001/v1", "http://127.0.0.1:9002/v1",
                            "tiny-small", "tiny-large"),
        "tiny.yaml",
    )  # fmt: skip
    assert tiny.routes.keys() == example.routes.keys()
    small, large = tiny.models["smollm2-135m"], tiny.models["gemma3-270m"]
    assert (small.served_name, large.served_name) == ("tiny-small", "tiny-large")
    assert [str(e) for e in small.endpoints] == ["http://127.0.0.1:9001/v1"]
    assert [str(e) for e in large.endpoints] == ["http://127.0.0.1:9002/v1"]
    assert tiny.models["gemma3-270m-remote"].model == "openai/tiny-large"


def test_unchanged_arguments_give_the_example_itself_but_for_the_router_path() -> None:
    text = example_policy_text()
    assert text.count("router: /") == 1 and "router: ../" not in text
    assert parse_policy(text).routes.keys() == load_policy(example_policy_path()).routes.keys()
