"""The bundled example policy pointed at the test's own vLLM servers (gateway/demo/
example_policy.py): the real pair by default, the tiny random-weight one for tests that need
speed rather than sense."""

from __future__ import annotations

from gateway.demo.example_policy import LARGE, SMALL, example_policy_text

__all__ = ["LARGE", "SMALL", "example_policy_on_tiny", "example_policy_text"]


def example_policy_on_tiny(servers: dict[str, str]) -> str:
    """The example on the tiny pair (`vllm_servers` fixture): same routes, gibberish answers."""
    return example_policy_text(
        servers["tiny-small"], servers["tiny-large"], "tiny-small", "tiny-large"
    )
